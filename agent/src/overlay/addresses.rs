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

use super::desired::decode_route;
use super::{Error, Hasher, Overlay, ROUTES_TABLE, saved_network};

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
        used
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
