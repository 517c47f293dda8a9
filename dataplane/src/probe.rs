//! What this kernel can do for the data plane, tried for real in a
//! throwaway network namespace: the host's own interfaces, sockets and
//! ports are never touched, and everything made there vanishes with the
//! namespace.

use std::net::Ipv4Addr;
use std::path::Path;

use nix::sched::CloneFlags;

use crate::linux::Place;
use crate::{Error, Linux, Network};

/// The outcome of each kernel feature the data plane needs; `None`: not
/// tried, because an earlier step it depends on failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSupport {
    /// Network namespaces of our own (the probe's sandbox and an overlay
    /// namespace in it; the agent enters containers' namespaces the same
    /// way).
    pub netns: Result<(), String>,
    /// A bridge (`ndbr<VNI>`).
    pub bridge: Option<Result<(), String>>,
    /// A VXLAN device with the agent's settings (UDP 4789, learning off,
    /// ARP proxy on), made into the overlay namespace, enslaved to the
    /// bridge and up.
    pub vxlan: Option<Result<(), String>>,
    /// A veth pair (an endpoint's link to its container).
    pub veth: Option<Result<(), String>>,
}

/// Tries network namespaces, a bridge, a VXLAN device and a veth pair as
/// the agent makes them, with this MTU and tunnel address, each reported on
/// its own. Needs CAP_SYS_ADMIN (the namespace) and CAP_NET_ADMIN. Blocks
/// for the few milliseconds it takes, on a thread of its own, since a
/// thread that changed namespace must not run anyone else's work.
pub fn probe_kernel(local: Ipv4Addr, mtu: u32) -> KernelSupport {
    std::thread::spawn(move || probe_in_new_namespace(local, mtu)).join().unwrap_or_else(|_| {
        KernelSupport {
            netns: Err("the probe thread panicked".into()),
            bridge: None,
            vxlan: None,
            veth: None,
        }
    })
}

fn probe_in_new_namespace(local: Ipv4Addr, mtu: u32) -> KernelSupport {
    let mut out = KernelSupport { netns: Ok(()), bridge: None, vxlan: None, veth: None };
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWNET) {
        out.netns = Err(format!("cannot create a network namespace: {}", std::io::Error::from(e)));
        return out;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            out.netns = Err(format!("cannot start a runtime in the namespace: {e}"));
            return out;
        }
    };
    runtime.block_on(async {
        let overlay =
            crate::netns::fresh().and_then(|f| Linux::with_overlay(Path::new("probe"), f));
        let linux = match overlay {
            Ok(l) => l,
            Err(e) => {
                out.netns = Err(e.to_string());
                return;
            }
        };
        let net = Network {
            vni: 4096,
            mtu,
            local,
            remotes: Default::default(),
            endpoints: Default::default(),
            port: crate::VXLAN_PORT,
            prune: true,
            gateway: None,
        };
        let bridge = linux.ensure_bridge(&net).await;
        out.bridge = Some(shown(&bridge));
        if let Ok(br_ix) = bridge {
            out.vxlan = Some(shown(&linux.ensure_vxlan(&net, br_ix).await));
        }
        let veth =
            linux.add_veth("ndveprobe", Place::Overlay, "ndveprobep", Place::Here, Some(mtu));
        out.veth = Some(shown(&veth.await));
    });
    out
}

fn shown<T>(r: &Result<T, Error>) -> Result<(), String> {
    r.as_ref().map(|_| ()).map_err(ToString::to_string)
}
