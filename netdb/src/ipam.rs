//! Address allocation without a central allocator.
//!
//! A network's subnet is cut into small equal blocks (4 to 16 addresses,
//! at least 64 blocks where the subnet allows). A node hands out addresses
//! from blocks it claims in the cluster table `ipam` (key `NET:BLOCK/NODE`,
//! one copy per claimer), claiming another block when its blocks are full.
//! A node claims a block nobody claims, starting its search at a position
//! derived from its name so that nodes rarely race for the same block, and
//! uses it only after the claim has had time to spread (the agent's settle
//! delay). When two claims for one block exist anyway (a race, or a
//! partition), the older claim (smaller Lamport time, then name) owns the
//! block; the other claimer stops allocating there. When every block is
//! claimed, a node borrows a free address of another's block
//! ([`borrow`]); an address held twice (a race, a partition) is kept by
//! the endpoint [`keeper`] names, the same on every node, and the others
//! are re-addressed by their hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use bytes::Bytes;
use netdb_wire as wire;
use prost::Message;

use crate::hash::Hasher;
use crate::names::owned_key;
use crate::table::Entry;

/// Smallest prefix a network's subnet may have.
pub const MIN_PREFIX: u8 = 8;
/// Largest prefix a network's subnet may have.
pub const MAX_PREFIX: u8 = 30;

/// Docker swarm's default address pool, 10.0.0.0/8 ...
pub const DEFAULT_POOL: Subnet = Subnet { base: 0x0a00_0000, prefix: 8 };
/// ... and the prefix of the subnets it hands out.
pub const DEFAULT_POOL_SIZE: u8 = 24;

/// An IPv4 subnet with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subnet {
    base: u32,
    prefix: u8,
}

/// Why a subnet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// Not an IPv4 CIDR.
    #[error("invalid subnet {0:?}: write an IPv4 CIDR such as 10.10.0.0/24")]
    Syntax(String),
    /// Prefix outside [`MIN_PREFIX`]..=[`MAX_PREFIX`].
    #[error("subnet {0}: the prefix must be /{MIN_PREFIX} to /{MAX_PREFIX}")]
    Prefix(String),
    /// Host bits set; `fixed` is the subnet meant.
    #[error("subnet {given} has host bits set; did you mean {fixed}?")]
    HostBits {
        /// The subnet as written.
        given: String,
        /// The subnet with the host bits cleared.
        fixed: Subnet,
    },
    /// In 0/8, 127/8, multicast or above.
    #[error("subnet {0} is in a reserved range (0/8, 127/8, multicast or above)")]
    Reserved(String),
}

impl FromStr for Subnet {
    type Err = SubnetError;

    fn from_str(s: &str) -> Result<Subnet, SubnetError> {
        let syntax = || SubnetError::Syntax(s.into());
        let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(SubnetError::Prefix(s.into()));
        }
        let fixed = Subnet { base: u32::from(addr) & mask(prefix), prefix };
        if fixed.base != u32::from(addr) {
            return Err(SubnetError::HostBits { given: s.into(), fixed });
        }
        let first = addr.octets()[0];
        if first == 0 || first == 127 || first >= 224 {
            return Err(SubnetError::Reserved(s.into()));
        }
        Ok(fixed)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

impl Subnet {
    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True if `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.base
    }

    fn broadcast(&self) -> u32 {
        self.base | !mask(self.prefix)
    }

    /// The subnet of `ip` with `prefix` bits (host bits cleared).
    pub fn containing(ip: Ipv4Addr, prefix: u8) -> Result<Subnet, SubnetError> {
        let base = u32::from(ip) & mask(prefix.min(32));
        format!("{}/{prefix}", Ipv4Addr::from(base)).parse()
    }

    /// True if the two share an address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let m = mask(self.prefix.min(other.prefix));
        self.base & m == other.base & m
    }

    /// The gateway address, reserved like Docker does (first host address).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// True for an address endpoints may use: inside, and not the network,
    /// gateway or broadcast address.
    pub fn usable(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        self.contains(ip) && v != self.base && v != self.base + 1 && v != self.broadcast()
    }

    /// Block prefix: at least 64 blocks per subnet where it allows (a /24
    /// serves 64 hosts before any borrows), blocks of 4 to 16 addresses (a
    /// claim per 16 endpoints at most; claims exist only for blocks in use,
    /// so a large subnet costs nothing for its many blocks).
    fn block_prefix(&self) -> u8 {
        (self.prefix + 6).clamp(28, 30)
    }

    /// Address blocks the subnet is cut into.
    pub fn blocks(&self) -> u32 {
        1 << (self.block_prefix() - self.prefix)
    }

    fn block_len(&self) -> u32 {
        1 << (32 - u32::from(self.block_prefix()))
    }

    /// The block an address of this subnet falls in.
    pub fn block_of(&self, ip: Ipv4Addr) -> Option<u32> {
        self.contains(ip).then(|| (u32::from(ip) - self.base) / self.block_len())
    }

    /// Usable addresses of a block, in order.
    pub fn block_addrs(&self, block: u32) -> impl Iterator<Item = Ipv4Addr> + '_ {
        // u64: the last block of a subnet may end at 255.255.255.255.
        let len = u64::from(self.block_len());
        let start = u64::from(self.base) + u64::from(block.min(self.blocks() - 1)) * len;
        (start..start + len).map(|v| Ipv4Addr::from(v as u32)).filter(|ip| self.usable(*ip))
    }
}

/// Why a default address pool gave no subnet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The size does not fit the pool.
    #[error("default address pool {pool}: subnets of /{size} do not fit; the size must be /{}../{MAX_PREFIX}", pool.prefix)]
    Size {
        /// The pool.
        pool: Subnet,
        /// The prefix asked for.
        size: u8,
    },
    /// Every subnet of the pool overlaps a network or a route.
    #[error(
        "default address pool {pool} has no free /{size} left; give --subnet, or a larger pool (--default-address-pool)"
    )]
    Exhausted {
        /// The pool.
        pool: Subnet,
        /// The prefix asked for.
        size: u8,
    },
}

/// A /`size` of `pool` that overlaps none of `taken`: the first free one at
/// or after a position derived from `name` (so that networks created at
/// once rarely pick the same), wrapping around.
pub fn pick_subnet(
    pool: &Subnet,
    size: u8,
    name: &str,
    taken: &[Subnet],
) -> Result<Subnet, PoolError> {
    if !(pool.prefix..=MAX_PREFIX).contains(&size) {
        return Err(PoolError::Size { pool: *pool, size });
    }
    let count = 1u64 << (size - pool.prefix);
    let step = 1u64 << (32 - size);
    let start = Hasher::default().bytes(name.as_bytes()).finish() % count;
    (0..count)
        .map(|i| Subnet { base: pool.base + (((start + i) % count) * step) as u32, prefix: size })
        .find(|s| !taken.iter().any(|t| t.overlaps(s)))
        .ok_or(PoolError::Exhausted { pool: *pool, size })
}

/// The id of a block claim, before the claimer's `/NODE`.
pub fn claim_id(network: &str, block: u32) -> String {
    format!("{network}:{block}")
}

/// Splits a claim id into (network, block).
pub fn parse_claim_id(id: &str) -> Option<(&str, u32)> {
    let (net, block) = id.rsplit_once(':')?;
    Some((net, block.parse().ok()?))
}

/// A claim's value: the network definition it belongs to.
pub fn encode_claim(origin: &str, created: u64) -> Bytes {
    wire::BlockClaim { origin: origin.into(), created }.encode_to_vec().into()
}

/// The live claims of one network (one definition of it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Claimers of each block, oldest claim first.
    blocks: BTreeMap<u32, Vec<(u64, String)>>,
}

impl Claims {
    /// Collects the live claims of `network` made for the definition
    /// `(created, origin)` from the `ipam` table's copies. Claims of a
    /// failed node count until it is forgotten: it may come back with
    /// endpoints in those blocks.
    pub fn collect<'a>(
        network: &str,
        def_id: (u64, &str),
        blocks: u32,
        copies: impl IntoIterator<Item = (&'a str, &'a Entry)>,
    ) -> Claims {
        let mut out = Claims::default();
        for (key, e) in copies {
            if e.deleted {
                continue;
            }
            let Some((id, node)) = owned_key(key) else { continue };
            let Some((net, block)) = parse_claim_id(id) else { continue };
            if net != network || block >= blocks {
                continue;
            }
            let Ok(claim) = wire::BlockClaim::decode(&e.value[..]) else { continue };
            if (claim.created, claim.origin.as_str()) != def_id {
                continue;
            }
            out.blocks.entry(block).or_default().push((e.ltime, node.to_string()));
        }
        for v in out.blocks.values_mut() {
            v.sort();
        }
        out
    }

    /// The node that owns a block: the oldest claim.
    pub fn owner(&self, block: u32) -> Option<&str> {
        self.blocks.get(&block).and_then(|v| v.first()).map(|(_, n)| n.as_str())
    }

    /// Blocks `node` claims, whether or not it owns them.
    pub fn claimed_by<'a>(&'a self, node: &'a str) -> impl Iterator<Item = u32> + 'a {
        self.blocks.iter().filter(move |(_, v)| v.iter().any(|(_, n)| n == node)).map(|(b, _)| *b)
    }

    /// Blocks `node` owns.
    pub fn owned_by<'a>(&'a self, node: &'a str) -> impl Iterator<Item = u32> + 'a {
        self.blocks.keys().copied().filter(move |b| self.owner(*b) == Some(node))
    }

    /// How old `node`'s claim of `block` is among the block's claims: 0 for
    /// the owner; `None` without a claim.
    pub fn rank(&self, block: u32, node: &str) -> Option<usize> {
        self.blocks.get(&block)?.iter().position(|(_, n)| n == node)
    }

    /// Blocks with more than one claimer, with the claimers, owner first.
    pub fn contested(&self) -> impl Iterator<Item = (u32, Vec<&str>)> + '_ {
        self.blocks
            .iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(b, v)| (*b, v.iter().map(|(_, n)| n.as_str()).collect()))
    }

    /// A block nobody claims with at least one usable address, searched
    /// from a position derived from `node` so that different nodes start
    /// in different places.
    pub fn free_block(&self, subnet: &Subnet, node: &str) -> Option<u32> {
        let n = subnet.blocks();
        let start = (Hasher::default().bytes(node.as_bytes()).finish() % u64::from(n)) as u32;
        (0..n)
            .map(|i| (start + i) % n)
            .find(|b| !self.blocks.contains_key(b) && subnet.block_addrs(*b).next().is_some())
    }
}

/// A usable address not in `used` from anywhere in the subnet, for a node
/// that finds every block claimed: the first at or after a position derived
/// from `node` (so that borrowers spread out), wrapping around. A borrowed
/// address may race with its block's owner; [`keeper`] settles that.
pub fn borrow(subnet: &Subnet, node: &str, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let size = u64::from(!mask(subnet.prefix)) + 1;
    let start = Hasher::default().bytes(node.as_bytes()).finish() % size;
    // At most |used| + 3 steps: every address skipped is used or reserved.
    (0..size)
        .map(|i| Ipv4Addr::from(subnet.base + ((start + i) % size) as u32))
        .find(|ip| subnet.usable(*ip) && !used.contains(ip))
}

/// An endpoint holding an address, as its routing entry shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder<'a> {
    /// The entry's key (`HOST/NAME`).
    pub key: &'a str,
    /// The host that published it.
    pub host: &'a str,
    /// The entry's Lamport time.
    pub ltime: u64,
}

/// Which of several endpoints holding one address keeps it: the one whose
/// host has the oldest claim of the address's block (the rule that decides
/// block ownership); among hosts without a claim (borrowers), the oldest
/// entry, then the smallest key. Every node decides alike from the same
/// tables, so exactly one endpoint keeps the address.
pub fn keeper<'a>(
    claims: &Claims,
    subnet: &Subnet,
    ip: Ipv4Addr,
    holders: &[Holder<'a>],
) -> Option<Holder<'a>> {
    let block = subnet.block_of(ip);
    holders.iter().copied().min_by_key(|h| {
        let rank = block.and_then(|b| claims.rank(b, h.host)).unwrap_or(usize::MAX);
        (rank, h.ltime, h.key)
    })
}

/// The lowest usable address of `blocks` not in `used`.
pub fn allocate(
    subnet: &Subnet,
    blocks: impl IntoIterator<Item = u32>,
    used: &BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    blocks.into_iter().find_map(|b| subnet.block_addrs(b).find(|ip| !used.contains(ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(ltime: u64, owner: &str, origin: &str, created: u64) -> Entry {
        Entry {
            value: encode_claim(origin, created),
            owner: owner.into(),
            incarnation: 1,
            ltime,
            deleted: false,
            reap_at: None,
            hidden: false,
        }
    }

    #[test]
    fn subnets_parse_strictly() {
        let s: Subnet = "10.10.0.0/24".parse().unwrap();
        assert_eq!(s.to_string(), "10.10.0.0/24");
        assert_eq!(s.blocks(), 64);
        assert!(matches!("10.10.0.1/24".parse::<Subnet>(), Err(SubnetError::HostBits { .. })));
        assert!("10.10.0.0/31".parse::<Subnet>().is_err());
        assert!("10.10.0.0".parse::<Subnet>().is_err());
        assert!("fd00::/64".parse::<Subnet>().is_err());
        for reserved in ["127.0.0.0/8", "0.0.0.0/8", "224.0.0.0/24", "255.255.255.0/24"] {
            assert!(
                matches!(reserved.parse::<Subnet>(), Err(SubnetError::Reserved(_))),
                "{reserved}"
            );
        }
        // The top of the unicast space: no overflow at the last block.
        let top: Subnet = "223.255.255.0/24".parse().unwrap();
        let last: Vec<_> = top.block_addrs(top.blocks() - 1).collect();
        assert_eq!(last.last(), Some(&Ipv4Addr::new(223, 255, 255, 254)));
        let big: Subnet = "10.0.0.0/16".parse().unwrap();
        assert_eq!((big.blocks(), big.block_len()), (4096, 16));
        let wide: Subnet = "10.0.0.0/8".parse().unwrap();
        assert_eq!((wide.blocks(), wide.block_len()), (1 << 20, 16));
        let mid: Subnet = "10.0.0.0/22".parse().unwrap();
        assert_eq!((mid.blocks(), mid.block_len()), (64, 16));
        let tiny: Subnet = "10.0.0.0/30".parse().unwrap();
        assert_eq!(tiny.blocks(), 1);
        let usable: Vec<_> = tiny.block_addrs(0).collect();
        assert_eq!(usable, vec![Ipv4Addr::new(10, 0, 0, 2)]);
    }

    #[test]
    fn reserved_addresses_are_never_allocated() {
        let s: Subnet = "10.1.0.0/24".parse().unwrap();
        let first = allocate(&s, [0], &BTreeSet::new()).unwrap();
        assert_eq!(first, Ipv4Addr::new(10, 1, 0, 2));
        let last: Vec<_> = s.block_addrs(63).collect();
        assert_eq!(last.last(), Some(&Ipv4Addr::new(10, 1, 0, 254)));
        let used: BTreeSet<_> = s.block_addrs(3).collect();
        assert_eq!(allocate(&s, [3], &used), None);
        assert_eq!(allocate(&s, [3, 4], &used), Some(Ipv4Addr::new(10, 1, 0, 16)));
    }

    #[test]
    fn oldest_claim_owns_a_block_and_contests_are_listed() {
        let s: Subnet = "10.1.0.0/24".parse().unwrap();
        let copies = [
            ("blue:3/b".to_string(), claim(7, "b", "a", 1)),
            ("blue:3/a".to_string(), claim(9, "a", "a", 1)),
            ("blue:4/a".to_string(), claim(2, "a", "a", 1)),
            // Another definition of the same name, another network's block.
            ("blue:5/c".to_string(), claim(1, "c", "z", 1)),
            ("red:6/c".to_string(), claim(1, "c", "a", 1)),
            ("blue:99/c".to_string(), claim(1, "c", "a", 1)),
        ];
        let claims = Claims::collect(
            "blue",
            (1, "a"),
            s.blocks(),
            copies.iter().map(|(k, e)| (k.as_str(), e)),
        );
        assert_eq!(claims.owner(3), Some("b"));
        assert_eq!(claims.owner(5), None);
        assert_eq!(claims.owned_by("a").collect::<Vec<_>>(), vec![4]);
        assert_eq!(claims.claimed_by("a").collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(claims.contested().collect::<Vec<_>>(), vec![(3, vec!["b", "a"])]);
        let free = claims.free_block(&s, "a").unwrap();
        assert!(free != 3 && free != 4);
    }

    #[test]
    fn nodes_start_their_search_in_different_places() {
        let s: Subnet = "10.0.0.0/16".parse().unwrap();
        let starts: BTreeSet<u32> = (0..20)
            .map(|i| Claims::default().free_block(&s, &format!("host{i}")).unwrap())
            .collect();
        assert!(starts.len() >= 18, "{starts:?}");
    }

    #[test]
    fn a_slash_24_serves_forty_hosts_with_two_endpoints_each_from_their_own_blocks() {
        let s: Subnet = "10.1.0.0/24".parse().unwrap();
        let mut claims = Claims::default();
        let mut used = BTreeSet::new();
        for h in 0..40 {
            let node = format!("host{h}");
            let block = claims.free_block(&s, &node).expect("a free block for every host");
            claims.blocks.insert(block, vec![(h, node.clone())]);
            for _ in 0..2 {
                let ip = allocate(&s, claims.owned_by(&node), &used).expect("an address");
                assert!(used.insert(ip), "{ip} handed out twice");
            }
        }
        assert_eq!(used.len(), 80);
        assert!(used.iter().all(|ip| s.usable(*ip)));
    }

    #[test]
    fn with_every_block_claimed_a_host_borrows_until_the_subnet_is_full() {
        let s: Subnet = "10.1.0.0/26".parse().unwrap();
        let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
        // 61 usable addresses: the 17th host onwards borrows them all.
        for i in 0..61 {
            let ip = borrow(&s, &format!("host{}", i % 20), &used).expect("a free address");
            assert!(s.usable(ip) && used.insert(ip), "{ip}");
        }
        assert_eq!(borrow(&s, "host1", &used), None);
        let starts: BTreeSet<_> =
            (0..10).map(|i| borrow(&s, &format!("host{i}"), &BTreeSet::new())).collect();
        assert!(starts.len() >= 8, "borrowers spread out: {starts:?}");
    }

    #[test]
    fn an_address_held_twice_is_kept_by_the_oldest_claim_of_its_block_then_the_oldest_entry() {
        let s: Subnet = "10.1.0.0/24".parse().unwrap();
        let copies = [
            ("blue:1/young".to_string(), claim(9, "young", "a", 1)),
            ("blue:1/old".to_string(), claim(3, "old", "a", 1)),
        ];
        let claims = Claims::collect(
            "blue",
            (1, "a"),
            s.blocks(),
            copies.iter().map(|(k, e)| (k.as_str(), e)),
        );
        let ip = Ipv4Addr::new(10, 1, 0, 5);
        let young = Holder { key: "young/web", host: "young", ltime: 1 };
        let old = Holder { key: "old/db", host: "old", ltime: 50 };
        let borrower = Holder { key: "other/x", host: "other", ltime: 0 };
        for order in [[young, old, borrower], [borrower, old, young], [old, borrower, young]] {
            assert_eq!(keeper(&claims, &s, ip, &order), Some(old), "{order:?}");
        }
        // Borrowers only: the oldest entry, then the smallest key.
        let elsewhere = Ipv4Addr::new(10, 1, 0, 40);
        let b2 = Holder { key: "b/x", host: "b", ltime: 7 };
        let b1 = Holder { key: "c/x", host: "c", ltime: 7 };
        let b0 = Holder { key: "d/x", host: "d", ltime: 8 };
        assert_eq!(keeper(&claims, &s, elsewhere, &[b0, b1, b2]), Some(b2));
        assert_eq!(keeper(&claims, &s, elsewhere, &[]), None);
    }

    #[test]
    fn a_pool_gives_subnets_that_overlap_no_network_and_says_when_it_is_full() {
        let pool: Subnet = "10.0.0.0/8".parse().unwrap();
        let a = pick_subnet(&pool, 24, "blue", &[]).unwrap();
        assert_eq!(a.prefix(), 24);
        assert!(pool.overlaps(&a) && a.overlaps(&pool));
        assert_eq!(pick_subnet(&pool, 24, "blue", &[]).unwrap(), a, "a pure function");
        assert_ne!(pick_subnet(&pool, 24, "red", &[]).unwrap(), a, "names start apart");
        // Taken by a wider network: the next /24 that overlaps nothing.
        let wide = Subnet { base: u32::from(a.gateway()) & mask(16), prefix: 16 };
        let b = pick_subnet(&pool, 24, "blue", &[wide]).unwrap();
        assert!(!b.overlaps(&wide));
        let small: Subnet = "10.5.0.0/23".parse().unwrap();
        let first = pick_subnet(&small, 24, "x", &[]).unwrap();
        let second = pick_subnet(&small, 24, "x", &[first]).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            pick_subnet(&small, 24, "x", &[first, second]).unwrap_err().to_string(),
            "default address pool 10.5.0.0/23 has no free /24 left; give --subnet, or a larger pool (--default-address-pool)"
        );
        assert!(matches!(pick_subnet(&small, 22, "x", &[]), Err(PoolError::Size { .. })));
        let ten: Subnet = "10.1.0.0/16".parse().unwrap();
        let inside: Subnet = "10.1.7.0/24".parse().unwrap();
        let beside: Subnet = "10.2.0.0/24".parse().unwrap();
        assert!(ten.overlaps(&inside) && inside.overlaps(&ten) && !ten.overlaps(&beside));
    }
}
