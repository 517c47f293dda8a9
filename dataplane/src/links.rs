//! What the agent's start and its doctor read about links, by netlink:
//! sysfs lists the namespace it was mounted in, not the caller's, which is
//! wrong for an agent started with `nsenter --net`.

use std::fs::File;
use std::future::Future;
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::link::LinkAttribute;

use crate::linux::{LinkKind, links_in};
use crate::netns;

/// The MTU of link `name` in the caller's namespace.
pub fn link_mtu(name: &str) -> Option<u32> {
    let name = name.to_string();
    on_runtime(move || async move {
        let conn = netns::here().ok()?;
        let mut links = conn.handle.link().get().match_name(name).execute();
        let msg = links.try_next().await.ok()??;
        msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
    })
}

/// The VXLAN devices of the caller's namespace and of the overlay namespace
/// pinned at `overlay` (netdb's are there; their UDP sockets are in the
/// caller's), by name.
pub fn vxlan_devices(overlay: &Path) -> Vec<String> {
    let overlay = overlay.to_path_buf();
    on_runtime(move || async move {
        let mut names = Vec::new();
        vxlans_in(&netns::here().ok()?.handle, &mut names).await;
        let pinned = File::open(&overlay).ok().filter(netns::is_netns);
        if let Some(conn) = pinned.and_then(|f| netns::enter(&overlay, &f).ok()) {
            vxlans_in(&conn.handle, &mut names).await;
        }
        Some(names)
    })
    .unwrap_or_default()
}

async fn vxlans_in(h: &Handle, names: &mut Vec<String>) {
    let links = links_in(h).await.unwrap_or_default();
    let vxlans = links.into_iter().filter(|l| matches!(l.kind, LinkKind::Vxlan(_)));
    names.extend(vxlans.map(|l| l.name));
}

/// Runs `f` to completion on a runtime of its own, on a thread of its own
/// (in the caller's namespace): callable from sync code and from inside
/// another runtime alike.
fn on_runtime<T, Fut>(f: impl FnOnce() -> Fut + Send + 'static) -> Option<T>
where
    T: Send + 'static,
    Fut: Future<Output = Option<T>>,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().ok()?;
        rt.block_on(f())
    })
    .join()
    .ok()?
}
