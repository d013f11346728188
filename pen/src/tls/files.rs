//! Reading certificates, keys, CA stores, OCSP responses and the SNI directory, with errors that
//! name the file. Everything is read whole into memory first: these files are small, and reading
//! first separates "can't read" from "can't parse".

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// The largest OCSP response accepted (pen: 10000 bytes; real responses are a few KiB).
const OCSP_MAX: usize = 64 * 1024;

/// Where Debian, Fedora and others keep the system CA bundle, for `-R` without `-G` or `-A`
/// (pen then used OpenSSL's default locations).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_path_buf(),
        error,
    })
}

fn bad(path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::BadFile {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Every certificate in a PEM file, in order (the server's own first, then its chain).
pub(super) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read("certificate file", path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            path,
            "no certificate (-----BEGIN CERTIFICATE-----) in it",
        ));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub(super) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("key file", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => bad(
            path,
            "no private key (-----BEGIN PRIVATE KEY-----) in it; give the key file with -K",
        ),
        e => bad(path, format!("not a PEM key file: {e}")),
    })
}

/// The CA certificates client certificates are checked against: `-G` file, `-A` directory
/// (every PEM certificate in every file; other files are skipped), or the system bundle.
pub(super) fn load_roots(
    file: Option<&Path>,
    dir: Option<&Path>,
) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    let mut add = |path: &Path, certs: Vec<CertificateDer<'static>>| {
        for cert in certs {
            store
                .add(cert)
                .map_err(|e| bad(path, format!("not a usable CA certificate: {e}")))?;
        }
        Ok::<_, TlsError>(())
    };
    if let Some(file) = file {
        add(file, load_certs(file)?)?;
    }
    if let Some(dir) = dir {
        let entries = std::fs::read_dir(dir).map_err(|error| TlsError::Read {
            what: "CA directory",
            path: dir.to_path_buf(),
            error,
        })?;
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        paths.sort();
        for path in paths.iter().filter(|p| p.is_file()) {
            let Ok(pem) = std::fs::read(path) else {
                continue;
            };
            let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect();
            add(path, certs)?;
        }
    }
    if file.is_none() && dir.is_none() {
        let bundle = SYSTEM_BUNDLES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .ok_or(TlsError::NoClientRoots)?;
        add(bundle, load_certs(bundle)?)?;
    }
    if store.is_empty() {
        return Err(TlsError::NoClientRoots);
    }
    Ok(Arc::new(store))
}

/// A DER-encoded OCSP response, stapled as it is (rustls does not look inside).
pub(super) fn load_ocsp(path: &Path) -> Result<Vec<u8>, TlsError> {
    let der = read("OCSP response", path)?;
    if der.is_empty() {
        return Err(bad(path, "empty OCSP response"));
    }
    if der.len() > OCSP_MAX {
        return Err(bad(
            path,
            format!(
                "{} bytes; an OCSP response is at most {OCSP_MAX}",
                der.len()
            ),
        ));
    }
    Ok(der)
}

/// One name served from the SNI directory.
pub(super) struct SniEntry {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
    pub ocsp: Option<PathBuf>,
}

/// The names in an SNI directory: every `NAME.crt` with its `NAME.key` (required), `NAME.ca`
/// and `NAME.ocsp` (optional). The directory is read whole when the configuration is built,
/// so a client's SNI name never turns into a file name.
pub(super) fn sni_entries(dir: &Path) -> Result<Vec<SniEntry>, TlsError> {
    let entries = std::fs::read_dir(dir).map_err(|error| TlsError::Read {
        what: "SNI directory",
        path: dir.to_path_buf(),
        error,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".crt")?.to_string())
        })
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    let optional = |p: PathBuf| p.is_file().then_some(p);
    names
        .into_iter()
        .map(|name| {
            let key = dir.join(format!("{name}.key"));
            if !key.is_file() {
                return Err(bad(
                    &key,
                    format!("missing: {name}.crt needs its key in {name}.key"),
                ));
            }
            Ok(SniEntry {
                cert: dir.join(format!("{name}.crt")),
                key,
                ca: optional(dir.join(format!("{name}.ca"))),
                ocsp: optional(dir.join(format!("{name}.ocsp"))),
                name,
            })
        })
        .collect()
}
