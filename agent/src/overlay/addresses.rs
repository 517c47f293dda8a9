//! Addresses: which are taken, which this host may hand out (from the
//! blocks it claimed, once a claim has settled, or borrowed when every
//! block is claimed), and veth names.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use netdb::Node;
use netdb::SharedTable;
use netdb::ipam::{self, Claims};
use netdb::netdefs::Effective;

use super::attach::{Host, explicit_ip, free, network_synced, on};
use super::desired::decode_route;
use super::{Error, Hasher, Overlay, ROUTES_TABLE, saved_network};
use crate::state::Reserved;

impl Overlay {
    /// Addresses taken on a network, with who holds them.
    pub(super) fn used_addresses(&self, node: &Node, network: &str) -> BTreeMap<Ipv4Addr, String> {
        let mut used = BTreeMap::new();
        for (key, e) in node.entries(network, ROUTES_TABLE) {
            if let Some(r) = decode_route(&e.value) {
                used.insert(r.ip, format!("endpoint {key}"));
            }
        }
        for ep in self.state.endpoints.iter().filter(|e| e.network == network) {
            used.insert(ep.ip, format!("endpoint {} on this host", ep.name));
        }
        for ((n, name), p) in &self.pending {
            if n == network {
                used.insert(p.ip, format!("endpoint {name} being attached on this host"));
            }
        }
        for r in self.state.reserved.iter().filter(|r| r.network == network) {
            used.entry(r.ip).or_insert_with(|| "a Docker address request on this host".into());
        }
        used
    }

    /// Addresses reserved for Docker's endpoints and not yet taken.
    pub(crate) fn reservations(&self) -> Vec<(String, Ipv4Addr)> {
        self.state.reserved.iter().map(|r| (r.network.clone(), r.ip)).collect()
    }

    pub(super) fn is_reserved(&self, network: &str, ip: Ipv4Addr) -> bool {
        self.state.reserved.iter().any(|r| r.network == network && r.ip == ip)
    }

    /// Reserves an address of `network` for an endpoint to come (Docker's
    /// IPAM asks for it before the endpoint exists): `want`, or the lowest
    /// free one of this host's blocks. `None`: come back when the block
    /// claim has settled.
    fn begin_reserve(
        &mut self,
        node: &mut Node,
        now: Duration,
        network: &str,
        want: Option<&str>,
    ) -> Result<Option<Ipv4Addr>, Error> {
        let (_, eff) = self.attachable(node, network)?;
        let explicit = want.map(|text| explicit_ip(network, &eff.subnet, text)).transpose()?;
        node.join_network(now, network)?;
        let used = self.used_addresses(node, network);
        let picked = match explicit {
            Some(ip) => free(&used, ip).map(Some),
            None => self.allocate(node, now, &eff, &used),
        };
        let ip = match picked {
            Ok(Some(ip)) if network_synced(node, network) => ip,
            Ok(_) => return Ok(None),
            Err(e) => {
                self.leave_if_unused(node, now, network);
                return Err(e);
            }
        };
        self.state.networks.entry(network.into()).or_insert_with(|| saved_network(&eff.def));
        self.state.reserved.push(Reserved { network: network.into(), ip });
        self.save(node);
        tracing::info!(%network, %ip, "address reserved for a Docker endpoint");
        Ok(Some(ip))
    }

    /// Gives back a reserved address that no endpoint took; false if it
    /// was not reserved.
    fn release_reserved(
        &mut self,
        node: &mut Node,
        now: Duration,
        network: &str,
        ip: Ipv4Addr,
    ) -> bool {
        let before = self.state.reserved.len();
        self.state.reserved.retain(|r| !(r.network == network && r.ip == ip));
        let found = self.state.reserved.len() != before;
        if found {
            self.leave_if_unused(node, now, network);
            self.save(node);
        }
        found
    }

    /// The lowest free address of a settled block this host owns; claims a
    /// new block when there is none (`None`: wait for the claim to settle),
    /// or borrows a free address when every block is claimed.
    pub(super) fn allocate(
        &mut self,
        node: &mut Node,
        now: Duration,
        eff: &Effective,
        used: &BTreeMap<Ipv4Addr, String>,
    ) -> Result<Option<Ipv4Addr>, Error> {
        let def = &eff.def;
        let subnet = eff.subnet;
        let claims = Claims::collect(
            &def.name,
            def.id(),
            subnet.blocks(),
            node.shared_entries(SharedTable::Ipam),
        );
        let settled: Vec<u32> = claims
            .owned_by(&self.me)
            .filter(|b| {
                self.claimed_at
                    .get(&(def.name.clone(), *b))
                    .is_none_or(|at| now >= *at + self.settle)
            })
            .collect();
        let taken: BTreeSet<Ipv4Addr> = used.keys().copied().collect();
        if let Some(ip) = ipam::allocate(&subnet, settled, &taken) {
            return Ok(Some(ip));
        }
        let unsettled = self.claimed_at.iter().any(|((n, b), at)| {
            *n == def.name && now < *at + self.settle && claims.owner(*b) == Some(&self.me)
        });
        // A claim needs the cluster's claims first, or it could take a
        // block another node holds.
        if unsettled || !node.cluster_synced() {
            return Ok(None);
        }
        let Some(block) = claims.free_block(&subnet, &self.me) else {
            return match ipam::borrow(&subnet, &self.me, &taken) {
                Some(ip) => {
                    tracing::info!(network = %def.name, %ip, "every address block is claimed; borrowed an address");
                    Ok(Some(ip))
                }
                None => Err(Error::SubnetFull { network: def.name.clone(), subnet }),
            };
        };
        node.put_shared(
            now,
            SharedTable::Ipam,
            &ipam::claim_id(&def.name, block),
            ipam::encode_claim(&def.origin, def.created),
        )?;
        self.claimed_at.insert((def.name.clone(), block), now);
        self.state
            .networks
            .entry(def.name.clone())
            .or_insert_with(|| saved_network(def))
            .blocks
            .insert(block);
        self.save(node);
        tracing::info!(network = %def.name, block, "claimed an address block");
        Ok(None)
    }

    /// A host-side veth name for the endpoint, derived from its names and
    /// unique among this host's endpoints.
    pub(super) fn host_ifname(&self, network: &str, name: &str) -> String {
        let taken: BTreeSet<&str> = self
            .state
            .endpoints
            .iter()
            .map(|e| e.host_ifname.as_str())
            .chain(self.pending.values().map(|p| p.saved.host_ifname.as_str()))
            .collect();
        (0u64..)
            .map(|salt| {
                let h = Hasher::default()
                    .bytes(network.as_bytes())
                    .bytes(name.as_bytes())
                    .u64(salt)
                    .finish();
                format!("ndve{:08x}", h as u32)
            })
            .find(|n| !taken.contains(n.as_str()))
            .unwrap_or_default()
    }
}

/// Claim settle waits a reservation sits through, as an attach does.
const MAX_RESERVE_WAITS: usize = 8;

/// Reserves an address of `network` for a Docker endpoint (see
/// `begin_reserve`), waiting out block claims.
pub(crate) async fn reserve<H: Host>(
    host: &H,
    network: String,
    want: Option<String>,
) -> Result<Ipv4Addr, Error> {
    for _ in 0..=MAX_RESERVE_WAITS {
        let (net, ip) = (network.clone(), want.clone());
        if let Some(ip) =
            on(host, move |o, node, now| o.begin_reserve(node, now, &net, ip.as_deref())).await??
        {
            return Ok(ip);
        }
        let settle = on(host, |o, _, _| o.settle).await?;
        host.wait(settle).await;
    }
    let net = network.clone();
    on(host, move |o, node, now| o.leave_if_unused(node, now, &net)).await?;
    Err(Error::Unsettled { network, tries: MAX_RESERVE_WAITS })
}

/// Gives back an address reserved for a Docker endpoint; false if it was
/// not reserved (taken by an endpoint, or released already).
pub(crate) async fn release<H: Host>(
    host: &H,
    network: String,
    ip: Ipv4Addr,
) -> Result<bool, Error> {
    on(host, move |o, node, now| o.release_reserved(node, now, &network, ip)).await
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::testing::{Temp, TestHost, attach_req, block_on, blue};
    use super::super::{Attach, ENDPOINTS_TABLE, Names};
    use super::*;

    /// Docker's endpoint for a reserved address, as the plugin asks.
    fn docker_attach(name: &str, ip: Ipv4Addr) -> Attach {
        Attach {
            docker: true,
            ip: Some(ip.to_string()),
            netns: PathBuf::new(),
            ..attach_req("blue", name, &PathBuf::new())
        }
    }

    #[test]
    fn an_address_reserved_for_docker_goes_only_to_its_endpoint_and_outlives_a_restart() {
        let (dir, h) = blue("reserve");
        let ip = block_on(reserve(&h, "blue".into(), None)).unwrap();
        let ns = Temp::netns("reserve-ns");
        let other = h.attach(attach_req("blue", "web", &ns.0)).unwrap();
        assert_ne!(other.ip, ip.to_string(), "a reserved address is not handed out again");
        drop(h.into_parts());

        let h = TestHost::new("h1", 1, 1, &dir.0);
        let again = block_on(reserve(&h, "blue".into(), Some(ip.to_string())));
        assert!(matches!(again, Err(Error::AddressTaken { .. })), "{again:?}");
        let ep = h.attach(docker_attach("0123456789ab", ip)).unwrap();
        assert_eq!(ep.ip, ip.to_string());
        assert_eq!(
            ep.ifname,
            netdb_dataplane::peer_name(&h.parts().overlay.state.endpoints[1].host_ifname)
        );
        assert!(
            !block_on(release(&h, "blue".into(), ip)).unwrap(),
            "the endpoint took the reservation"
        );

        // One given back is handed out again.
        let next = block_on(reserve(&h, "blue".into(), None)).unwrap();
        assert!(block_on(release(&h, "blue".into(), next)).unwrap());
        assert_eq!(block_on(reserve(&h, "blue".into(), None)).unwrap(), next);
    }

    #[test]
    fn docker_endpoints_get_their_container_names_as_aliases_and_keep_the_kernel_side_to_docker() {
        let (_dir, h) = blue("docker-ep");
        let ip = block_on(reserve(&h, "blue".into(), None)).unwrap();
        let ep = h.attach(docker_attach("0123456789ab", ip)).unwrap();
        let set = |aliases: &[&str]| {
            block_on(super::super::set_aliases(
                &h,
                "blue".into(),
                ep.name.clone(),
                aliases.iter().map(|a| a.to_string()).collect(),
            ))
            .unwrap()
        };
        assert!(set(&["web", "fedcba987654", "bad name!", "web"]));
        assert!(!set(&["fedcba987654", "web"]), "the same names again change nothing");
        let p = h.parts();
        let names = Names::from_entries(p.node.entries("blue", ENDPOINTS_TABLE));
        assert_eq!(names.holders("web").len(), 1, "the container's name resolves");
        assert!(names.holders("bad name!").is_empty());
        let view = p.overlay.dns_view().borrow().clone();
        assert_eq!(view.containers().count(), 0, "no resolver of ours in Docker's containers");
        let gateway = Ipv4Addr::new(10, 1, 0, 1);
        assert_eq!(view.gateways().collect::<Vec<_>>(), [gateway]);
        let nets: Vec<&str> =
            view.networks_at(gateway, ip).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(nets, ["blue"]);
        assert!(view.networks_at(gateway, Ipv4Addr::new(10, 1, 0, 77)).is_none(), "a stranger");
        let desired = p.overlay.desired(&p.node, p.now);
        drop(p);
        let net = desired.values().next().unwrap();
        assert_eq!(net.gateway, Some((gateway, 24)), "the bridge holds the gateway DNS listens at");
        assert!(net.endpoints.values().all(|e| e.docker && e.egress.is_none()));
    }
}
