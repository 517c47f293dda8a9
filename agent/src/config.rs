//! Resolves the agent's settings: flags and environment (already merged by
//! clap), then the TOML file, then defaults.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use netdb::ipam::Subnet;

use crate::cli::AgentArgs;
use crate::endpoint::{self, Endpoint};
use crate::logging::LogFormat;

pub(crate) const DEFAULT_PORT: u16 = 7946;

#[derive(Debug)]
pub(crate) struct Settings {
    pub name: String,
    pub bind: SocketAddr,
    pub advertise: SocketAddr,
    pub join: Vec<SocketAddr>,
    pub api: Endpoint,
    /// TLS of a TCP API (`None`: Unix socket, or --api-insecure on loopback).
    pub api_tls: Option<crate::tls::ServerFiles>,
    pub log: String,
    pub log_format: LogFormat,
    /// Where to serve Prometheus metrics; `None`: not served.
    pub metrics: Option<SocketAddr>,
    pub core: netdb::Config,
    /// Gossip keys, primary first; empty for plaintext.
    pub keys: Vec<Vec<u8>>,
    /// Where the keys came from, written back when they change.
    pub key_file: Option<PathBuf>,
    /// Scheduled rotation: the cluster secret and the epoch length.
    pub scheduled: Option<(Vec<u8>, Duration)>,
    /// Where the cluster secret came from (`netdb doctor` checks its mode).
    pub cluster_secret_file: Option<PathBuf>,
    /// The kernel data plane is wanted (not --no-dataplane).
    pub dataplane: bool,
    /// Where the host's state lives: --data-dir, else the default with the
    /// data plane; `None` with --no-dataplane and no --data-dir (nothing
    /// outlives the process).
    pub data_dir: Option<PathBuf>,
    pub reconcile_interval: Duration,
    pub claim_settle: Duration,
    /// The embedded DNS; `None` with --no-dns or without the data plane.
    pub dns: Option<crate::dns::Settings>,
    /// The gateway bridge's subnet.
    pub gateway_subnet: Subnet,
    pub vxlan_port: u16,
    /// Where the overlay namespace is pinned (--overlay-netns).
    pub overlay_netns: PathBuf,
    pub vni_range: netdb::netdefs::VniRange,
    /// Where `network create` without a subnet takes one, and its size.
    pub default_pool: (Subnet, u8),
    /// The Docker plugin; `None` unless --docker-plugin.
    pub docker: Option<DockerSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DockerSettings {
    /// Where the plugin listens.
    pub plugin_socket: PathBuf,
    /// Docker's Engine API.
    pub engine_socket: PathBuf,
}

pub(crate) const DOCKER_PLUGIN_SOCKET: &str = "/run/docker/plugins/netdb.sock";
pub(crate) const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Queries per second per container, unless --dns-rate-limit says.
const DNS_RATE: u32 = 2000;

pub(crate) const DEFAULT_DATA_DIR: &str = "/var/lib/netdb";
/// The overlay namespace's name under /run/netns: `ip netns exec netdb
/// bridge fdb` shows the tunnels' entries.
pub(crate) const DEFAULT_OVERLAY_NETNS: &str = "netdb";

pub(crate) fn resolve(cli: AgentArgs, global_api: Option<Endpoint>) -> anyhow::Result<Settings> {
    let file = match &cli.config {
        Some(path) => load(path)?,
        None => AgentArgs::default(),
    };
    let api = match global_api.or(cli.api.clone()).or(file.api.clone()) {
        Some(a) => a,
        None => endpoint::DEFAULT.parse().map_err(anyhow::Error::msg)?,
    };
    let api_tls = api_tls(&api, &cli, &file)?;
    let name = match cli.name.or(file.name) {
        Some(n) => n,
        None => host_name()?,
    };
    let bind = cli
        .bind
        .or(file.bind)
        .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT));
    let join = if cli.join.is_empty() { file.join } else { cli.join };
    let advertise = match cli.advertise.or(file.advertise) {
        Some(a) => a,
        None => derive_advertise(bind, &join)?,
    };
    if advertise.ip().is_unspecified() {
        bail!("--advertise {advertise} is not an address peers can reach; give this node's IP");
    }
    let mut core = netdb::Config::default();
    macro_rules! set {
        ($($field:ident),*) => {$(
            if let Some(v) = cli.$field.or(file.$field) {
                core.$field = v;
            }
        )*};
    }
    set!(
        gossip_interval,
        gossip_fanout,
        early_news_fanout,
        packet_budget,
        retransmit_mult,
        sync_interval,
        tombstone_ttl,
        failed_grace,
        probe_period,
        probe_rtt,
        suspicion_mult
    );
    core.push_tree = cli.push_tree || file.push_tree;
    check(&core)?;
    let key_file = cli.key_file.or(file.key_file);
    let secret_file = cli.cluster_secret_file.or(file.cluster_secret_file);
    let scheduled = match &secret_file {
        Some(path) => {
            if key_file.is_some() || std::env::var_os("NETDB_KEYS").is_some() {
                bail!("--cluster-secret-file replaces --key-file and NETDB_KEYS; give one of them");
            }
            let period =
                cli.key_rotation.or(file.key_rotation).unwrap_or(Duration::from_secs(12 * 3600));
            if period < Duration::from_secs(1) {
                bail!("--key-rotation must be at least 1s");
            }
            Some((read_secret(path)?, period))
        }
        None => None,
    };
    let keys = match &key_file {
        _ if scheduled.is_some() => Vec::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read key file {}", path.display()))?;
            parse_keys(text.lines()).with_context(|| format!("bad key file {}", path.display()))?
        }
        None => match std::env::var("NETDB_KEYS") {
            Ok(v) => parse_keys(v.split(',')).context("bad NETDB_KEYS")?,
            Err(_) => Vec::new(),
        },
    };
    let dataplane = !(cli.no_dataplane || file.no_dataplane);
    let data_dir =
        cli.data_dir.or(file.data_dir).or_else(|| dataplane.then(|| DEFAULT_DATA_DIR.into()));
    let dns = (dataplane && !(cli.no_dns || file.no_dns)).then(|| crate::dns::Settings {
        upstreams: if cli.dns_upstream.is_empty() { file.dns_upstream } else { cli.dns_upstream },
        rate: cli.dns_rate_limit.or(file.dns_rate_limit).unwrap_or(DNS_RATE),
        host_file: crate::dns::HOST_FILE.into(),
        netns_etc: crate::dns::NETNS_ETC.into(),
    });
    let docker = match cli.docker_plugin || file.docker_plugin {
        false => None,
        true if !dataplane => {
            bail!(
                "--docker-plugin needs the data plane: Docker's containers are endpoints; drop --no-dataplane"
            )
        }
        true => Some(DockerSettings {
            plugin_socket: cli
                .docker_plugin_socket
                .or(file.docker_plugin_socket)
                .unwrap_or_else(|| DOCKER_PLUGIN_SOCKET.into()),
            engine_socket: cli
                .docker_socket
                .or(file.docker_socket)
                .unwrap_or_else(|| DOCKER_SOCKET.into()),
        }),
    };
    let default_pool = match cli.default_address_pool.or(file.default_address_pool) {
        Some(text) => text.parse().with_context(|| format!("bad --default-address-pool {text}"))?,
        None => netdb::ipam::DEFAULT_POOL,
    };
    let pool_size =
        cli.default_pool_size.or(file.default_pool_size).unwrap_or(netdb::ipam::DEFAULT_POOL_SIZE);
    if !(default_pool.prefix()..=netdb::ipam::MAX_PREFIX).contains(&pool_size) {
        bail!(
            "--default-pool-size {pool_size} does not fit --default-address-pool {default_pool}: give /{}../{}",
            default_pool.prefix(),
            netdb::ipam::MAX_PREFIX
        );
    }
    Ok(Settings {
        name,
        bind,
        advertise,
        join,
        api,
        api_tls,
        log: cli.log.or(file.log).unwrap_or_else(|| "info".into()),
        log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
        metrics: cli.metrics.or(file.metrics),
        core,
        keys,
        key_file,
        scheduled,
        cluster_secret_file: secret_file,
        dataplane,
        data_dir,
        reconcile_interval: cli
            .reconcile_interval
            .or(file.reconcile_interval)
            .unwrap_or(Duration::from_secs(5))
            .max(Duration::from_millis(100)),
        claim_settle: cli.claim_settle.or(file.claim_settle).unwrap_or(Duration::from_secs(1)),
        dns,
        gateway_subnet: cli
            .gateway_subnet
            .or(file.gateway_subnet)
            .as_deref()
            .unwrap_or(crate::overlay::DEFAULT_GATEWAY_SUBNET)
            .parse()
            .context("--gateway-subnet")?,
        vxlan_port: match cli.vxlan_port.or(file.vxlan_port) {
            Some(0) => bail!("vxlan-port must be 1-65535"),
            Some(port) => port,
            None => netdb_dataplane::VXLAN_PORT,
        },
        overlay_netns: overlay_netns(cli.overlay_netns.or(file.overlay_netns))?,
        vni_range: cli.vni_range.or(file.vni_range).unwrap_or_default(),
        default_pool: (default_pool, pool_size),
        docker,
    })
}

/// The overlay namespace's pin: a name under /run/netns, or a path.
fn overlay_netns(given: Option<String>) -> anyhow::Result<PathBuf> {
    let given = given.unwrap_or_else(|| DEFAULT_OVERLAY_NETNS.into());
    if given.contains('/') {
        return Ok(PathBuf::from(given));
    }
    if given.is_empty() || given == "." || given == ".." {
        bail!("bad --overlay-netns {given:?}: give a name (e.g. netdb) or a path");
    }
    Ok(Path::new("/run/netns").join(given))
}

/// A TCP API must use TLS with client certificates, unless it is on a
/// loopback address and --api-insecure says so.
fn api_tls(
    api: &Endpoint,
    cli: &AgentArgs,
    file: &AgentArgs,
) -> anyhow::Result<Option<crate::tls::ServerFiles>> {
    let cert = cli.api_tls_cert.clone().or(file.api_tls_cert.clone());
    let key = cli.api_tls_key.clone().or(file.api_tls_key.clone());
    let ca = cli.api_tls_client_ca.clone().or(file.api_tls_client_ca.clone());
    let insecure = cli.api_insecure || file.api_insecure;
    let Endpoint::Tcp(addr) = api else {
        if cert.is_some() || insecure {
            bail!(
                "--api-tls-* and --api-insecure are for a TCP --api; the Unix socket is owner-only already"
            );
        }
        return Ok(None);
    };
    match (cert, key, ca) {
        (Some(cert), Some(key), Some(client_ca)) if !insecure => {
            Ok(Some(crate::tls::ServerFiles { cert, key, client_ca }))
        }
        (None, None, None) if insecure && addr.ip().is_loopback() => Ok(None),
        (None, None, None) if insecure => bail!(
            "--api-insecure is allowed on loopback addresses only, not {addr}; use TLS (--api-tls-cert, --api-tls-key, --api-tls-client-ca)"
        ),
        (None, None, None) => bail!(
            "a TCP API ({addr}) needs TLS with client certificates: give --api-tls-cert, --api-tls-key and --api-tls-client-ca (or --api-insecure on a loopback address)"
        ),
        _ if insecure => bail!("--api-insecure and --api-tls-* exclude each other"),
        _ => bail!("TLS needs all of --api-tls-cert, --api-tls-key and --api-tls-client-ca"),
    }
}

/// The cluster secret: base64 of at least 32 bytes.
fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read cluster secret file {}", path.display()))?;
    if std::fs::metadata(path)?.permissions().mode() & 0o077 != 0 {
        tracing::warn!(file = %path.display(), "the cluster secret file is readable by others; chmod 600 it");
    }
    let secret = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| anyhow::anyhow!("cluster secret file {} is not base64", path.display()))?;
    if secret.len() < netdb::keyring::KEY_LEN {
        bail!(
            "the cluster secret is {} bytes, at least {} are needed; make one with: head -c 32 /dev/urandom | base64",
            secret.len(),
            netdb::keyring::KEY_LEN
        );
    }
    Ok(secret)
}

/// Base64 keys of 32 bytes; blank lines and # comments are skipped. Errors
/// name the key's position, never its content.
pub(crate) fn parse_keys<'a>(items: impl Iterator<Item = &'a str>) -> anyhow::Result<Vec<Vec<u8>>> {
    use base64::Engine;
    let mut keys = Vec::new();
    for item in items.map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let n = keys.len() + 1;
        let key = base64::engine::general_purpose::STANDARD
            .decode(item)
            .map_err(|_| anyhow::anyhow!("key {n} is not base64"))?;
        if key.len() != netdb::keyring::KEY_LEN {
            bail!(
                "key {n} is {} bytes, not {}; make one with: head -c 32 /dev/urandom | base64",
                key.len(),
                netdb::keyring::KEY_LEN
            );
        }
        keys.push(key);
    }
    if keys.is_empty() {
        bail!("no keys found");
    }
    Ok(keys)
}

fn load(path: &Path) -> anyhow::Result<AgentArgs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("bad config file {}", path.display()))
}

fn check(c: &netdb::Config) -> anyhow::Result<()> {
    if c.packet_budget < 512 || c.packet_budget > 65_000 {
        bail!("--packet-budget {} is out of range 512..=65000", c.packet_budget);
    }
    if c.gossip_fanout == 0 || c.early_news_fanout == 0 {
        bail!("--gossip-fanout and --early-news-fanout must be at least 1");
    }
    if c.gossip_interval.is_zero() || c.probe_period.is_zero() || c.probe_rtt.is_zero() {
        bail!("--gossip-interval, --probe-period and --probe-rtt must be above zero");
    }
    if c.probe_rtt >= c.probe_period {
        bail!(
            "--probe-rtt ({:?}) must be shorter than --probe-period ({:?})",
            c.probe_rtt,
            c.probe_period
        );
    }
    if c.retransmit_mult == 0 || c.retransmit_mult > 20 {
        bail!("--retransmit-mult must be 1..=20");
    }
    if !(c.suspicion_mult.is_finite() && c.suspicion_mult > 0.0 && c.suspicion_mult <= 100.0) {
        bail!("--suspicion-mult must be above 0 and at most 100");
    }
    Ok(())
}

/// The host name, cut to what a node name may hold.
fn host_name() -> anyhow::Result<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String =
        raw.trim().chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect();
    if name.is_empty() {
        bail!("cannot tell this host's name; give one with --name");
    }
    Ok(name)
}

/// With a specific bind address, peers reach us there. With 0.0.0.0, ask the
/// kernel which local address routes towards the first seed (a UDP
/// `connect` sends nothing).
fn derive_advertise(bind: SocketAddr, join: &[SocketAddr]) -> anyhow::Result<SocketAddr> {
    if !bind.ip().is_unspecified() {
        return Ok(bind);
    }
    let Some(seed) = join.first() else {
        bail!("binding {bind} needs --advertise (the address peers use to reach this node)");
    };
    let probe = UdpSocket::bind(SocketAddr::new(bind.ip(), 0))?;
    probe
        .connect(seed)
        .with_context(|| format!("no route towards seed {seed}; give --advertise"))?;
    Ok(SocketAddr::new(probe.local_addr()?.ip(), bind.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(name: &str, bind: &str) -> AgentArgs {
        AgentArgs {
            name: Some(name.into()),
            bind: Some(bind.parse().unwrap()),
            ..AgentArgs::default()
        }
    }

    #[test]
    fn flags_beat_the_file_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("netdb-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("agent.toml");
        std::fs::write(
            &file,
            "name = \"from-file\"\nsync-interval = \"5s\"\napi = \"unix:/tmp/f.sock\"\npush-tree = true\n",
        )
        .unwrap();
        let mut a = args("from-flag", "127.0.0.1:7000");
        a.config = Some(file);
        let s = resolve(a, None).unwrap();
        assert_eq!(s.name, "from-flag");
        assert_eq!(s.core.sync_interval, Duration::from_secs(5));
        assert_eq!(s.api.to_string(), "unix:/tmp/f.sock");
        assert_eq!(s.advertise, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(s.core.gossip_interval, netdb::Config::default().gossip_interval);
        assert!(s.core.push_tree, "a switch set in the file");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unspecified_bind_needs_a_way_to_advertise() {
        let err = resolve(args("n", "0.0.0.0:7946"), None).unwrap_err();
        assert!(err.to_string().contains("--advertise"), "{err}");
        let mut a = args("n", "0.0.0.0:7946");
        a.join = vec!["127.0.0.1:7946".parse().unwrap()];
        assert_eq!(resolve(a, None).unwrap().advertise.ip().to_string(), "127.0.0.1");
    }

    #[test]
    fn keys_parse_from_base64_lines_and_errors_hide_them() {
        let k = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        let keys = parse_keys(["# primary first", k, ""].into_iter()).unwrap();
        assert_eq!(keys, vec![vec![1u8; 32]]);
        let err = parse_keys(["c2hvcnQ="].into_iter()).unwrap_err().to_string();
        assert!(err.contains("key 1 is 5 bytes") && !err.contains("c2hvcnQ"), "{err}");
        assert!(parse_keys(["not base64!"].into_iter()).is_err());
        assert!(parse_keys(std::iter::empty()).is_err());
    }

    #[test]
    fn nonsense_settings_are_refused_with_the_flag_named() {
        let mut a = args("n", "127.0.0.1:7000");
        a.probe_rtt = Some(Duration::from_secs(5));
        assert!(resolve(a, None).unwrap_err().to_string().contains("--probe-rtt"));
    }

    #[test]
    fn the_default_address_pool_is_docker_swarms_unless_flags_say_and_must_fit() {
        let s = resolve(args("n", "127.0.0.1:7000"), None).unwrap();
        assert_eq!((s.default_pool.0.to_string(), s.default_pool.1), ("10.0.0.0/8".into(), 24));
        let mut a = args("n", "127.0.0.1:7000");
        a.default_address_pool = Some("172.20.0.0/14".into());
        a.default_pool_size = Some(26);
        let s = resolve(a, None).unwrap();
        assert_eq!((s.default_pool.0.to_string(), s.default_pool.1), ("172.20.0.0/14".into(), 26));
        let mut a = args("n", "127.0.0.1:7000");
        a.default_pool_size = Some(4);
        let e = resolve(a, None).unwrap_err().to_string();
        assert!(e.contains("--default-pool-size 4 does not fit"), "{e}");
        let mut a = args("n", "127.0.0.1:7000");
        a.default_address_pool = Some("10.0.0.1/8".into());
        let e = format!("{:#}", resolve(a, None).unwrap_err());
        assert!(
            e.contains("--default-address-pool") && e.contains("did you mean 10.0.0.0/8"),
            "{e}"
        );
    }
}
