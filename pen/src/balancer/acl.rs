//! pen's access lists: ten numbered lists of permit/deny entries, matched against a client
//! address. Used for clients (`client_acl`), control connections (`control_acl`), per-server
//! admission (`server N acl A`) and, with DSR, the tarpit.
//!
//! The matching rule is pen's: entries are walked in order and the first entry of the client's
//! address family that matches decides; when none matches, the answer is the opposite of the last
//! entry examined (so an empty list permits everyone, a list ending in `permit` denies the rest).
//! Two differences from pen 0.34.1, both listed in CHANGELOG.md: the stored address is masked when
//! the entry is added, so `deny 1.2.3.4 255.255.0.0` matches 1.2.x.x (pen's never matched), and an
//! IPv4 client arriving on an IPv6 listener (a v4-mapped address) is matched as IPv4.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Number of lists (0..=9), as in pen.
pub const ACL_LISTS: usize = 10;
/// Most entries one list may hold: far beyond real use, small enough that a loop of `acl`
/// commands cannot grow pen without bound.
pub const MAX_ENTRIES: usize = 10_000;

/// The number of an access list, 0..=9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct AclId(u8);

impl AclId {
    pub fn new(n: usize) -> Option<AclId> {
        (n < ACL_LISTS).then_some(AclId(n as u8))
    }
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for AclId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What an entry matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// IPv4 clients with `client & mask == addr` (addr is stored masked).
    V4 { addr: Ipv4Addr, mask: Ipv4Addr },
    /// IPv6 clients within `addr/len` (addr is stored masked).
    V6 { addr: Ipv6Addr, len: u8 },
    /// Clients whose GeoIP country is this two-letter code.
    Country([u8; 2]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclEntry {
    pub permit: bool,
    pub rule: Rule,
}

impl AclEntry {
    /// An IPv4 entry; the address is masked so that it can match.
    pub fn v4(permit: bool, addr: Ipv4Addr, mask: Ipv4Addr) -> AclEntry {
        let addr = Ipv4Addr::from(u32::from(addr) & u32::from(mask));
        AclEntry {
            permit,
            rule: Rule::V4 { addr, mask },
        }
    }

    /// An IPv6 prefix entry; `len` is at most 128 and the address is masked.
    pub fn v6(permit: bool, addr: Ipv6Addr, len: u8) -> AclEntry {
        let len = len.min(128);
        let addr = Ipv6Addr::from(u128::from(addr) & v6_mask(len));
        AclEntry {
            permit,
            rule: Rule::V6 { addr, len },
        }
    }

    pub fn country(permit: bool, code: [u8; 2]) -> AclEntry {
        AclEntry {
            permit,
            rule: Rule::Country(code),
        }
    }

    /// Whether this entry matches `ip`; None when the entry is of the other family.
    fn matches(&self, ip: IpAddr, countries: &dyn CountryLookup) -> Option<bool> {
        match (self.rule, ip) {
            (Rule::V4 { addr, mask }, IpAddr::V4(c)) => {
                Some(u32::from(c) & u32::from(mask) == u32::from(addr))
            }
            (Rule::V6 { addr, len }, IpAddr::V6(c)) => {
                Some(u128::from(c) & v6_mask(len) == u128::from(addr))
            }
            (Rule::Country(code), ip) => Some(countries.country(ip) == Some(code)),
            _ => None,
        }
    }
}

/// The `write` form of an entry: `permit 1.2.0.0 255.255.0.0`, `deny ::1/128`, `permit country SE`.
impl fmt::Display for AclEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.permit { "permit" } else { "deny" };
        match self.rule {
            Rule::V4 { addr, mask } => write!(f, "{verdict} {addr} {mask}"),
            Rule::V6 { addr, len } => write!(f, "{verdict} {addr}/{len}"),
            Rule::Country(c) => write!(
                f,
                "{verdict} country {}{}",
                char::from(c[0]),
                char::from(c[1])
            ),
        }
    }
}

fn v6_mask(len: u8) -> u128 {
    match len {
        0 => 0,
        l if l >= 128 => u128::MAX,
        l => u128::MAX << (128 - u32::from(l)),
    }
}

/// A GeoIP country database as the lists see it: an address to its two-letter country code.
pub trait CountryLookup: Send + Sync {
    fn country(&self, ip: IpAddr) -> Option<[u8; 2]>;
}

/// No database: no address has a country, so country entries never match.
pub struct NoCountries;

impl CountryLookup for NoCountries {
    fn country(&self, _ip: IpAddr) -> Option<[u8; 2]> {
        None
    }
}

/// The ten lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acls {
    lists: [Vec<AclEntry>; ACL_LISTS],
}

/// Adding to a list that is already at [`MAX_ENTRIES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("acl {0} is full ({MAX_ENTRIES} entries)")]
pub struct AclFull(pub AclId);

impl Acls {
    pub fn add(&mut self, id: AclId, entry: AclEntry) -> Result<(), AclFull> {
        let list = &mut self.lists[id.index()];
        if list.len() >= MAX_ENTRIES {
            return Err(AclFull(id));
        }
        list.push(entry);
        Ok(())
    }

    /// `no acl N`: the list becomes empty and permits everyone.
    pub fn clear(&mut self, id: AclId) {
        self.lists[id.index()].clear();
    }

    pub fn entries(&self, id: AclId) -> &[AclEntry] {
        &self.lists[id.index()]
    }

    /// pen's `match_acl`. `ip` None is a Unix-domain peer, which every list permits.
    pub fn permits(&self, id: AclId, ip: Option<IpAddr>, countries: &dyn CountryLookup) -> bool {
        let Some(ip) = ip else {
            return true;
        };
        let ip = ip.to_canonical();
        let mut last = false;
        for entry in &self.lists[id.index()] {
            last = entry.permit;
            if entry.matches(ip, countries) == Some(true) {
                return entry.permit;
            }
        }
        !last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    struct Fixed;
    impl CountryLookup for Fixed {
        fn country(&self, ip: IpAddr) -> Option<[u8; 2]> {
            (ip == "127.0.0.7".parse::<IpAddr>().unwrap()).then_some(*b"SE")
        }
    }

    #[test]
    fn pens_rule_first_match_else_opposite_of_last() {
        let id = AclId::new(1).unwrap();
        let mut acls = Acls::default();
        assert!(
            acls.permits(id, ip("10.0.0.1"), &NoCountries),
            "empty permits"
        );

        acls.add(
            id,
            AclEntry::v4(true, "127.0.0.2".parse().unwrap(), Ipv4Addr::BROADCAST),
        )
        .unwrap();
        assert!(acls.permits(id, ip("127.0.0.2"), &NoCountries));
        assert!(
            !acls.permits(id, ip("127.0.0.3"), &NoCountries),
            "permit-only denies the rest"
        );
        assert!(
            acls.permits(id, None, &NoCountries),
            "unix peers always pass"
        );

        acls.clear(id);
        acls.add(
            id,
            AclEntry::v4(
                false,
                "1.2.3.4".parse().unwrap(),
                "255.255.0.0".parse().unwrap(),
            ),
        )
        .unwrap();
        assert!(
            !acls.permits(id, ip("1.2.99.99"), &NoCountries),
            "masked on entry"
        );
        assert!(
            acls.permits(id, ip("1.3.0.1"), &NoCountries),
            "deny-only permits the rest"
        );
        assert_eq!(acls.entries(id)[0].to_string(), "deny 1.2.0.0 255.255.0.0");
    }

    #[test]
    fn families_and_countries() {
        let id = AclId::new(2).unwrap();
        let mut acls = Acls::default();
        acls.add(id, AclEntry::v6(false, "2001:db8::1".parse().unwrap(), 32))
            .unwrap();
        acls.add(id, AclEntry::country(false, *b"SE")).unwrap();
        acls.add(
            id,
            AclEntry::v4(
                true,
                "127.0.0.0".parse().unwrap(),
                "255.0.0.0".parse().unwrap(),
            ),
        )
        .unwrap();
        assert!(!acls.permits(id, ip("2001:db8:5::1"), &NoCountries));
        assert!(!acls.permits(id, ip("127.0.0.7"), &Fixed), "country entry");
        assert!(
            acls.permits(id, ip("127.0.0.7"), &NoCountries),
            "no database: no match"
        );
        assert!(
            acls.permits(id, ip("::ffff:127.0.0.9"), &NoCountries),
            "v4-mapped is v4"
        );
        assert!(
            !acls.permits(id, ip("::2"), &NoCountries),
            "no match: opposite of last"
        );
        assert_eq!(acls.entries(id)[0].to_string(), "deny 2001:db8::/32");
        assert_eq!(acls.entries(id)[1].to_string(), "deny country SE");
        assert_eq!(
            AclEntry::v6(true, Ipv6Addr::LOCALHOST, 200).to_string(),
            "permit ::1/128"
        );
    }

    #[test]
    fn lists_are_bounded() {
        let id = AclId::new(9).unwrap();
        assert!(AclId::new(10).is_none());
        let mut acls = Acls::default();
        let e = AclEntry::country(true, *b"SE");
        for _ in 0..MAX_ENTRIES {
            acls.add(id, e).unwrap();
        }
        assert_eq!(acls.add(id, e), Err(AclFull(id)));
    }
}
