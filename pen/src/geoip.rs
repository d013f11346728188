//! GeoIP: the country of a client address, for `acl N permit|deny country CC`.
//!
//! pen 0.34.1 used the legacy GeoIP library and its `.dat` files, a format MaxMind no longer
//! publishes. This reads MaxMind DB files (`.mmdb`: GeoLite2-Country, GeoIP2-Country, and the
//! City and Enterprise databases, which carry the same country fields) through the `maxminddb`
//! crate. The whole file is read into memory when it is opened, on the main thread; a lookup is
//! then pure computation (a walk down a binary tree and a small decode), so the balancer may
//! call it under its lock from any thread.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{MaxMindDbError, PathElement, Reader};

/// Where GeoIP databases are usually installed on Debian (`geoipupdate` writes to
/// `/var/lib/GeoIP`). pen opens none of them by itself; `open_default` tries them in order.
pub const DEFAULT_PATHS: &[&str] = &[
    "/var/lib/GeoIP/GeoLite2-Country.mmdb",
    "/usr/share/GeoIP/GeoLite2-Country.mmdb",
];

/// What separates a MaxMind DB's data section from its metadata.
const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";

/// Why a database could not be opened. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GeoIpError {
    // The reason is in the message, not a `#[source]`, or `{:#}` would print it twice.
    #[error("GeoIP database {}: {reason}", .path.display())]
    Read { path: PathBuf, reason: io::Error },
    #[error("GeoIP database {}: not a MaxMind DB (.mmdb) file: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("no GeoIP database found (tried {})", DEFAULT_PATHS.join(", "))]
    NoDefault,
}

/// An open country database.
pub struct GeoIp {
    reader: Reader<Vec<u8>>,
    path: PathBuf,
}

impl fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoIp")
            .field("path", &self.path)
            .field("database_type", &self.database_type())
            .finish()
    }
}

impl GeoIp {
    /// Read and check a `.mmdb` file. Blocking file I/O: call it on the main thread, never on a
    /// data-plane thread.
    pub fn open(path: &Path) -> Result<GeoIp, GeoIpError> {
        let bytes = std::fs::read(path).map_err(|reason| GeoIpError::Read {
            path: path.to_path_buf(),
            reason,
        })?;
        GeoIp::from_bytes(bytes, path)
    }

    /// The first of `DEFAULT_PATHS` that exists, opened.
    pub fn open_default() -> Result<GeoIp, GeoIpError> {
        for path in DEFAULT_PATHS.iter().map(Path::new) {
            if path.exists() {
                return GeoIp::open(path);
            }
        }
        Err(GeoIpError::NoDefault)
    }

    /// A database already in memory; `path` is only used to name it.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<GeoIp, GeoIpError> {
        let invalid = |e: MaxMindDbError| GeoIpError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        // The crate indexes the tree without bounds checks of its own: a file cut short (its
        // metadata says more nodes than it holds) would panic at the first lookup.
        let metadata_at = bytes
            .windows(METADATA_MARKER.len())
            .rposition(|w| w == METADATA_MARKER);
        let reader = Reader::from_source(bytes).map_err(invalid)?;
        let record_size = usize::from(reader.metadata.record_size);
        let tree_end = (reader.metadata.node_count as usize)
            .saturating_mul(record_size)
            .div_ceil(4)
            .saturating_add(16);
        if metadata_at.is_none_or(|at| at < tree_end) {
            return Err(GeoIpError::Invalid {
                path: path.to_path_buf(),
                reason: format!(
                    "its search tree of {} nodes does not fit in the file",
                    reader.metadata.node_count
                ),
            });
        }
        // from_source reads only the metadata; look one address up so that a file whose tree
        // is cut short fails here, with its name, rather than silently at the first client.
        let probe = IpAddr::from([0u8, 0, 0, 0]);
        reader.lookup(probe).map_err(invalid)?;
        Ok(GeoIp {
            reader,
            path: path.to_path_buf(),
        })
    }

    /// The file this database was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database's own name for its kind, such as `GeoLite2-Country`.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata.database_type
    }

    /// The ISO 3166-1 alpha-2 country code of `ip` (upper case, as MaxMind writes it), or None
    /// when the database has no country for it (private and loopback addresses, an IPv6
    /// address in an IPv4-only database). Uses the country where the address is located, or
    /// failing that the country where its network is registered. An IPv4-mapped IPv6 address
    /// is looked up as the IPv4 address it carries.
    pub fn country(&self, ip: IpAddr) -> Option<[u8; 2]> {
        let result = self.reader.lookup(ip.to_canonical()).ok()?;
        if !result.has_data() {
            return None;
        }
        ["country", "registered_country"].iter().find_map(|field| {
            let code: &str = result
                .decode_path(&[PathElement::Key(field), PathElement::Key("iso_code")])
                .ok()??;
            match code.as_bytes() {
                &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                    Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
                }
                _ => None,
            }
        })
    }
}

#[cfg(test)]
#[path = "../tests/support/mmdb.rs"]
mod mmdb;

/// The access lists' view of the database: `acl N permit|deny country CC`.
impl crate::balancer::CountryLookup for GeoIp {
    fn country(&self, ip: IpAddr) -> Option<[u8; 2]> {
        GeoIp::country(self, ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn db() -> GeoIp {
        let bytes = mmdb::country_db(&[
            ("127.0.0.0/8", "SE"),
            ("127.0.0.2/32", "NO"),
            ("10.1.0.0/16", "fi"),
            ("::1/128", "DE"),
            ("2001:db8::/32", "NL"),
        ]);
        GeoIp::from_bytes(bytes, Path::new("test.mmdb")).expect("test database")
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn looks_up_ipv4_ipv6_and_mapped_addresses() {
        let db = db();
        assert_eq!(db.country(v4(127, 0, 0, 1)), Some(*b"SE"));
        assert_eq!(
            db.country(v4(127, 0, 0, 2)),
            Some(*b"NO"),
            "most specific wins"
        );
        assert_eq!(db.country(v4(127, 0, 0, 3)), Some(*b"SE"));
        assert_eq!(
            db.country(v4(10, 1, 200, 7)),
            Some(*b"FI"),
            "codes come out upper case"
        );
        assert_eq!(db.country(v4(10, 2, 0, 1)), None);
        assert_eq!(db.country(IpAddr::V6(Ipv6Addr::LOCALHOST)), Some(*b"DE"));
        assert_eq!(db.country("2001:db8:1::5".parse().unwrap()), Some(*b"NL"));
        assert_eq!(db.country("2001:db9::5".parse().unwrap()), None);
        assert_eq!(
            db.country("::ffff:127.0.0.2".parse().unwrap()),
            Some(*b"NO"),
            "v4-mapped is looked up as IPv4"
        );
        assert_eq!(db.database_type(), "GeoLite2-Country");
    }

    #[test]
    fn errors_name_the_file() {
        let missing = GeoIp::open(Path::new("/nonexistent/pen-geo.mmdb")).unwrap_err();
        let text = missing.to_string();
        assert!(
            text.contains("/nonexistent/pen-geo.mmdb") && text.contains("No such file"),
            "{text}"
        );
        for bytes in [
            b"not a database at all".to_vec(),
            Vec::new(),
            mmdb::country_db(&[("127.0.0.0/8", "SE")])[..40].to_vec(),
        ] {
            let e = GeoIp::from_bytes(bytes, Path::new("junk.mmdb")).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains("junk.mmdb") && text.contains("not a MaxMind DB"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_truncated_tree_is_refused_or_answers_nothing_but_never_panics() {
        let full = mmdb::country_db(&[("127.0.0.0/8", "SE"), ("::1/128", "DE")]);
        // Cut bytes out of the tree and data section but keep the metadata: each result must be
        // an error naming the file or a database that answers without panicking.
        let marker = full
            .windows(14)
            .rposition(|w| w == b"\xAB\xCD\xEFMaxMind.com")
            .unwrap();
        for cut in 1..marker {
            let mut bytes = full[..marker - cut].to_vec();
            bytes.extend_from_slice(&full[marker..]);
            if let Ok(db) = GeoIp::from_bytes(bytes, Path::new("cut.mmdb")) {
                let _ = db.country(v4(127, 0, 0, 1));
                let _ = db.country(IpAddr::V6(Ipv6Addr::LOCALHOST));
            }
        }
    }
}
