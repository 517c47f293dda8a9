//! Upkeep after definitions or claims change: this host's copies of the
//! definitions kept in step, removals followed, claims that lost or belong
//! to a removed network released, conflicts found and reported once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use netdb::Node;
use netdb::SharedTable;
use netdb::ipam::{self, Claims};
use netdb::netdefs::{NetworkDef, Resolved};
use netdb_dataplane as dp;
use netdb_wire as wire;
use prost::Message;

use super::desired::decode_route;
use super::names::Names;
use super::{ENDPOINTS_TABLE, Overlay, ROUTES_TABLE, endpoint_key, owned_key};

impl Overlay {
    /// Keeps this host's copies of the definitions in step, follows
    /// removals, drops claims that lost or belong to a removed network, and
    /// reports conflicts.
    pub(crate) fn maintain(&mut self, node: &mut Node, now: Duration) {
        self.dirty = false;
        let resolved = Self::resolved(node);
        let mine: BTreeMap<String, (bool, Option<NetworkDef>)> = node
            .shared_entries(SharedTable::NetDefs)
            .into_iter()
            .filter_map(|(k, e)| {
                let (name, owner) = owned_key(k)?;
                (owner == self.me)
                    .then(|| (name.to_string(), (e.deleted, NetworkDef::decode(&e.value))))
            })
            .collect();
        let mut resave = false;
        for (name, eff) in &resolved.networks {
            let in_step = matches!(mine.get(name), Some((false, Some(d))) if d == &eff.def);
            if !in_step {
                let _ = node.put_shared(now, SharedTable::NetDefs, name, eff.def.encode());
            }
            if let Some(saved) = self.state.networks.get_mut(name)
                && (saved.created, saved.origin.as_str()) == eff.def.id()
                && saved.vni != eff.vni
            {
                saved.vni = eff.vni;
                resave = true;
            }
        }
        if resave {
            self.save(node);
        }
        for (name, (deleted, def)) in &mine {
            let gone = def.as_ref().is_some_and(|d| {
                resolved.removed.contains(&(d.name.clone(), d.created, d.origin.clone()))
            });
            if !deleted && gone && !resolved.networks.contains_key(name) {
                let _ = node.delete_shared(now, SharedTable::NetDefs, name);
            }
        }
        self.drop_stale_claims(node, now, &resolved);
        self.withdraw_unknown_endpoints(node, now, &resolved);
        self.readdress_duplicates(node, now, &resolved);
        let names = self.publish_names(node);
        self.find_conflicts(node, &resolved, &names);
        self.save_changed(node);
        self.kernel_changed();
    }

    /// Drops this host's claims that belong to a removed definition, lost
    /// to an older claim, or hold none of our endpoints (any more): blocks
    /// go back to the pool as soon as they are empty, so a host holds only
    /// as many as its endpoints fill.
    fn drop_stale_claims(&mut self, node: &mut Node, now: Duration, resolved: &Resolved) {
        let mut drop: Vec<(String, u32)> = Vec::new();
        // Each network's claims, read once however many of ours it holds.
        let mut claims_of: BTreeMap<&str, Claims> = BTreeMap::new();
        for (key, e) in node.shared_entries(SharedTable::Ipam) {
            let Some((id, owner)) = owned_key(key) else { continue };
            if owner != self.me || e.deleted {
                continue;
            }
            let Some((net, block)) = ipam::parse_claim_id(id) else { continue };
            let Some(eff) = resolved.networks.get(net).filter(|eff| {
                wire::BlockClaim::decode(&e.value[..])
                    .is_ok_and(|c| (c.created, c.origin.as_str()) == eff.def.id())
            }) else {
                drop.push((net.to_string(), block));
                continue;
            };
            let subnet = eff.subnet;
            let in_use = self
                .state
                .endpoints
                .iter()
                .filter(|ep| ep.network == net)
                .map(|ep| ep.ip)
                .chain(self.pending.iter().filter(|((n, _), _)| n == net).map(|(_, p)| p.ip))
                .chain(self.state.reserved.iter().filter(|r| r.network == net).map(|r| r.ip))
                .any(|ip| subnet.block_of(ip) == Some(block));
            let claims = claims_of.entry(net).or_insert_with(|| {
                let def = &eff.def;
                Claims::collect(
                    net,
                    def.id(),
                    subnet.blocks(),
                    node.shared_entries(SharedTable::Ipam),
                )
            });
            let lost = claims.owner(block).is_some_and(|o| o != self.me);
            // The attach that made a claim comes back for it one settle
            // delay later: a fresh claim is not idle yet.
            let fresh = self
                .claimed_at
                .get(&(net.to_string(), block))
                .is_some_and(|at| now < *at + 2 * self.settle);
            if !in_use && (lost || !fresh) {
                drop.push((net.to_string(), block));
            }
        }
        let released = !drop.is_empty();
        for (net, block) in drop {
            let _ = node.delete_shared(now, SharedTable::Ipam, &ipam::claim_id(&net, block));
            self.claimed_at.remove(&(net.clone(), block));
            if let Some(saved) = self.state.networks.get_mut(&net) {
                saved.blocks.remove(&block);
            }
            tracing::info!(network = %net, block, "released an address block claim");
        }
        if released {
            self.save(node);
        }
    }

    /// Deletes entries of this host's endpoints that it does not have: after
    /// a restart that kept the incarnation, peers hand back what the earlier
    /// process wrote, and an endpoint it detached just before it died (saved,
    /// not yet gossiped) would otherwise hold its name and address for ever.
    fn withdraw_unknown_endpoints(&mut self, node: &mut Node, now: Duration, resolved: &Resolved) {
        // Only overlay networks here: a plain network's tables are the
        // user's, whatever their names.
        if !self.enabled() {
            return;
        }
        let known: BTreeSet<(&str, String)> = self
            .state
            .endpoints
            .iter()
            .chain(self.pending.values().map(|p| &p.saved))
            .map(|ep| (ep.network.as_str(), endpoint_key(&self.me, &ep.name)))
            .collect();
        let mut unknown: Vec<(String, &str, String)> = Vec::new();
        for net in node.networks().into_iter().filter(|n| resolved.networks.contains_key(*n)) {
            for table in [ROUTES_TABLE, ENDPOINTS_TABLE] {
                for (key, e) in node.entries(net, table) {
                    if *e.owner == *self.me && !known.contains(&(net, key.to_string())) {
                        unknown.push((net.to_string(), table, key.to_string()));
                    }
                }
            }
        }
        for (net, table, key) in unknown {
            tracing::warn!(network = %net, table, key = %key, "withdrew an endpoint entry this host does not have (written before a restart)");
            let _ = node.delete(now, &net, table, &key);
        }
    }

    /// Moves this host's endpoints off addresses that another endpoint
    /// keeps ([`ipam::keeper`]): a partition, or a borrow racing the
    /// block's owner, gave one address to two endpoints. The keeper's host
    /// does nothing, every other holder's host re-addresses its own, so no
    /// two live endpoints end up sharing an address.
    fn readdress_duplicates(&mut self, node: &mut Node, now: Duration, resolved: &Resolved) {
        let mine: BTreeSet<String> =
            self.state.endpoints.iter().map(|ep| ep.network.clone()).collect();
        // (network, endpoint, the key of the endpoint that keeps its address)
        let mut moves: Vec<(String, String, String)> = Vec::new();
        for net in &mine {
            let Some(eff) = resolved.networks.get(net) else { continue };
            let routes = node.entries(net, ROUTES_TABLE);
            let mut by_ip: BTreeMap<Ipv4Addr, Vec<ipam::Holder<'_>>> = BTreeMap::new();
            for (key, e) in &routes {
                if let Some(r) = decode_route(&e.value) {
                    let holder = ipam::Holder { key, host: &e.owner, ltime: e.ltime };
                    by_ip.entry(r.ip).or_default().push(holder);
                }
            }
            let def = &eff.def;
            let claims = Claims::collect(
                net,
                def.id(),
                eff.subnet.blocks(),
                node.shared_entries(SharedTable::Ipam),
            );
            // Docker addressed its containers itself and would not follow a
            // move: the conflict stays reported, the other holder moves.
            for ep in self.state.endpoints.iter().filter(|ep| ep.network == *net && !ep.docker) {
                let Some(holders) = by_ip.get(&ep.ip).filter(|h| h.len() > 1) else { continue };
                let key = endpoint_key(&self.me, &ep.name);
                if let Some(k) = ipam::keeper(&claims, &eff.subnet, ep.ip, holders)
                    && k.key != key
                    && !self.detaching.contains(&(net.clone(), ep.name.clone()))
                {
                    moves.push((net.clone(), ep.name.clone(), k.key.to_string()));
                }
            }
        }
        for (net, name, kept_by) in moves {
            let Some(eff) = resolved.networks.get(&net) else { continue };
            let used = self.used_addresses(node, &net);
            let ip = match self.allocate(node, now, eff, &used) {
                Ok(Some(ip)) => ip,
                // A block claim is settling: the next pass moves it.
                Ok(None) => {
                    self.dirty = true;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(network = %net, endpoint = %name, error = %e, "cannot re-address an endpoint whose address another keeps");
                    continue;
                }
            };
            let host_ifname = self.host_ifname(&net, &name);
            let Some(ep) =
                self.state.endpoints.iter_mut().find(|ep| ep.network == net && ep.name == name)
            else {
                continue;
            };
            let old = ep.ip;
            ep.ip = ip;
            ep.mac = dp::Mac::from_ipv4(ip).to_string();
            let retired = std::mem::replace(&mut ep.host_ifname, host_ifname);
            let ep = ep.clone();
            self.retired.push(retired);
            if let Err(e) = self.publish(node, now, &ep) {
                tracing::warn!(network = %net, endpoint = %name, error = %e, "cannot publish a re-addressed endpoint");
            }
            self.save(node);
            let text = format!(
                "endpoint {name} of network {net} on {} re-addressed from {old} to {ip}: {kept_by} keeps {old}",
                self.me
            );
            tracing::warn!(network = %net, endpoint = %name, %old, new = %ip, keeper = %kept_by, "endpoint re-addressed");
            self.conflicts_seen += 1;
            self.notices.push((net.clone(), text));
        }
    }

    fn find_conflicts(
        &mut self,
        node: &Node,
        resolved: &Resolved,
        names: &BTreeMap<String, Arc<Names>>,
    ) {
        let mut now: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (net, text) in &resolved.conflicts {
            now.entry(net.clone()).or_default().push(text.clone());
        }
        for (net, eff) in &resolved.networks {
            if let Some(text) = self.vni_misfit(net, eff.vni) {
                now.entry(net.clone()).or_default().push(text);
            }
        }
        for net in node.networks() {
            let Some(eff) = resolved.networks.get(net) else { continue };
            let mut list = Vec::new();
            let claims = Claims::collect(
                net,
                eff.def.id(),
                eff.subnet.blocks(),
                node.shared_entries(SharedTable::Ipam),
            );
            for (block, claimers) in claims.contested() {
                list.push(format!(
                    "address block {block} of network {net} is claimed by {}",
                    claimers.join(" and ")
                ));
            }
            let mut by_ip: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
            for (key, e) in node.entries(net, ROUTES_TABLE) {
                if let Some(r) = decode_route(&e.value) {
                    by_ip.entry(r.ip).or_default().push(key.to_string());
                }
            }
            for (ip, keys) in by_ip.into_iter().filter(|(_, k)| k.len() > 1) {
                list.push(format!(
                    "address {ip} of network {net} is used by {}",
                    keys.join(" and ")
                ));
            }
            if let Some(names) = names.get(net) {
                list.extend(names.conflicts(net));
            }
            list.extend(self.mtu_misfit(net, eff.def.mtu));
            if !list.is_empty() {
                now.entry(net.to_string()).or_default().extend(list);
            }
        }
        for (net, list) in &now {
            for c in list {
                if self.reported.insert(c.clone()) {
                    self.conflicts_seen += 1;
                    tracing::warn!(conflict = %c, "conflict detected");
                    self.notices.push((net.clone(), c.clone()));
                }
            }
        }
        // Forget conflicts that are over, so the set stays as small as
        // the conflicts in force.
        let current: BTreeSet<&String> = now.values().flatten().collect();
        self.reported.retain(|c| current.contains(c));
        self.conflicts = now;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use netdb_dataplane::Mac;

    use super::super::ENDPOINTS_TABLE;
    use super::super::testing::{Temp, TestHost, attach_req, blue, exchange, isolate, pair};
    use super::*;

    #[test]
    fn a_name_defined_twice_is_reported_once() {
        let (da, db) = (Temp::dir("twice-a"), Temp::dir("twice-b"));
        let (a, b) = (TestHost::new("h1", 1, 1, &da.0), TestHost::new("h2", 2, 1, &db.0));
        // Defined on both sides before they meet (a race, a partition).
        a.create("blue", "10.1.0.0/24").unwrap();
        b.create("blue", "10.2.0.0/24").unwrap();
        let (mut a, mut b) = (a.into_parts(), b.into_parts());
        b.node.join(b.now, &[a.node.addr()]);
        exchange(&mut a, &mut b, Duration::from_secs(5));

        assert!(a.overlay.upkeep_due());
        a.overlay.maintain(&mut a.node, a.now);
        let notices = a.overlay.take_notices();
        let text = "network blue was created twice: 10.1.0.0/24 on h1 (kept) and 10.2.0.0/24 on h2 (ignored)";
        assert!(notices.contains(&("blue".to_string(), text.to_string())), "{notices:?}");
        let seen = a.overlay.conflicts_seen();
        let listed = a.overlay.networks(&a.node);
        assert_eq!(listed[0].overlay.as_ref().unwrap().conflicts, [text]);

        a.overlay.maintain(&mut a.node, a.now);
        assert!(a.overlay.take_notices().is_empty(), "reported once");
        assert_eq!(a.overlay.conflicts_seen(), seen);
    }

    #[test]
    fn a_name_taken_on_both_sides_of_a_partition_is_reported_and_kept_by_the_same_endpoint() {
        let nss: Vec<Temp> = (0..4).map(|i| Temp::netns(&format!("split-{i}"))).collect();
        let (_da, _db, a, b) = pair("split", |a| {
            a.attach(attach_req("blue", "one", &nss[0].0)).unwrap();
        });
        b.attach(attach_req("blue", "two", &nss[1].0)).unwrap();
        // Apart long enough for each to declare the other failed; each then
        // attaches "api", which neither can see the other hold.
        for h in [&a, &b] {
            let until = h.now() + Duration::from_secs(30);
            isolate(&mut h.parts(), until);
        }
        a.attach(attach_req("blue", "api", &nss[2].0)).unwrap();
        let alias = super::super::Attach {
            aliases: vec!["API".into()],
            ..attach_req("blue", "api2", &nss[3].0)
        };
        b.attach(alias).unwrap();

        let (mut pa, mut pb) = (a.parts(), b.parts());
        let until = pa.now.max(pb.now) + Duration::from_secs(60);
        exchange(&mut pa, &mut pb, until);
        let mut reports = Vec::new();
        for p in [&mut *pa, &mut *pb] {
            assert!(p.node.get("blue", ENDPOINTS_TABLE, "h1/api").is_some(), "healed");
            assert!(p.node.get("blue", ENDPOINTS_TABLE, "h2/api2").is_some(), "healed");
            p.overlay.maintain(&mut p.node, p.now);
            let notices: Vec<String> = p
                .overlay
                .take_notices()
                .into_iter()
                .filter(|(_, t)| t.starts_with("name "))
                .map(|(_, t)| t)
                .collect();
            let names = Names::from_entries(p.node.entries("blue", ENDPOINTS_TABLE));
            let kept = names.answering("api").unwrap();
            reports.push((notices, kept.host.clone(), kept.endpoint.clone()));
            assert!(p.overlay.conflicts_seen() >= 1);
        }
        // h2 wrote last before the split, so its clock is ahead: h1's
        // endpoint is the older and keeps the name.
        let text = "name api of network blue is held by h1/api and h2/api2 (alias); \
                    h1/api answers for it (the oldest)";
        assert_eq!(reports[0], (vec![text.to_string()], "h1".into(), "api".into()));
        assert_eq!(reports[0], reports[1], "both hosts report and resolve it alike");
        let listed = pa.overlay.networks(&pa.node);
        assert!(listed[0].overlay.as_ref().unwrap().conflicts.contains(&text.to_string()));
    }

    #[test]
    fn two_hosts_publishing_one_address_are_reported() {
        let ((_da, a), db, ns) = (blue("addr-a"), Temp::dir("addr-b"), Temp::netns("addr-ns"));
        let web = a.attach(attach_req("blue", "web", &ns.0)).unwrap();
        let (mut a, mut b) = (a.into_parts(), TestHost::new("h2", 2, 1, &db.0).into_parts());
        // Another host publishes the same address (a bug, or a block both
        // claimed while apart).
        let ip: Ipv4Addr = web.ip.parse().unwrap();
        let route = wire::Route {
            ip: format!("{ip}/24"),
            mac: Mac::from_ipv4(ip).0.to_vec().into(),
            host: "192.0.2.2".into(),
        };
        b.node.join_network(b.now, "blue").unwrap();
        b.node
            .put(b.now, "blue", ROUTES_TABLE, "h2/imposter", Bytes::from(route.encode_to_vec()))
            .unwrap();
        b.node.join(b.now, &[a.node.addr()]);
        exchange(&mut a, &mut b, Duration::from_secs(10));
        assert!(a.node.get("blue", ROUTES_TABLE, "h2/imposter").is_some(), "gossip arrived");

        a.overlay.maintain(&mut a.node, a.now);
        let text = format!("address {ip} of network blue is used by h1/web and h2/imposter");
        assert_eq!(a.overlay.take_notices(), [("blue".to_string(), text)]);
        assert_eq!(a.overlay.conflicts_seen(), 1);
    }

    #[test]
    fn entries_of_an_endpoint_this_host_does_not_have_are_withdrawn() {
        let ((_d, a), ns) = (blue("ghost"), Temp::netns("ghost-ns"));
        let web = a.attach(attach_req("blue", "web", &ns.0)).unwrap();
        let mut a = a.into_parts();
        // What an earlier process wrote and peers handed back: an endpoint
        // it detached (and saved) just before it died.
        let record = Bytes::from_static(b"ghost");
        for table in [ROUTES_TABLE, ENDPOINTS_TABLE] {
            a.node.put(a.now, "blue", table, "h1/gone", record.clone()).unwrap();
        }
        a.overlay.maintain(&mut a.node, a.now);
        for table in [ROUTES_TABLE, ENDPOINTS_TABLE] {
            assert!(a.node.get("blue", table, "h1/gone").is_none(), "{table} withdrawn");
            assert!(a.node.get("blue", table, "h1/web").is_some(), "{table} of web kept");
        }
        assert_eq!(a.overlay.endpoints(&a.node, "blue", true)[0].ip, web.ip);
    }

    #[test]
    fn an_address_given_twice_across_a_partition_is_moved_off_the_younger_holder_after_heal() {
        let nss: Vec<Temp> = (0..3).map(|i| Temp::netns(&format!("dup-{i}"))).collect();
        let (_da, _db, a, b) = pair("dup", |a| {
            a.attach(attach_req("blue", "one", &nss[0].0)).unwrap();
        });
        let two = b.attach(attach_req("blue", "two", &nss[1].0)).unwrap();
        for h in [&a, &b] {
            let until = h.now() + Duration::from_secs(30);
            isolate(&mut h.parts(), until);
        }
        // h1 cannot see h2's endpoint while apart: the address looks free.
        let dup = super::super::Attach {
            ip: Some(two.ip.clone()),
            ..attach_req("blue", "dup", &nss[2].0)
        };
        a.attach(dup).unwrap();
        a.reconcile();

        let (mut ga, mut gb) = (a.parts(), b.parts());
        let (pa, pb) = (&mut *ga, &mut *gb);
        let until = pa.now.max(pb.now) + Duration::from_secs(60);
        exchange(pa, pb, until);
        pb.overlay.maintain(&mut pb.node, pb.now);
        assert!(
            !pb.overlay.take_notices().iter().any(|(_, t)| t.contains("re-addressed")),
            "h2 owns the block: its endpoint keeps the address"
        );
        pa.overlay.maintain(&mut pa.node, pa.now);
        let moved = pa.overlay.find("blue", "dup").unwrap().clone();
        assert_ne!(moved.ip.to_string(), two.ip);
        let text = format!(
            "endpoint dup of network blue on h1 re-addressed from {} to {}: h2/two keeps {}",
            two.ip, moved.ip, two.ip
        );
        assert!(pa.overlay.take_notices().contains(&("blue".to_string(), text)));
        let until = pa.now + Duration::from_secs(10);
        exchange(pa, pb, until);
        for p in [&mut *pa, &mut *pb] {
            let mut ips: Vec<Ipv4Addr> = p
                .node
                .entries("blue", ROUTES_TABLE)
                .into_iter()
                .filter_map(|(_, e)| decode_route(&e.value).map(|r| r.ip))
                .collect();
            assert_eq!(ips.len(), 3);
            ips.sort();
            ips.dedup();
            assert_eq!(ips.len(), 3, "no address held twice on {}", p.overlay.me);
            p.overlay.maintain(&mut p.node, p.now);
            assert!(p.overlay.take_notices().is_empty(), "settled on {}", p.overlay.me);
        }
        drop((ga, gb));
        // The kernel follows: the old veth goes, the endpoint is wired
        // again under its new address.
        let r = a.reconcile();
        assert_eq!(r.failed, 0, "{r:?}");
        let wired = a.kernel.try_lock().unwrap().endpoints();
        let dup_wired: Vec<_> = wired.values().filter(|e| e.netns == nss[2].0).collect();
        assert_eq!(dup_wired.len(), 1);
        assert_eq!((dup_wired[0].ip, &dup_wired[0].host_ifname), (moved.ip, &moved.host_ifname));
    }

    #[test]
    fn the_blocks_of_a_host_that_left_or_stayed_failed_past_the_grace_return_to_the_pool() {
        for departure in ["left", "failed"] {
            let ns = Temp::netns(&format!("gone-{departure}"));
            let (_da, _db, a, b) = pair(&format!("gone-{departure}"), |_| {});
            b.attach(attach_req("blue", "two", &ns.0)).unwrap();
            let (mut pa, mut pb) = (a.parts(), b.parts());
            let until = pa.now.max(pb.now) + Duration::from_secs(10);
            exchange(&mut pa, &mut pb, until);
            let held = |p: &super::super::testing::Parts| {
                p.node
                    .shared_entries(SharedTable::Ipam)
                    .iter()
                    .any(|(k, e)| k.ends_with("/h2") && !e.deleted)
            };
            assert!(held(&pa), "h1 knows h2's claim");
            if departure == "left" {
                let now = pb.now;
                pb.node.leave(now);
                let until = now + Duration::from_secs(5);
                exchange(&mut pa, &mut pb, until);
            } else {
                let grace = netdb::Config::default().failed_grace;
                let until = pa.now + grace + Duration::from_secs(60);
                isolate(&mut pa, until);
            }
            assert!(!held(&pa), "h2's block is free again on h1 after it {departure}");
        }
    }
}
