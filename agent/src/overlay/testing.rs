//! A host for overlay tests: a real node (made as the agent makes it), the
//! overlay with its state in a temporary data dir, the in-memory kernel,
//! and time that passes only when a test (or a settle wait) says so.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use netdb::{Config, Node, Transmit};
use netdb_dataplane::memory::Memory;

use super::{Attach, CreateNetwork, EndpointInfo, Error, Host, Overlay};
use crate::state::Store;

/// How long a block claim takes to settle in these tests.
pub(super) const SETTLE: Duration = Duration::from_secs(1);

/// A directory (or file) removed when dropped.
pub(super) struct Temp(pub(super) PathBuf);

impl Temp {
    pub(super) fn dir(tag: &str) -> Temp {
        let t = Temp::path(tag);
        std::fs::create_dir_all(&t.0).unwrap();
        t
    }

    /// A file standing in for a container's namespace: the overlay only
    /// checks it exists, the in-memory kernel too.
    pub(super) fn netns(tag: &str) -> Temp {
        let t = Temp::path(tag);
        std::fs::write(&t.0, b"").unwrap();
        t
    }

    fn path(tag: &str) -> Temp {
        let p = std::env::temp_dir().join(format!("netdb-overlay-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::remove_file(&p);
        Temp(p)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(super) struct Parts {
    pub(super) overlay: Overlay,
    pub(super) node: Node,
    pub(super) now: Duration,
}

/// One agent's core, held directly instead of behind the loop.
pub(super) struct TestHost {
    parts: Mutex<Parts>,
    pub(super) kernel: tokio::sync::Mutex<Memory>,
}

/// A node as the agent makes it, at 127.0.0.`n`:7946 (the tunnel address
/// is 192.0.2.`n`).
pub(super) fn node(name: &str, n: u8, incarnation: u64) -> Node {
    let addr = SocketAddr::from((Ipv4Addr::new(127, 0, 0, n), 7946));
    Node::new(Config::default(), name, incarnation, addr, u64::from(n), Duration::ZERO).unwrap()
}

impl TestHost {
    /// Host `name` number `n`, its state in `dir` (republished, as after a
    /// restart, if there is any).
    pub(super) fn new(name: &str, n: u8, incarnation: u64, dir: &Path) -> TestHost {
        let mut node = node(name, n, incarnation);
        let store = Store::open(dir).unwrap();
        let gateway = crate::overlay::DEFAULT_GATEWAY_SUBNET.parse().unwrap();
        let tunnel = Some(Ipv4Addr::new(192, 0, 2, n));
        let mut overlay = Overlay::new(name, tunnel, Some(store), SETTLE, gateway);
        overlay.republish(&mut node, Duration::ZERO);
        TestHost {
            parts: Mutex::new(Parts { overlay, node, now: Duration::ZERO }),
            kernel: tokio::sync::Mutex::new(Memory::new()),
        }
    }

    pub(super) fn parts(&self) -> MutexGuard<'_, Parts> {
        self.parts.lock().unwrap()
    }

    pub(super) fn now(&self) -> Duration {
        self.parts().now
    }

    pub(super) fn create(&self, name: &str, subnet: &str) -> Result<super::NetworkInfo, Error> {
        self.create_with(name, subnet, false)
    }

    pub(super) fn create_with(
        &self,
        name: &str,
        subnet: &str,
        internal: bool,
    ) -> Result<super::NetworkInfo, Error> {
        let mut guard = self.parts();
        let p = &mut *guard;
        let r = CreateNetwork {
            name: name.into(),
            subnet: subnet.into(),
            vni: None,
            mtu: None,
            internal,
            routes: Vec::new(),
        };
        p.overlay.create(&mut p.node, p.now, r)
    }

    pub(super) fn attach(&self, a: Attach) -> Result<EndpointInfo, Error> {
        block_on(super::attach(self, Some(&self.kernel), a))
    }

    pub(super) fn detach(&self, network: &str, name: &str) -> Result<(), Error> {
        block_on(super::detach(self, Some(&self.kernel), network.into(), name.into(), None))
    }

    /// Makes the in-memory kernel hold what the overlay wants now.
    pub(super) fn reconcile(&self) -> netdb_dataplane::ReconcileReport {
        let (retired, desired) = {
            let mut p = self.parts();
            (p.overlay.take_retired(), p.overlay.desired(&p.node, p.now))
        };
        let kernel = self.kernel.try_lock().unwrap();
        for veth in retired {
            block_on(netdb_dataplane::Kernel::detach(&*kernel, &veth)).unwrap();
        }
        block_on(netdb_dataplane::Kernel::reconcile(&*kernel, &desired)).unwrap()
    }

    /// Gives back the node and overlay (to pass traffic, or to drop the
    /// data dir's lock for a restart).
    pub(super) fn into_parts(self) -> Parts {
        self.parts.into_inner().unwrap()
    }
}

impl Host for TestHost {
    fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Overlay, &mut Node, Duration) -> R + Send + 'static,
    ) -> impl Future<Output = Option<R>> + Send {
        let mut guard = self.parts();
        let p = &mut *guard;
        std::future::ready(Some(f(&mut p.overlay, &mut p.node, p.now)))
    }

    fn wait(&self, d: Duration) -> impl Future<Output = ()> + Send {
        self.parts().now += d;
        std::future::ready(())
    }
}

/// Host h1 (its state in a fresh dir) with network blue, 10.1.0.0/24.
pub(super) fn blue(tag: &str) -> (Temp, TestHost) {
    let dir = Temp::dir(tag);
    let h = TestHost::new("h1", 1, 1, &dir.0);
    h.create("blue", "10.1.0.0/24").unwrap();
    (dir, h)
}

/// Hosts h1, with network blue and what `first` attached there, and h2,
/// which met h1, joined blue and holds what h1 holds of it (so an attach
/// on h2 need not wait for a push/pull that only [`exchange`] carries).
pub(super) fn pair(tag: &str, first: impl FnOnce(&TestHost)) -> (Temp, Temp, TestHost, TestHost) {
    let (da, a) = blue(&format!("{tag}-a"));
    first(&a);
    let db = Temp::dir(&format!("{tag}-b"));
    let b = TestHost::new("h2", 2, 1, &db.0);
    {
        let (mut pa, mut pb) = (a.parts(), b.parts());
        let seed = pa.node.addr();
        let now = pb.now;
        pb.node.join(now, &[seed]);
        exchange(&mut pa, &mut pb, Duration::from_secs(5));
        let now = pb.now;
        pb.node.join_network(now, "blue").unwrap();
        // h2 keeps a copy of blue's definition of its own, as its agent's
        // upkeep would: blue outlives h1 there.
        let pb = &mut *pb;
        pb.overlay.maintain(&mut pb.node, now);
        exchange(&mut pa, pb, Duration::from_secs(10));
    }
    (da, db, a, b)
}

/// Lets time run to `until` on a host cut off from everyone: its timers
/// fire, whatever it sends is lost.
pub(super) fn isolate(p: &mut Parts, until: Duration) {
    while let Some(next) = p.node.poll_timeout().filter(|t| *t <= until) {
        p.now = p.now.max(next);
        p.node.handle_timeout(p.now);
        while p.node.poll_transmit().is_some() {}
        while let Some(ev) = p.node.poll_event() {
            p.overlay.observe(&ev);
        }
    }
    p.now = p.now.max(until);
}

/// An attach of `name` on `network` in the namespace `netns`, address
/// allocated.
pub(super) fn attach_req(network: &str, name: &str, netns: &Path) -> Attach {
    Attach {
        network: network.into(),
        name: name.into(),
        netns: netns.into(),
        ip: None,
        service: String::new(),
        aliases: Vec::new(),
        ifname: None,
        publish: Vec::new(),
        docker: false,
        mac: None,
    }
}

pub(super) fn block_on<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
}

/// Passes traffic between two nodes (every transmit of one goes to the
/// other) and lets time run to `until`, firing their timers on the way.
pub(super) fn exchange(a: &mut Parts, b: &mut Parts, until: Duration) {
    let (addr_a, addr_b) = (a.node.addr(), b.node.addr());
    loop {
        loop {
            let now = a.now.max(b.now);
            let moved = deliver(&mut a.node, addr_a, &mut b.node, now)
                | deliver(&mut b.node, addr_b, &mut a.node, now);
            for p in [&mut *a, &mut *b] {
                while let Some(ev) = p.node.poll_event() {
                    p.overlay.observe(&ev);
                }
            }
            if !moved {
                break;
            }
        }
        let next = [a.node.poll_timeout(), b.node.poll_timeout()].into_iter().flatten().min();
        let Some(next) = next.filter(|t| *t <= until) else { break };
        let now = next.max(a.now).max(b.now);
        for p in [&mut *a, &mut *b] {
            p.now = now;
            if p.node.poll_timeout().is_some_and(|t| t <= now) {
                p.node.handle_timeout(now);
            }
        }
    }
    a.now = a.now.max(until);
    b.now = b.now.max(until);
}

fn deliver(from: &mut Node, addr: SocketAddr, to: &mut Node, now: Duration) -> bool {
    let mut moved = false;
    while let Some(t) = from.poll_transmit() {
        moved = true;
        match t {
            Transmit::Datagram { payload, .. } => to.handle_datagram(now, addr, &payload),
            Transmit::Sync { payload, .. } => to.handle_sync(now, addr, &payload),
        }
    }
    moved
}
