//! Command line: `netdb agent ...` runs an agent, every other subcommand is
//! a client of an agent's admin API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use netdb::netdefs::VniRange;
use serde::Deserialize;

use crate::duration;
use crate::endpoint::Endpoint;
use crate::logging::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "netdb",
    version,
    about = "Overlay network control plane: gossip tables without a key-value store"
)]
pub(crate) struct Cli {
    /// Admin API endpoint (the agent serves it, the other verbs call it):
    /// unix:/path or IP:PORT [default: unix:/run/netdb/netdb.sock]
    #[arg(long, global = true, env = "NETDB_API")]
    pub api: Option<Endpoint>,
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every client verb (they talk to an agent's API).
#[derive(Debug, Args)]
pub(crate) struct ClientOpts {
    /// Output format.
    #[arg(
        short = 'o',
        long,
        global = true,
        value_enum,
        default_value_t = Output::Table,
        help_heading = "Client options"
    )]
    pub output: Output,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// TLS for a client talking to an agent's TCP API.
#[derive(Debug, Args)]
#[command(next_help_heading = "Client TLS (TCP API)")]
pub(crate) struct ClientTlsArgs {
    /// CA that signed the agent's certificate (PEM).
    #[arg(long, global = true, env = "NETDB_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), signed by the agent's client CA.
    #[arg(long, global = true, env = "NETDB_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, global = true, env = "NETDB_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Name to expect in the agent's certificate [default: the API address]
    #[arg(long, global = true, env = "NETDB_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

impl ClientTlsArgs {
    pub(crate) fn files(&self) -> crate::tls::ClientFiles {
        crate::tls::ClientFiles {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            server_name: self.tls_server_name.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run an agent (one per host).
    Agent(Box<AgentArgs>),
    /// List cluster members.
    Members {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Create, list, inspect and remove overlay networks; join or leave
    /// plain ones.
    Network {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        cmd: NetworkCmd,
    },
    /// Attach containers (network namespaces) to overlay networks.
    Endpoint {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    /// Read and write table entries.
    Table {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        cmd: TableCmd,
    },
    /// Print a network's entries, then every change, until interrupted.
    Watch {
        network: String,
        table: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Message, byte, queue, drop and sync counters.
    Stats {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Gossip keys of every live member (fingerprints only).
    Keys {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Is the agent alive and ready (joined, cluster state synced, kernel
    /// reconciled)? Exits 0 when ready, 1 otherwise.
    Health {
        /// Only check that the agent answers (liveness), not readiness.
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// This program's version and, when reachable, the agent's.
    Version {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show the agent's log filter, or set a new one until it restarts
    /// (error, warn, info, debug, trace, or directives like info,netdb=debug).
    LogLevel {
        filter: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell), e.g. `netdb completions bash > /etc/bash_completion.d/netdb`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), e.g. `netdb man | man -l -`.
    Man,
    /// Check whether this host can run the agent: pass, warn or fail, with
    /// the fix.
    ///
    /// Takes the agent's settings (its flags, NETDB_* variables or
    /// --config) and checks privilege, kernel, ports, MTU, files and clock
    /// skew; asks the agent at --api when one runs. Exits non-zero when a
    /// check fails.
    Doctor {
        #[command(flatten)]
        agent: Box<AgentArgs>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

impl Command {
    /// The client options of a client verb; `None` for the agent.
    pub(crate) fn client(&self) -> Option<&ClientOpts> {
        match self {
            Command::Agent(_) => None,
            Command::Members { client }
            | Command::Network { client, .. }
            | Command::Endpoint { client, .. }
            | Command::Table { client, .. }
            | Command::Watch { client, .. }
            | Command::Stats { client }
            | Command::Keys { client, .. }
            | Command::Health { client, .. }
            | Command::Version { client }
            | Command::LogLevel { client, .. } => Some(client),
            Command::Completions { .. } | Command::Man => None,
            Command::Doctor { client, .. } => Some(client),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCmd {
    /// Each member's key fingerprints, primary first.
    List,
    /// Add a key on every member; it opens but does not seal yet. The key
    /// (base64) is read from standard input or --from, never from the
    /// command line, where other users could read it.
    Install {
        /// File holding the key (first line); - or absent: standard input.
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Make an installed key (base64 or fingerprint) the primary everywhere.
    Use { key: String },
    /// Remove a key (base64 or fingerprint) everywhere; refused for the primary.
    Remove { key: String },
    /// Generate a key, install it everywhere, make it primary, remove the
    /// old one; stops at the first step a member does not confirm.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub(crate) enum NetworkCmd {
    /// Overlay networks (subnet, VNI, hosts) and plain networks this agent
    /// joined.
    Ls,
    /// Define an overlay network for the whole cluster.
    Create {
        name: String,
        /// IPv4 subnet, e.g. 10.10.0.0/24 [default: a free subnet of the
        /// agent's --default-address-pool, cluster-wide unique]
        #[arg(long)]
        subnet: Option<String>,
        /// VXLAN network id [default: the lowest free one from 4096]
        #[arg(long)]
        vni: Option<u32>,
        /// MTU of the endpoints and devices [default: 1450]
        #[arg(long)]
        mtu: Option<u32>,
        /// No way out: endpoints get no gateway interface, no default route
        /// and cannot publish ports.
        #[arg(long)]
        internal: bool,
    },
    /// One network in depth: definition, gateway, peers, endpoints by
    /// host, tables, queue and push/pull counters.
    Inspect { name: String },
    /// Remove an overlay network (refused while it has endpoints).
    Rm { name: String },
    /// Join a plain gossip network (tables only, no data plane).
    Join { network: String },
    /// Leave a plain gossip network.
    Leave { network: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EndpointCmd {
    /// Wire a network namespace to an overlay network: veth, IP, MAC,
    /// routes, and entries every host learns.
    Attach {
        network: String,
        name: String,
        /// The container's network namespace, e.g. /run/netns/c1.
        #[arg(long)]
        netns: String,
        /// Address in the network's subnet [default: allocated]
        #[arg(long)]
        ip: Option<String>,
        /// Extra DNS names of the endpoint (repeatable).
        #[arg(long = "alias")]
        aliases: Vec<String>,
        /// Service the endpoint belongs to.
        #[arg(long)]
        service: Option<String>,
        /// Interface name inside the namespace [default: eth0]
        #[arg(long)]
        ifname: Option<String>,
        /// Forward a port of this host to the endpoint (repeatable):
        /// HOSTPORT:PORT[/tcp|udp], e.g. 8080:80.
        #[arg(long)]
        publish: Vec<String>,
    },
    /// Unwire an endpoint of this host.
    Detach { network: String, name: String },
    /// Endpoints of the networks this host takes part in.
    Ls {
        network: Option<String>,
        /// Only this host's endpoints.
        #[arg(long)]
        local: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TableCmd {
    /// Write one entry, or many from a file of "KEY VALUE" lines (- = stdin).
    Put {
        network: String,
        table: String,
        #[arg(required_unless_present = "file")]
        key: Option<String>,
        #[arg(required_unless_present = "file")]
        value: Option<String>,
        #[arg(long, conflicts_with_all = ["key", "value"])]
        file: Option<PathBuf>,
    },
    Get {
        network: String,
        table: String,
        key: String,
    },
    Delete {
        network: String,
        table: String,
        key: String,
    },
    /// Every visible entry of a table.
    Dump {
        network: String,
        table: String,
    },
    /// Write many entries in one streaming call: "KEY VALUE" lines from a
    /// file (- = stdin), or COUNT generated ones (KEY-PREFIX and a
    /// zero-padded number, a VALUE-SIZE byte value).
    Import {
        network: String,
        table: String,
        #[arg(long, required_unless_present = "generate")]
        file: Option<PathBuf>,
        #[arg(long, value_name = "COUNT", conflicts_with = "file")]
        generate: Option<u32>,
        #[arg(long, default_value = "key-", requires = "generate")]
        key_prefix: String,
        #[arg(long, default_value_t = 100, requires = "generate")]
        value_size: usize,
        /// Entries per request of the stream.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
    },
}

/// Agent settings. Each is a flag, a `NETDB_*` environment variable, or a
/// key of the TOML file given by `--config` (same name, kebab-case), in
/// that order of precedence.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct AgentArgs {
    /// TOML file with any of these settings.
    #[arg(long, env = "NETDB_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Node name, unique in the cluster [default: host name]
    #[arg(long, env = "NETDB_NAME", help_heading = "Identity and peers")]
    pub name: Option<String>,
    /// UDP and TCP address for gossip [default: 0.0.0.0:7946]
    #[arg(long, env = "NETDB_BIND", help_heading = "Identity and peers")]
    pub bind: Option<SocketAddr>,
    /// Address peers use to reach this node [default: the bind address, or
    /// the local address routed towards the first seed]
    #[arg(long, env = "NETDB_ADVERTISE", help_heading = "Identity and peers")]
    pub advertise: Option<SocketAddr>,
    /// Seed peer to join through (repeatable, or comma-separated).
    #[arg(long, env = "NETDB_JOIN", value_delimiter = ',', help_heading = "Identity and peers")]
    #[serde(default)]
    pub join: Vec<SocketAddr>,
    /// Admin API endpoint to serve (the global --api; `api` in the file).
    #[arg(skip)]
    #[serde(default, deserialize_with = "crate::endpoint::de_opt")]
    pub api: Option<Endpoint>,
    /// Certificate (PEM) of a TCP API; a TCP API requires TLS with client
    /// certificates.
    #[arg(long, env = "NETDB_API_TLS_CERT", help_heading = "Admin API")]
    pub api_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the TCP API's certificate.
    #[arg(long, env = "NETDB_API_TLS_KEY", help_heading = "Admin API")]
    pub api_tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates the TCP API accepts.
    #[arg(long, env = "NETDB_API_TLS_CLIENT_CA", help_heading = "Admin API")]
    pub api_tls_client_ca: Option<PathBuf>,
    /// Serve a TCP API without TLS; allowed on loopback addresses only.
    #[arg(long, env = "NETDB_API_INSECURE", help_heading = "Admin API")]
    #[serde(default)]
    pub api_insecure: bool,
    /// File of gossip keys, base64, one per line, the first one the primary
    /// (NETDB_KEYS may give them instead, comma-separated). With keys, all
    /// traffic is sealed with AES-256-GCM and plaintext is refused.
    #[arg(long, env = "NETDB_KEY_FILE", help_heading = "Gossip keys")]
    pub key_file: Option<PathBuf>,
    /// Scheduled rotation instead of a key file: a file with a shared
    /// secret (base64, at least 32 bytes); every agent derives the key of
    /// each epoch from it (HKDF), accepting the previous and next epoch's.
    #[arg(
        long,
        env = "NETDB_CLUSTER_SECRET_FILE",
        conflicts_with = "key_file",
        help_heading = "Gossip keys"
    )]
    pub cluster_secret_file: Option<PathBuf>,
    /// Length of a key epoch with --cluster-secret-file [default: 12h]
    #[arg(long, env = "NETDB_KEY_ROTATION", value_parser = duration::parse, help_heading = "Gossip keys")]
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub key_rotation: Option<Duration>,
    /// Log filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, env = "NETDB_LOG", help_heading = "Observability")]
    pub log: Option<String>,
    /// Table gossip period [default: 200ms]
    #[arg(long, env = "NETDB_GOSSIP_INTERVAL", value_parser = duration::parse, help_heading = "Gossip tuning")]
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub gossip_interval: Option<Duration>,
    /// Peers each gossip packet goes to [default: 3]
    #[arg(long, env = "NETDB_GOSSIP_FANOUT", help_heading = "Gossip tuning")]
    pub gossip_fanout: Option<usize>,
    /// Peers a new event's first, early packet goes to, when the next
    /// gossip tick is far [default: 6]
    #[arg(long, env = "NETDB_EARLY_NEWS_FANOUT", help_heading = "Gossip tuning")]
    pub early_news_fanout: Option<usize>,
    /// Largest UDP datagram in bytes, framing included [default: 1400]
    #[arg(long, env = "NETDB_PACKET_BUDGET", help_heading = "Gossip tuning")]
    pub packet_budget: Option<usize>,
    /// Transmissions of an own event: MULT x ceil(log10(n+1)) [default: 4]
    #[arg(long, env = "NETDB_RETRANSMIT_MULT", help_heading = "Gossip tuning")]
    pub retransmit_mult: Option<u32>,
    /// Eager/lazy push tree: each event once along a tree, ids to a few
    /// other peers, missed ones grafted (fewer copies per event; every
    /// member should run it, though mixed clusters work)
    #[arg(long, env = "NETDB_PUSH_TREE", help_heading = "Gossip tuning")]
    #[serde(default)]
    pub push_tree: bool,
    /// Periodic push/pull per network [default: 30s]
    #[arg(long, env = "NETDB_SYNC_INTERVAL", value_parser = duration::parse, help_heading = "Gossip tuning")]
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub sync_interval: Option<Duration>,
    /// Tombstone lifetime [default: 30m]
    #[arg(long, env = "NETDB_TOMBSTONE_TTL", value_parser = duration::parse, help_heading = "Gossip tuning")]
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub tombstone_ttl: Option<Duration>,
    /// How long a failed node's entries are kept hidden for its return [default: 10m]
    #[arg(long, env = "NETDB_FAILED_GRACE", value_parser = duration::parse, help_heading = "Gossip tuning")]
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub failed_grace: Option<Duration>,
    /// SWIM probe period [default: 300ms]
    #[arg(long, env = "NETDB_PROBE_PERIOD", value_parser = duration::parse, help_heading = "Gossip tuning")]
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub probe_period: Option<Duration>,
    /// SWIM probe round-trip timeout [default: 150ms]
    #[arg(long, env = "NETDB_PROBE_RTT", value_parser = duration::parse, help_heading = "Gossip tuning")]
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub probe_rtt: Option<Duration>,
    /// Suspicion lasts MULT x max(1, log10 n) probe periods [default: 2]
    #[arg(long, env = "NETDB_SUSPICION_MULT", help_heading = "Gossip tuning")]
    pub suspicion_mult: Option<f64>,
    /// Where this host's identity, networks and endpoints are kept across
    /// restarts, which are then live [default: /var/lib/netdb; none with
    /// --no-dataplane unless given]
    #[arg(long, env = "NETDB_DATA_DIR", help_heading = "Data plane")]
    pub data_dir: Option<PathBuf>,
    /// Run without the data plane (tables only: no kernel devices, no
    /// endpoints, no data dir unless --data-dir). One agent per network
    /// namespace otherwise.
    #[arg(long, env = "NETDB_NO_DATAPLANE", help_heading = "Data plane")]
    #[serde(default)]
    pub no_dataplane: bool,
    /// Period of the kernel reconcile (it also runs on every change)
    /// [default: 5s]
    #[arg(long, env = "NETDB_RECONCILE_INTERVAL", value_parser = duration::parse, help_heading = "Data plane")]
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub reconcile_interval: Option<Duration>,
    /// How long a new address block claim spreads before addresses are
    /// handed out from it [default: 1s]
    #[arg(long, env = "NETDB_CLAIM_SETTLE", value_parser = duration::parse, help_heading = "Data plane")]
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub claim_settle: Option<Duration>,
    /// Upstream resolver for names outside the networks, as ADDR or
    /// ADDR:PORT (repeatable, or comma-separated) [default: the nameservers
    /// of /etc/resolv.conf]
    #[arg(long, env = "NETDB_DNS_UPSTREAM", value_delimiter = ',', value_parser = crate::dns::parse_upstream, help_heading = "DNS")]
    #[serde(default, deserialize_with = "de_upstreams")]
    pub dns_upstream: Vec<SocketAddr>,
    /// Queries per second each container may send to the embedded DNS
    /// (bursts of one second's worth; 0: no limit) [default: 2000]
    #[arg(long, env = "NETDB_DNS_RATE_LIMIT", help_heading = "DNS")]
    pub dns_rate_limit: Option<u32>,
    /// Do not answer names in the containers: no resolver at
    /// 127.0.0.11:53, no resolv.conf written
    #[arg(long, env = "NETDB_NO_DNS", help_heading = "DNS")]
    #[serde(default)]
    pub no_dns: bool,
    /// Serve Docker's network and IPAM plugins, both named netdb, so that
    /// `docker network create -d netdb --ipam-driver netdb` makes a netdb
    /// network (needs the data plane)
    #[arg(long, env = "NETDB_DOCKER_PLUGIN", help_heading = "Docker")]
    #[serde(default)]
    pub docker_plugin: bool,
    /// Where the plugin listens: Docker looks for plugins in
    /// /run/docker/plugins [default: /run/docker/plugins/netdb.sock]
    #[arg(long, env = "NETDB_DOCKER_PLUGIN_SOCKET", help_heading = "Docker")]
    pub docker_plugin_socket: Option<PathBuf>,
    /// Docker's API socket: the plugin reads network and container names
    /// there and creates netdb's networks in this host's Docker
    /// [default: /var/run/docker.sock]
    #[arg(long, env = "NETDB_DOCKER_SOCKET", help_heading = "Docker")]
    pub docker_socket: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP at http://ADDR/metrics (off
    /// unless given), e.g. 127.0.0.1:9946.
    #[arg(long, env = "NETDB_METRICS", help_heading = "Observability")]
    pub metrics: Option<SocketAddr>,
    /// Log lines as text (for people) or json (one object per line)
    /// [default: text]
    #[arg(long, env = "NETDB_LOG_FORMAT", value_enum, help_heading = "Observability")]
    pub log_format: Option<LogFormat>,
    /// Host-local subnet of the gateway bridge ndgw0, through which the
    /// endpoints of non-internal networks reach the outside (SNAT); the
    /// bridge takes its first address [default: 198.18.0.0/16]
    #[arg(long, env = "NETDB_GATEWAY_SUBNET", help_heading = "Data plane")]
    pub gateway_subnet: Option<String>,
    /// Network namespace of the networks' bridges and VXLAN devices and
    /// the endpoints' host-side veths, as a NAME under /run/netns or a
    /// path: made and pinned there if missing, and kept when the agent
    /// stops (the containers stay wired). Run the agent in the host's
    /// mount namespace (nsenter --net=..., not `ip netns exec`), or the pin
    /// goes with the agent [default: netdb]
    #[arg(long, env = "NETDB_OVERLAY_NETNS", help_heading = "Data plane")]
    pub overlay_netns: Option<String>,
    /// UDP port of the VXLAN devices: the same on every host [default:
    /// 4789]
    #[arg(long, env = "NETDB_VXLAN_PORT", value_parser = clap::value_parser!(u16).range(1..), help_heading = "Data plane")]
    pub vxlan_port: Option<u16>,
    /// VNIs of the networks created here, FIRST-LAST: the same on every
    /// host [default: 4096-16777215]
    #[arg(long, env = "NETDB_VNI_RANGE", help_heading = "Data plane")]
    #[serde(default, deserialize_with = "de_vni_range")]
    pub vni_range: Option<VniRange>,
    /// Where `network create` without --subnet takes a free subnet from
    /// [default: 10.0.0.0/8]
    #[arg(long, env = "NETDB_DEFAULT_ADDRESS_POOL", help_heading = "Data plane")]
    pub default_address_pool: Option<String>,
    /// Prefix length of the subnets taken from the default address pool
    /// [default: 24]
    #[arg(long, env = "NETDB_DEFAULT_POOL_SIZE", help_heading = "Data plane")]
    pub default_pool_size: Option<u8>,
}

/// A VNI range in the file, written as on the command line.
fn de_vni_range<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<VniRange>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

/// Upstream resolvers in the file, written as on the command line.
fn de_upstreams<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts.iter().map(|t| crate::dns::parse_upstream(t).map_err(serde::de::Error::custom)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::parse_from([
            "netdb",
            "agent",
            "--name",
            "n1",
            "--bind",
            "127.0.0.1:7946",
            "--join",
            "127.0.0.2:7946,127.0.0.3:7946",
            "--gossip-interval",
            "100ms",
        ]);
        let Command::Agent(a) = cli.command else { panic!() };
        assert_eq!(a.join.len(), 2);
        assert_eq!(a.gossip_interval, Some(Duration::from_millis(100)));
        let cli = Cli::parse_from([
            "netdb",
            "--api",
            "unix:/tmp/x.sock",
            "table",
            "dump",
            "net",
            "t",
            "-o",
            "json",
        ]);
        assert_eq!(cli.command.client().map(|c| c.output), Some(Output::Json));
        assert!(matches!(cli.command, Command::Table { cmd: TableCmd::Dump { .. }, .. }));
        // Client options sit with the client verbs, at any depth.
        let cli = Cli::parse_from(["netdb", "network", "-o", "json", "ls"]);
        assert_eq!(cli.command.client().map(|c| c.output), Some(Output::Json));
        let cli = Cli::parse_from(["netdb", "members", "--tls-ca", "/ca.pem"]);
        let tls = cli.command.client().map(|c| c.tls.files().ca);
        assert_eq!(tls, Some(Some(PathBuf::from("/ca.pem"))));
        // ... and not with the agent.
        assert!(Cli::try_parse_from(["netdb", "agent", "-o", "json"]).is_err());
        assert!(Cli::try_parse_from(["netdb", "agent", "--tls-ca", "/ca.pem"]).is_err());
    }

    /// The example configuration documents every agent setting, each as a
    /// valid line of this very file format.
    #[test]
    fn the_example_config_documents_every_setting() {
        let example = include_str!("../dist/netdb.toml");
        let lines: Vec<&str> = example
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for line in &lines {
            // Each uncommented line alone is a valid configuration.
            let parsed = toml::from_str::<AgentArgs>(line);
            assert!(parsed.is_ok(), "{line:?}: {:?}", parsed.err());
            seen.insert(line.split_once(" = ").map(|(k, _)| k.to_string()).unwrap_or_default());
        }
        let cmd = Cli::command();
        let agent = cmd.find_subcommand("agent").expect("agent verb");
        for arg in agent.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["config", "help"].contains(&long) {
                continue;
            }
            assert!(seen.contains(long), "dist/netdb.toml does not document {long}");
        }
    }

    #[test]
    fn config_file_keys_match_flags() {
        let a: AgentArgs = toml::from_str(
            "name = \"n1\"\nbind = \"127.0.0.1:7946\"\njoin = [\"127.0.0.2:7946\"]\ngossip-interval = \"1s\"\n",
        )
        .unwrap();
        assert_eq!(a.name.as_deref(), Some("n1"));
        assert_eq!(a.gossip_interval, Some(Duration::from_secs(1)));
        assert!(toml::from_str::<AgentArgs>("bogus = 1").is_err(), "unknown keys are refused");
        let a: AgentArgs =
            toml::from_str("metrics = \"127.0.0.1:9946\"\nlog-format = \"json\"\n").unwrap();
        assert_eq!(a.metrics, Some("127.0.0.1:9946".parse().unwrap()));
        assert_eq!(a.log_format, Some(LogFormat::Json));
    }
}
