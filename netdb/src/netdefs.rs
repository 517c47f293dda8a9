//! Network definitions as cluster objects, without a coordinator.
//!
//! Every node keeps its own copy of every definition it knows (cluster table
//! `netdefs`, key `NAME/NODE`), so a network outlives the node that created
//! it. A definition's identity is `(created, origin)`: the creator's Lamport
//! time and name. Two definitions of one name (created concurrently, or on
//! both sides of a partition) resolve to the smaller identity everywhere.
//! VNIs: each definition asks for one (the lowest free from 4096 as its
//! creator saw it); definitions are granted their VNI in identity order, and
//! one that finds its VNI taken gets the lowest free one instead, so every
//! node computes the same mapping from the same copies. Subnets likewise: a
//! definition whose subnet came from a default address pool and overlaps
//! an older network's is granted the next free subnet of that pool instead
//! (one given by the user is kept, and the overlap reported). `network rm` deletes
//! the copy; the tombstone carries the definition, which tells every other
//! node to delete its copy of that identity too.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use netdb_wire as wire;
use prost::Message;

use crate::ipam::{self, Subnet};
use crate::names::{owned_key, valid_name};
use crate::table::Entry;

/// Docker's overlay driver allocates VNIs from 4096 up.
pub const FIRST_VNI: u32 = 4096;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// 1500 minus the 50 bytes of VXLAN encapsulation: the MTU of a network
/// created on a host whose underlay MTU is unknown.
pub const DEFAULT_MTU: u32 = 1450;
/// What VXLAN over IPv4 adds to each packet: outer IPv4 (20), UDP (8),
/// VXLAN (8) and the inner Ethernet header (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Smallest MTU an overlay network may have.
pub const MIN_MTU: u32 = 576;
/// Largest MTU an overlay network may have.
pub const MAX_MTU: u32 = 9000;
/// Longest network name: device and key names are built from it.
pub const MAX_NETWORK_NAME: usize = 64;

/// An overlay network's definition, as each node keeps its copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDef {
    /// The network's name, unique in the cluster.
    pub name: String,
    /// Its subnet.
    pub subnet: Subnet,
    /// The VNI it asked for (the one granted may differ: see [`Effective`]).
    pub vni: u32,
    /// The MTU of its devices.
    pub mtu: u32,
    /// The node that created it.
    pub origin: String,
    /// The creator's Lamport time at creation: with `origin`, its identity.
    pub created: u64,
    /// No way out of the overlay (no gateway, default route or published
    /// ports), the same on every host.
    pub internal: bool,
    /// The default address pool `subnet` was taken from; `None` when the
    /// user gave it.
    pub pool: Option<Subnet>,
}

/// A definition's identity: (created, origin); the older one wins a name.
pub type DefId<'a> = (u64, &'a str);

impl NetworkDef {
    /// This definition's identity.
    pub fn id(&self) -> DefId<'_> {
        (self.created, &self.origin)
    }

    /// The definition as stored in the cluster table.
    pub fn encode(&self) -> Bytes {
        wire::NetworkDef {
            name: self.name.clone(),
            subnet: self.subnet.to_string(),
            vni: self.vni,
            mtu: self.mtu,
            origin: self.origin.clone(),
            created: self.created,
            internal: self.internal,
            pool: self.pool.map(|p| p.to_string()).unwrap_or_default(),
        }
        .encode_to_vec()
        .into()
    }

    /// A definition read off the network; `None` unless every field is in
    /// bounds.
    pub fn decode(bytes: &[u8]) -> Option<NetworkDef> {
        let w = wire::NetworkDef::decode(bytes).ok()?;
        let ok = valid_name(&w.name, MAX_NETWORK_NAME)
            && (FIRST_VNI..=MAX_VNI).contains(&w.vni)
            && (MIN_MTU..=MAX_MTU).contains(&w.mtu)
            && !w.origin.is_empty()
            && w.created > 0;
        ok.then_some(())?;
        let pool = match w.pool.as_str() {
            "" => None,
            text => Some(text.parse().ok()?),
        };
        Some(NetworkDef {
            pool,
            subnet: w.subnet.parse().ok()?,
            name: w.name,
            vni: w.vni,
            mtu: w.mtu,
            origin: w.origin,
            created: w.created,
            internal: w.internal,
        })
    }
}

/// A definition in force and the VNI and subnet it was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// The definition.
    pub def: NetworkDef,
    /// The VNI granted: its own, or the lowest free one if taken by an older
    /// definition.
    pub vni: u32,
    /// The subnet granted: its own, or for a pool subnet that overlaps an
    /// older network's, the next free one of the pool.
    pub subnet: Subnet,
}

/// What every node derives from the same copies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Networks in force, by name.
    pub networks: BTreeMap<String, Effective>,
    /// Definitions that were removed (`network rm`), as (name, created,
    /// origin).
    pub removed: BTreeSet<(String, u64, String)>,
    /// Human-readable conflicts by network: names defined twice, VNIs
    /// asked twice.
    pub conflicts: Vec<(String, String)>,
}

impl Resolved {
    /// Resolves the `netdefs` table's copies (tombstones included).
    pub fn from_copies<'a>(copies: impl IntoIterator<Item = (&'a str, &'a Entry)>) -> Resolved {
        let mut out = Resolved::default();
        let mut candidates: BTreeMap<String, BTreeMap<(u64, String), NetworkDef>> = BTreeMap::new();
        for (key, e) in copies {
            let Some(def) = NetworkDef::decode(&e.value) else { continue };
            if owned_key(key).map(|(name, _)| name) != Some(def.name.as_str()) {
                continue;
            }
            if e.deleted {
                out.removed.insert((def.name.clone(), def.created, def.origin.clone()));
            } else if !e.hidden {
                candidates
                    .entry(def.name.clone())
                    .or_default()
                    .insert((def.created, def.origin.clone()), def);
            }
        }
        let mut winners: Vec<NetworkDef> = Vec::new();
        for (name, defs) in candidates {
            let mut live = defs
                .into_iter()
                .filter(|((c, o), _)| !out.removed.contains(&(name.clone(), *c, o.clone())));
            let Some((_, winner)) = live.next() else { continue };
            for (_, other) in live {
                out.conflicts.push((
                    name.clone(),
                    format!(
                        "network {name} was created twice: {} on {} (kept) and {} on {} (ignored)",
                        winner.subnet, winner.origin, other.subnet, other.origin
                    ),
                ));
            }
            winners.push(winner);
        }
        winners.sort_by(|a, b| a.id().cmp(&b.id()));
        let mut used: BTreeSet<u32> = BTreeSet::new();
        let mut granted: Vec<(Subnet, String)> = Vec::new();
        for def in winners {
            let subnet = grant_subnet(&def, &granted, &mut out.conflicts);
            granted.push((subnet, def.name.clone()));
            let vni = if used.contains(&def.vni) {
                let vni = lowest_free(&used);
                out.conflicts.push((
                    def.name.clone(),
                    format!(
                        "network {} asked for VNI {}, already granted to an older network; it uses {vni}",
                        def.name, def.vni
                    ),
                ));
                vni
            } else {
                def.vni
            };
            used.insert(vni);
            out.networks.insert(def.name.clone(), Effective { def, vni, subnet });
        }
        out
    }

    /// A network in force whose subnet overlaps `subnet`, with its subnet.
    pub fn overlapping(&self, subnet: &Subnet) -> Option<(&str, Subnet)> {
        self.networks
            .values()
            .find(|e| e.subnet.overlaps(subnet))
            .map(|e| (e.def.name.as_str(), e.subnet))
    }

    /// The subnets of the networks in force.
    pub fn subnets(&self) -> Vec<Subnet> {
        self.networks.values().map(|e| e.subnet).collect()
    }

    /// The VNI a new network should ask for: the lowest free one of
    /// `range`; `None` when all are taken.
    pub fn next_vni(&self, range: VniRange) -> Option<u32> {
        let used: BTreeSet<u32> = self.networks.values().map(|e| e.vni).collect();
        (range.first..=range.last).find(|v| !used.contains(v))
    }

    /// The network that holds `vni`, if any.
    pub fn vni_in_use(&self, vni: u32) -> Option<&str> {
        self.networks.values().find(|e| e.vni == vni).map(|e| e.def.name.as_str())
    }
}

/// The MTU a network created on a host with underlay MTU `underlay` gets:
/// the largest that underlay carries, within the bounds a definition takes.
/// The definition carries it, so every host uses the creator's figure
/// (hosts never derive their own and disagree); a host whose underlay is
/// smaller reports the misfit.
pub fn overlay_mtu(underlay: u32) -> u32 {
    underlay.saturating_sub(VXLAN_OVERHEAD).clamp(MIN_MTU, MAX_MTU)
}

/// True when an underlay of MTU `underlay` carries a network of MTU `mtu`.
pub fn mtu_fits(mtu: u32, underlay: u32) -> bool {
    mtu + VXLAN_OVERHEAD <= underlay
}

/// The VNIs this host's networks may have (`--vni-range`). Every host
/// must be given the same range: a network is created with a VNI of its
/// creator's range, and a host whose range does not hold a network's VNI
/// refuses to attach endpoints to it and reports why. A VNI asked twice
/// is re-granted from [`FIRST_VNI`] up whatever the ranges (every host
/// must compute the same grant), so with a range that starts higher such
/// a network is reported too; recreating it gets a VNI of the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VniRange {
    /// The lowest VNI.
    pub first: u32,
    /// The highest VNI.
    pub last: u32,
}

impl Default for VniRange {
    /// Docker's: 4096 up to the largest 24-bit VNI.
    fn default() -> VniRange {
        VniRange { first: FIRST_VNI, last: MAX_VNI }
    }
}

impl VniRange {
    /// True when `vni` is in the range.
    pub fn contains(&self, vni: u32) -> bool {
        (self.first..=self.last).contains(&vni)
    }
}

impl std::fmt::Display for VniRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl std::str::FromStr for VniRange {
    type Err = String;

    /// `FIRST-LAST`, within 4096-16777215.
    fn from_str(s: &str) -> Result<VniRange, String> {
        let bad =
            || format!("invalid VNI range {s:?}: use FIRST-LAST within {FIRST_VNI}-{MAX_VNI}");
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let first: u32 = a.trim().parse().map_err(|_| bad())?;
        let last: u32 = b.trim().parse().map_err(|_| bad())?;
        if first < FIRST_VNI || last > MAX_VNI || first > last {
            return Err(bad());
        }
        Ok(VniRange { first, last })
    }
}

/// The subnet `def` is granted given the older networks' grants: its own,
/// unless it overlaps one of them; then for a pool subnet the next free of
/// the pool (its own kept, and the overlap reported, when the pool is full
/// or the user gave the subnet).
fn grant_subnet(
    def: &NetworkDef,
    older: &[(Subnet, String)],
    conflicts: &mut Vec<(String, String)>,
) -> Subnet {
    let Some((other_subnet, other)) = older.iter().find(|(s, _)| s.overlaps(&def.subnet)) else {
        return def.subnet;
    };
    let taken: Vec<Subnet> = older.iter().map(|(s, _)| *s).collect();
    let name = &def.name;
    let picked =
        def.pool.and_then(|pool| ipam::pick_subnet(&pool, def.subnet.prefix(), name, &taken).ok());
    let text = match picked {
        Some(s) => format!(
            "network {name} took {} from its pool, which overlaps network {other} ({other_subnet}), created before it; it uses {s}",
            def.subnet
        ),
        None => format!(
            "network {name} ({}) overlaps network {other} ({other_subnet}), created before it",
            def.subnet
        ),
    };
    conflicts.push((name.clone(), text));
    picked.unwrap_or(def.subnet)
}

fn lowest_free(used: &BTreeSet<u32>) -> u32 {
    (FIRST_VNI..=MAX_VNI).find(|v| !used.contains(v)).unwrap_or(MAX_VNI)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, subnet: &str, vni: u32, origin: &str, created: u64) -> NetworkDef {
        NetworkDef {
            name: name.into(),
            subnet: subnet.parse().unwrap(),
            vni,
            mtu: DEFAULT_MTU,
            origin: origin.into(),
            created,
            internal: false,
            pool: None,
        }
    }

    #[test]
    fn internal_travels_with_the_definition_and_defaults_to_off() {
        let blue = NetworkDef { internal: true, ..def("blue", "10.1.0.0/24", 4096, "a", 5) };
        assert_eq!(NetworkDef::decode(&blue.encode()), Some(blue.clone()));
        // A definition from an agent that knows no `internal` field.
        let mut old = wire::NetworkDef::decode(&blue.encode()[..]).unwrap();
        old.internal = false;
        let old = NetworkDef::decode(&old.encode_to_vec()).unwrap();
        assert!(!old.internal);
    }

    fn copy(holder: &str, d: &NetworkDef, deleted: bool) -> (String, Entry) {
        let e = Entry {
            value: d.encode(),
            owner: holder.into(),
            incarnation: 1,
            ltime: 1,
            deleted,
            reap_at: None,
            hidden: false,
        };
        (format!("{}/{holder}", d.name), e)
    }

    fn resolve(copies: &[(String, Entry)]) -> Resolved {
        Resolved::from_copies(copies.iter().map(|(k, e)| (k.as_str(), e)))
    }

    #[test]
    fn a_vni_range_parses_bounded_and_new_networks_take_its_lowest_free_vni() {
        let r: VniRange = "5000-5001".parse().unwrap();
        assert_eq!((r.first, r.last, r.to_string()), (5000, 5001, "5000-5001".to_string()));
        assert!(r.contains(5000) && r.contains(5001) && !r.contains(4999) && !r.contains(5002));
        for bad in ["", "5000", "4095-5000", "5000-16777216", "5001-5000", "a-b", "5000-"] {
            assert!(bad.parse::<VniRange>().is_err(), "{bad}");
        }
        assert_eq!(VniRange::default().to_string(), "4096-16777215");
        let copies = vec![copy("h1", &def("a", "10.1.0.0/24", 5000, "h1", 1), false)];
        let resolved = resolve(&copies);
        assert_eq!(resolved.next_vni(r), Some(5001));
        assert_eq!(resolved.next_vni(VniRange { first: 5000, last: 5000 }), None, "full");
        assert_eq!(resolved.next_vni(VniRange::default()), Some(4096));
    }

    #[test]
    fn the_mtu_default_is_the_underlays_less_vxlan_within_bounds() {
        assert_eq!(overlay_mtu(1500), 1450);
        assert_eq!(overlay_mtu(9001), 8951);
        assert_eq!(overlay_mtu(1400), 1350);
        assert_eq!(overlay_mtu(65535), MAX_MTU);
        assert_eq!(overlay_mtu(600), MIN_MTU, "the smallest a definition takes");
        assert!(!mtu_fits(overlay_mtu(600), 600), "and reported as a misfit");
        assert!(mtu_fits(1450, 1500) && !mtu_fits(1451, 1500));
    }

    #[test]
    fn the_older_definition_of_a_name_wins_in_any_order() {
        let a = def("blue", "10.1.0.0/24", 4096, "a", 5);
        let b = def("blue", "10.2.0.0/24", 4096, "b", 3);
        let mut copies = vec![copy("a", &a, false), copy("b", &b, false), copy("c", &a, false)];
        let r1 = resolve(&copies);
        copies.reverse();
        let r2 = resolve(&copies);
        assert_eq!(r1, r2);
        assert_eq!(r1.networks["blue"].def, b);
        assert_eq!(r1.conflicts.len(), 1, "{:?}", r1.conflicts);
    }

    #[test]
    fn a_vni_asked_twice_goes_to_the_older_network() {
        let red = def("red", "10.1.0.0/24", 4096, "a", 5);
        let green = def("green", "10.2.0.0/24", 4096, "b", 4);
        let other = def("other", "10.3.0.0/24", 4097, "c", 9);
        let r =
            resolve(&[copy("a", &red, false), copy("b", &green, false), copy("c", &other, false)]);
        assert_eq!(r.networks["green"].vni, 4096);
        assert_eq!(r.networks["red"].vni, 4097);
        // `other` asked for 4097 too but is younger than red.
        assert_eq!(r.networks["other"].vni, 4098);
        assert_eq!(r.next_vni(VniRange::default()), Some(4099));
        assert_eq!(r.conflicts.len(), 2, "{:?}", r.conflicts);
    }

    #[test]
    fn a_removal_tombstone_removes_every_copy_of_that_identity_only() {
        let old = def("blue", "10.1.0.0/24", 4096, "a", 5);
        let new = def("blue", "10.9.0.0/24", 4096, "b", 8);
        let r = resolve(&[copy("a", &old, true), copy("c", &old, false)]);
        assert!(r.networks.is_empty());
        assert!(r.removed.contains(&("blue".to_string(), 5, "a".to_string())));
        let r = resolve(&[copy("a", &old, true), copy("c", &old, false), copy("b", &new, false)]);
        assert_eq!(r.networks["blue"].def, new);
        assert!(r.conflicts.is_empty());
    }

    #[test]
    fn malformed_copies_are_ignored() {
        let good = def("blue", "10.1.0.0/24", 4096, "a", 5);
        let mut bad_vni = copy("a", &def("red", "10.1.0.0/24", 7, "a", 5), false);
        bad_vni.0 = "red/a".into();
        let wrong_key = ("green/a".to_string(), copy("a", &good, false).1);
        let garbage = (
            "x/a".to_string(),
            Entry { value: Bytes::from_static(b"\xff\xff"), ..copy("a", &good, false).1 },
        );
        let r = resolve(&[bad_vni, wrong_key, garbage]);
        assert!(r.networks.is_empty());
    }

    #[test]
    fn a_pool_subnet_overlapping_an_older_network_gets_the_next_free_one_everywhere() {
        let pool: Subnet = "10.5.0.0/22".parse().unwrap();
        let from_pool = |name: &str, origin: &str, created: u64, taken: &[Subnet]| NetworkDef {
            subnet: ipam::pick_subnet(&pool, 24, name, taken).unwrap(),
            pool: Some(pool),
            ..def(name, "10.9.9.0/24", 4096, origin, created)
        };
        // Created at once on two hosts, each blind to the other's: both may
        // take the same /24; here they do by construction.
        let blue = from_pool("blue", "a", 5, &[]);
        let red = NetworkDef { subnet: blue.subnet, ..from_pool("red", "b", 6, &[]) };
        let mut copies = vec![copy("a", &blue, false), copy("b", &red, false)];
        let r1 = resolve(&copies);
        copies.reverse();
        assert_eq!(resolve(&copies), r1, "the same on every node");
        assert_eq!(r1.networks["blue"].subnet, blue.subnet, "the older keeps it");
        let moved = r1.networks["red"].subnet;
        assert!(!moved.overlaps(&blue.subnet) && pool.overlaps(&moved), "{moved}");
        assert_eq!(r1.networks["red"].def.subnet, blue.subnet, "the copies are unchanged");
        let text = format!(
            "network red took {} from its pool, which overlaps network blue ({}), created before it; it uses {moved}",
            blue.subnet, blue.subnet
        );
        assert!(r1.conflicts.contains(&("red".to_string(), text)), "{:?}", r1.conflicts);
        assert_eq!(r1.overlapping(&"10.5.0.0/16".parse().unwrap()).map(|(n, _)| n), Some("blue"));
        assert_eq!(r1.overlapping(&"10.6.0.0/24".parse().unwrap()), None);

        // A subnet the user gave is kept, and the overlap reported.
        let green = def("green", "10.5.0.0/16", 4097, "c", 9);
        let r = resolve(&[copy("a", &blue, false), copy("c", &green, false)]);
        assert_eq!(r.networks["green"].subnet, green.subnet);
        let text = format!(
            "network green (10.5.0.0/16) overlaps network blue ({}), created before it",
            blue.subnet
        );
        assert!(r.conflicts.contains(&("green".to_string(), text)), "{:?}", r.conflicts);
    }
}
