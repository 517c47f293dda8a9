//! The agent's state directory: the overlay networks and endpoints of this
//! host, so that an agent restarted after a crash republishes them and its
//! containers keep working. One agent per directory, enforced by a lock.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";
const VERSION: u32 = 1;
/// A state file larger than this is not ours.
const MAX_STATE_BYTES: u64 = 64 << 20;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct State {
    pub version: u32,
    /// Definitions of the networks this host has endpoints on, as last
    /// seen, and the address blocks this host claimed in them.
    pub networks: BTreeMap<String, SavedNetwork>,
    pub endpoints: Vec<SavedEndpoint>,
    /// The Lamport time when last saved: a restarted agent resumes from
    /// it, so its claims and definitions never look older than they are.
    #[serde(default)]
    pub ltime: u64,
    /// The incarnation this state belongs to (0: none yet, a file of an
    /// older agent) and the SWIM generation of its last start: a restart
    /// resumes it (see `life`).
    #[serde(default)]
    pub incarnation: u64,
    #[serde(default)]
    pub generation: u32,
    /// Other members' addresses when last saved: a restarted agent knocks
    /// on them as well as on its seeds (as Serf's snapshot does), so a host
    /// started without `--join`, the first of a cluster, finds it again.
    #[serde(default)]
    pub peers: Vec<std::net::SocketAddr>,
    /// Addresses handed out by the Docker IPAM driver and not yet taken by
    /// an endpoint: Docker asks for the address before it creates the
    /// endpoint, and a restart in between must not hand it out twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved: Vec<Reserved>,
    /// The networks joined through the API (`netdb network join`): a
    /// restart joins them again at once, not only once it hears its own
    /// attachments from peers (an attachment that died with its writer
    /// before it went out is heard nowhere), and the overlay stays in them
    /// when their last endpoint here goes. Left the same way; empty once
    /// the host left the cluster.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub joined: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Reserved {
    pub network: String,
    pub ip: std::net::Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SavedNetwork {
    pub subnet: String,
    pub vni: u32,
    pub mtu: u32,
    pub origin: String,
    pub created: u64,
    pub blocks: BTreeSet<u32>,
    /// No way out (absent in files of older agents: not internal).
    #[serde(default)]
    pub internal: bool,
    /// The default address pool the subnet came from; empty when given.
    #[serde(default)]
    pub pool: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SavedEndpoint {
    pub network: String,
    pub name: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub host_ifname: String,
    pub ip: std::net::Ipv4Addr,
    pub prefix: u8,
    pub mac: String,
    pub service: String,
    pub aliases: Vec<String>,
    /// The address on this host's gateway bridge, kept across restarts so
    /// published ports keep their target; `None` on an internal network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_ip: Option<std::net::Ipv4Addr>,
    /// Host ports forwarded to the endpoint, as HOSTPORT:PORT/PROTO.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// Docker made the container side: netdb made the veth pair and Docker
    /// moved, renamed and addressed the peer; `netns` and `ifname` are
    /// empty and the endpoint has no way out of netdb's (Docker gives it
    /// one through docker_gwbridge).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub docker: bool,
}

/// The directory, locked for this agent's lifetime.
pub(crate) struct Store {
    dir: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

impl Store {
    pub(crate) fn open(dir: &Path) -> anyhow::Result<(Store, State)> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("cannot create data dir {}; use --data-dir", dir.display())
            })?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict data dir {}", dir.display()))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))
            .with_context(|| format!("cannot open {}", dir.join(LOCK_FILE).display()))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| {
                anyhow::anyhow!(
                    "data dir {} is in use by another agent; give each agent its own --data-dir",
                    dir.display()
                )
            })?;
        let path = dir.join(STATE_FILE);
        let state = match read_bounded(&path, MAX_STATE_BYTES)? {
            None => State::default(),
            Some(text) => {
                let state: State = serde_json::from_slice(&text).with_context(|| {
                    format!(
                        "{} is corrupt; move it away to start without local endpoints",
                        path.display()
                    )
                })?;
                if state.version != VERSION {
                    bail!(
                        "{} has version {}, this agent reads {VERSION}",
                        path.display(),
                        state.version
                    );
                }
                for ep in &state.endpoints {
                    for p in &ep.publish {
                        p.parse::<netdb_dataplane::Publish>().with_context(|| {
                            format!(
                                "{} is corrupt (endpoint {}); move it away to start without local endpoints",
                                path.display(),
                                ep.name
                            )
                        })?;
                    }
                }
                state
            }
        };
        Ok((Store { dir: dir.into(), _lock: lock }, state))
    }

    /// Writes the state atomically: a temporary file, synced, renamed over
    /// the old one, and the directory synced.
    pub(crate) fn save(&self, state: &State) -> anyhow::Result<()> {
        let mut state = state.clone();
        state.version = VERSION;
        write_atomic(&self.dir, STATE_FILE, &serde_json::to_vec_pretty(&state)?)
    }
}

/// The bytes of a file this agent wrote; `None` if there is none yet, an
/// error if it is larger than `max` (not ours).
pub(crate) fn read_bounded(path: &Path, max: u64) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        Ok(m) if m.len() > max => {
            bail!(
                "{} is {} bytes, larger than any netdb writes; move it away",
                path.display(),
                m.len()
            )
        }
        Ok(_) => {
            std::fs::read(path).map(Some).with_context(|| format!("cannot read {}", path.display()))
        }
    }
}

/// Writes `dir/name` so that a crash leaves the old file or the new one,
/// never half of one: a temporary file, synced, renamed over the old one,
/// and the directory synced. Mode 0600.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netdb-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn state_round_trips_and_the_dir_is_exclusive() {
        let dir = tmpdir("rt");
        let (store, state) = Store::open(&dir).unwrap();
        assert_eq!(state, State::default());
        let mut s = State::default();
        s.networks.insert(
            "blue".into(),
            SavedNetwork {
                subnet: "10.1.0.0/24".into(),
                vni: 4096,
                mtu: 1450,
                origin: "h1".into(),
                created: 3,
                blocks: [2].into(),
                internal: true,
                pool: "10.0.0.0/8".into(),
            },
        );
        s.endpoints.push(SavedEndpoint {
            network: "blue".into(),
            name: "web".into(),
            netns: "/run/netns/c1".into(),
            ifname: "eth0".into(),
            host_ifname: "ndve00000001".into(),
            ip: "10.1.0.2".parse().unwrap(),
            prefix: 24,
            mac: "02:42:0a:01:00:02".into(),
            service: String::new(),
            aliases: vec![],
            gateway_ip: Some("198.18.0.2".parse().unwrap()),
            publish: vec!["8080:80/tcp".into()],
            docker: false,
        });
        store.save(&s).unwrap();
        let mode = std::fs::metadata(dir.join(STATE_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = Store::open(&dir).err().unwrap().to_string();
        assert!(err.contains("in use by another agent"), "{err}");
        drop(store);
        let (_, back) = Store::open(&dir).unwrap();
        assert_eq!(back.networks, s.networks);
        assert_eq!(back.endpoints, s.endpoints, "the way out and publishes are kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_of_older_agents_load_and_bad_publishes_are_refused() {
        let dir = tmpdir("old");
        std::fs::create_dir_all(&dir).unwrap();
        let endpoint = r#"{"network": "blue", "name": "web", "netns": "/run/netns/c1",
            "ifname": "eth0", "host_ifname": "ndve1", "ip": "10.1.0.2", "prefix": 24,
            "mac": "02:42:0a:01:00:02", "service": "", "aliases": []"#;
        let network = r#"{"subnet": "10.1.0.0/24", "vni": 4096, "mtu": 1450, "origin": "h1",
            "created": 3, "blocks": [2]}"#;
        let old = format!(
            r#"{{"version": 1, "networks": {{"blue": {network}}}, "endpoints": [{endpoint}}}]}}"#
        );
        std::fs::write(dir.join(STATE_FILE), &old).unwrap();
        let (store, st) = Store::open(&dir).unwrap();
        assert!(!st.networks["blue"].internal);
        assert_eq!((st.endpoints[0].gateway_ip, st.endpoints[0].publish.len()), (None, 0));
        drop(store);

        let bad = old.replace(r#""aliases": []"#, r#""aliases": [], "publish": ["80"]"#);
        std::fs::write(dir.join(STATE_FILE), bad).unwrap();
        let err = format!("{:#}", Store::open(&dir).err().unwrap());
        assert!(err.contains("corrupt (endpoint web)") && err.contains("HOSTPORT:PORT"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_refused_with_advice() {
        let dir = tmpdir("bad");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), b"{\"version\": 1, \"networks\": 7").unwrap();
        let err = format!("{:#}", Store::open(&dir).err().unwrap());
        assert!(err.contains("corrupt; move it away"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
