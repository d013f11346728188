//! A writer for small MaxMind DB (`.mmdb`) country databases, so that GeoIP tests need no
//! download: `country_db(&[("127.0.0.0/8", "SE"), ("::1/128", "DE")])`.
//!
//! The format (MaxMind DB 2.0, <https://maxmind.github.io/MaxMind-DB/>): a binary search tree
//! over the 128 address bits (IPv4 addresses live under `::/96`), 16 zero bytes, a data
//! section, then `\xAB\xCD\xEFMaxMind.com` and the metadata map. Records are 32 bits: a value
//! below the node count is a node, equal to it means "no data", and above it points into the
//! data section (value - node_count - 16). Later, more specific networks override earlier ones.
//!
//! Included by pen's integration tests (`support::mmdb`) and by the unit tests of
//! `pen/src/geoip.rs` (through `#[path]`), so there is one copy.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Record {
    Empty,
    Node(usize),
    /// Offset into the data section.
    Data(usize),
}

/// A GeoLite2-Country-shaped database: each network maps to
/// `{"country": {"iso_code": CC}}`. Networks are `addr/len`, IPv4 or IPv6.
pub fn country_db(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut data = Vec::new();
    let mut offsets: BTreeMap<String, usize> = BTreeMap::new();
    let mut nodes: Vec<[Record; 2]> = vec![[Record::Empty; 2]];
    for (network, cc) in entries {
        let offset = *offsets.entry(cc.to_string()).or_insert_with(|| {
            let at = data.len();
            encode_map(&mut data, 1);
            encode_str(&mut data, "country");
            encode_map(&mut data, 1);
            encode_str(&mut data, "iso_code");
            encode_str(&mut data, cc);
            at
        });
        let (bits, len) = parse_network(network);
        insert(&mut nodes, bits, len, offset);
    }
    let node_count = nodes.len();
    let mut out = Vec::new();
    for node in &nodes {
        for record in node {
            let value = match *record {
                Record::Empty => node_count,
                Record::Node(n) => n,
                Record::Data(offset) => node_count + 16 + offset,
            };
            out.extend_from_slice(&u32::try_from(value).expect("small tree").to_be_bytes());
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    encode_map(&mut out, 9);
    encode_str(&mut out, "binary_format_major_version");
    encode_uint(&mut out, 5, 2);
    encode_str(&mut out, "binary_format_minor_version");
    encode_uint(&mut out, 5, 0);
    encode_str(&mut out, "build_epoch");
    encode_uint(&mut out, 9, 1_700_000_000);
    encode_str(&mut out, "database_type");
    encode_str(&mut out, "GeoLite2-Country");
    encode_str(&mut out, "description");
    encode_map(&mut out, 1);
    encode_str(&mut out, "en");
    encode_str(&mut out, "pen test database");
    encode_str(&mut out, "ip_version");
    encode_uint(&mut out, 5, 6);
    encode_str(&mut out, "languages");
    encode_control(&mut out, 11, 1);
    encode_str(&mut out, "en");
    encode_str(&mut out, "node_count");
    encode_uint(&mut out, 6, node_count as u64);
    encode_str(&mut out, "record_size");
    encode_uint(&mut out, 5, 32);
    out
}

/// The network's 128 bits (IPv4 under `::/96`) and prefix length in that space.
fn parse_network(network: &str) -> (u128, u32) {
    let (addr, len) = network
        .split_once('/')
        .unwrap_or_else(|| panic!("{network}: expected addr/len"));
    let addr: IpAddr = addr
        .parse()
        .unwrap_or_else(|_| panic!("{network}: address"));
    let len: u32 = len.parse().unwrap_or_else(|_| panic!("{network}: length"));
    match addr {
        IpAddr::V4(v4) => {
            assert!(len <= 32, "{network}");
            (u128::from(u32::from(v4)), len + 96)
        }
        IpAddr::V6(v6) => {
            assert!(len <= 128, "{network}");
            (u128::from(v6), len)
        }
    }
}

fn insert(nodes: &mut Vec<[Record; 2]>, bits: u128, len: u32, offset: usize) {
    assert!(len > 0, "a /0 network is not supported");
    let mut node = 0;
    for depth in 0..len {
        let bit = ((bits >> (127 - depth)) & 1) as usize;
        if depth == len - 1 {
            nodes[node][bit] = Record::Data(offset);
            return;
        }
        node = match nodes[node][bit] {
            Record::Node(next) => next,
            // Going below an existing network: split it, both halves keep its data.
            other => {
                nodes.push([other; 2]);
                let next = nodes.len() - 1;
                nodes[node][bit] = Record::Node(next);
                next
            }
        };
    }
}

/// A control byte: `kind` is the MaxMind DB type number (extended types get their own byte).
fn encode_control(out: &mut Vec<u8>, kind: u8, size: usize) {
    assert!(size < 29, "only small values are written here");
    if kind <= 7 {
        out.push((kind << 5) | size as u8);
    } else {
        out.push(size as u8);
        out.push(kind - 7);
    }
}

fn encode_str(out: &mut Vec<u8>, s: &str) {
    encode_control(out, 2, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn encode_map(out: &mut Vec<u8>, pairs: usize) {
    encode_control(out, 7, pairs);
}

/// An unsigned integer of type `kind` (5 uint16, 6 uint32, 9 uint64) in as few bytes as needed.
fn encode_uint(out: &mut Vec<u8>, kind: u8, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    encode_control(out, kind, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}
