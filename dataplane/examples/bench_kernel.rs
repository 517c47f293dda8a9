//! Kernel programming figures: 10,000 remote endpoints applied to an empty
//! kernel, reconciled when nothing changed, repaired after 1,000 entries
//! were lost, and withdrawn; then 100 local endpoints with a way out and a
//! published port each (netdb's nftables table included). Runs in a private
//! network namespace of its own (needs root).
//!
//!   cargo run --release -p netdb-dataplane --example bench_kernel [N]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use netdb_dataplane::{Desired, Egress, Endpoint, Linux, Mac, Network, Proto, Publish, Remote};

/// Local endpoints with a way out in the second part.
const LOCAL: u16 = 100;

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    if !netdb_dataplane::has_net_admin() {
        eprintln!("bench_kernel needs root (CAP_NET_ADMIN)");
        std::process::exit(2);
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare a network namespace");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Its overlay namespace, pinned as the agent's is, removed at the end.
    let overlay = format!("ndbench-kernel-{}", std::process::id());
    let pin = std::path::PathBuf::from(format!("/run/netns/{overlay}"));
    rt.block_on(async move {
        let linux = Linux::new(&pin).expect("the overlay namespace and netlink");
        let remotes = (0..n)
            .map(|i| {
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i);
                let host = Ipv4Addr::new(192, 0, 2, 1 + (i % 200) as u8);
                Remote { ip, mac: Mac::from_ipv4(ip), host }
            })
            .collect();
        let full = Network {
            vni: 4096,
            mtu: 1450,
            local: Ipv4Addr::new(192, 0, 2, 250),
            remotes,
            endpoints: BTreeMap::new(),
            port: netdb_dataplane::VXLAN_PORT,
            prune: true,
            gateway: None,
        };
        let desired: Desired = [(4096, full.clone())].into();
        println!("| step ({n} remote endpoints) | time | changes |");
        println!("|---|---|---|");
        let step = |name: &str, r: netdb_dataplane::ReconcileReport| {
            assert_eq!(r.failed, 0, "{name}: {r:?}");
            println!("| {name} | {:.0} ms | {} |", r.elapsed.as_secs_f64() * 1e3, r.changes());
        };
        step("apply to an empty kernel", linux.reconcile(&desired).await.unwrap());
        step("reconcile, nothing to do", linux.reconcile(&desired).await.unwrap());
        let started = Instant::now();
        let observed = linux.observe().await.unwrap();
        let read = started.elapsed();
        let held = &observed.networks[&4096];
        assert_eq!((held.fdb.len(), held.neigh.len()), (n as usize, n as usize));
        println!(
            "| read back ({} FDB + {} neighbor entries) | {:.0} ms | 0 |",
            held.fdb.len(),
            held.neigh.len(),
            read.as_secs_f64() * 1e3
        );
        // A tenth of the remotes lost (as if deleted behind our back): the
        // reconcile puts them back.
        let mut partial = full.clone();
        partial.remotes = full.remotes.iter().copied().skip((n / 10) as usize).collect();
        linux.reconcile(&[(4096, partial)].into()).await.unwrap();
        step("repair after a tenth were lost", linux.reconcile(&desired).await.unwrap());
        let mut empty = full.clone();
        empty.remotes.clear();
        step("withdraw all", linux.reconcile(&[(4096, empty)].into()).await.unwrap());
        step("remove the network", linux.reconcile(&Desired::new()).await.unwrap());

        // The "containers" are this namespace itself: their interfaces only
        // need distinct names.
        let mut local = full.clone();
        local.remotes.clear();
        for i in 0..LOCAL {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 2)) + u32::from(i));
            let ep = Endpoint {
                netns: "/proc/self/ns/net".into(),
                ifname: format!("c{i}"),
                host_ifname: format!("ndve{i:08x}"),
                ip,
                prefix: 16,
                mac: Mac::from_ipv4(ip),
                egress: Some(Egress {
                    ifname: format!("gwc{i}"),
                    ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 2)) + u32::from(i)),
                    gateway: Ipv4Addr::new(198, 18, 0, 1),
                    prefix: 16,
                    publish: vec![Publish { proto: Proto::Tcp, host_port: 10_000 + i, port: 80 }],
                }),
                docker: false,
            };
            local.endpoints.insert(ep.host_ifname.clone(), ep);
        }
        let desired: Desired = [(4096, local)].into();
        println!("| {LOCAL} local endpoints with a way out and a published port | | |");
        step("wire them and load the table", linux.reconcile(&desired).await.unwrap());
        step("reconcile, nothing to do (table listed)", linux.reconcile(&desired).await.unwrap());
        step("remove everything", linux.reconcile(&Desired::new()).await.unwrap());
    });
    let _ = std::process::Command::new("ip").args(["netns", "del", &overlay]).status();
}
