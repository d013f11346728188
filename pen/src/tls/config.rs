//! Building rustls server configurations from `TlsOptions`, and mapping pen's OpenSSL-era
//! settings (`-L`, `ssl_ciphers`) onto what rustls offers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::{ring, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};

use super::files::{self, SniEntry};
use super::{TlsError, TlsOptions};

/// The TLS versions offered. rustls implements TLS 1.2 and 1.3 only; SSLv2, SSLv3, TLS 1.0 and
/// TLS 1.1 do not exist here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocols {
    /// TLS 1.2 and 1.3 (`-L ssl23`, `-L tls1`, `-L tls1.2`, the default).
    #[default]
    Tls12And13,
    /// TLS 1.3 only (`-L tls1.3`, `ssl_option no_tlsv1.2`).
    Tls13,
}

impl Protocols {
    /// pen's `-L` words, and two more for the versions rustls has. A word always means "this
    /// version and later", as `ssl23` and `tls1` do in pen 0.34.1.
    pub fn parse(word: &str) -> Result<Protocols, TlsError> {
        let insecure = |name| Err(TlsError::InsecureProtocol(word.to_string(), name));
        match word {
            "ssl23" | "tls1" | "tls1.2" => Ok(Protocols::Tls12And13),
            "tls1.3" => Ok(Protocols::Tls13),
            "ssl2" => insecure("SSLv2"),
            "ssl3" => insecure("SSLv3"),
            "tls1.0" => insecure("TLS 1.0"),
            "tls1.1" => insecure("TLS 1.1"),
            other => Err(TlsError::UnknownProtocol(other.to_string())),
        }
    }

    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        match self {
            Protocols::Tls12And13 => rustls::ALL_VERSIONS,
            Protocols::Tls13 => TLS13_ONLY,
        }
    }
}

static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The suites rustls (with the ring provider) offers, by their OpenSSL names and their IANA
/// names, strongest first within each version.
const SUITES: &[(&str, &str)] = &[
    ("TLS_AES_256_GCM_SHA384", "TLS13_AES_256_GCM_SHA384"),
    ("TLS_AES_128_GCM_SHA256", "TLS13_AES_128_GCM_SHA256"),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS13_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// OpenSSL words that select every suite: rustls offers nothing weaker.
const EVERYTHING: &[&str] = &["DEFAULT", "ALL", "HIGH", "SECURE", "COMPLEMENTOFDEFAULT"];

/// The OpenSSL names of the suites rustls offers, for error messages.
pub(super) fn offered_suites() -> String {
    SUITES
        .iter()
        .map(|(openssl, _)| *openssl)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A cipher suite list from `ssl_ciphers`, as indexes into `SUITES`, in preference order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CipherChoice(Vec<usize>);

impl CipherChoice {
    /// Parse an OpenSSL cipher list (`:`, `,` or space separated). Accepted: the OpenSSL or
    /// IANA name of a suite rustls offers; `DEFAULT`, `ALL`, `HIGH` (every suite); `!X` or
    /// `-X` to remove suite X. Exclusions of anything else (`!aNULL`, `!MD5`, `!RC4`, ...)
    /// are accepted and do nothing, because rustls offers no such suite; `@STRENGTH` and
    /// similar ordering words are ignored. Any other name is an error, so a typo cannot
    /// silently change what is offered.
    pub fn parse(list: &str) -> Result<CipherChoice, TlsError> {
        let mut chosen: Vec<usize> = Vec::new();
        for word in list.split([':', ',', ' ']).filter(|w| !w.is_empty()) {
            if let Some(name) = word.strip_prefix(['!', '-']) {
                if let Some(i) = suite_index(name) {
                    chosen.retain(|&c| c != i);
                }
                continue;
            }
            if word.starts_with('@') {
                continue;
            }
            let name = word.strip_prefix('+').unwrap_or(word);
            let add: Vec<usize> = if EVERYTHING.contains(&name) {
                (0..SUITES.len()).collect()
            } else {
                vec![suite_index(name).ok_or_else(|| TlsError::UnknownCipher(word.to_string()))?]
            };
            for i in add {
                if !chosen.contains(&i) {
                    chosen.push(i);
                }
            }
        }
        if chosen.is_empty() {
            return Err(TlsError::NoCiphers);
        }
        Ok(CipherChoice(chosen))
    }

    /// The chosen suites' OpenSSL names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|&i| SUITES[i].0).collect()
    }
}

fn suite_index(name: &str) -> Option<usize> {
    SUITES.iter().position(|(openssl, iana)| {
        name.eq_ignore_ascii_case(openssl) || name.eq_ignore_ascii_case(iana)
    })
}

/// The crypto provider with the suites the options allow, in their order.
fn provider(options: &TlsOptions) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut provider = ring::default_provider();
    if let Some(choice) = &options.ciphers {
        let suites: Vec<SupportedCipherSuite> = choice
            .0
            .iter()
            .filter_map(|&i| {
                ring::ALL_CIPHER_SUITES
                    .iter()
                    .find(|s| s.suite().as_str() == Some(SUITES[i].1))
                    .copied()
            })
            .collect();
        if suites.is_empty() {
            return Err(TlsError::NoCiphers);
        }
        provider.cipher_suites = suites;
    }
    Ok(Arc::new(provider))
}

/// The built configurations: the default one and one per SNI name.
pub(super) struct Contexts {
    default: Arc<ServerConfig>,
    /// Keyed by lower-case server name.
    sni: HashMap<String, Arc<ServerConfig>>,
    pub(super) handshake_timeout: Duration,
}

impl Contexts {
    /// Read every file the options name and build the configurations; nothing is kept from an
    /// earlier build, so every configuration has its own session cache (a session cannot be
    /// resumed under a configuration other than the one that made it).
    pub(super) fn build(options: &TlsOptions) -> Result<Contexts, TlsError> {
        let cert = options.cert.as_deref().ok_or(TlsError::NoCertificate)?;
        let provider = provider(options)?;
        let roots = if options.require_client_cert {
            Some(files::load_roots(
                options.ca_file.as_deref(),
                options.ca_dir.as_deref(),
            )?)
        } else {
            None
        };
        let ocsp = options
            .ocsp_file
            .as_deref()
            .map(files::load_ocsp)
            .transpose()?;
        let key = options.key.as_deref().unwrap_or(cert);
        let default = server_config(options, &provider, cert, key, roots.clone(), ocsp)?;
        let mut sni = HashMap::new();
        if let Some(dir) = &options.sni_dir {
            for SniEntry {
                name,
                cert,
                key,
                ca,
                ocsp,
            } in files::sni_entries(dir)?
            {
                // A name's own CA file replaces the global one for that name (pen's `NAME.ca`).
                let roots = match (&roots, ca) {
                    (None, _) => None,
                    (Some(_), Some(ca)) => Some(files::load_roots(Some(&ca), None)?),
                    (Some(global), None) => Some(global.clone()),
                };
                let ocsp = ocsp.as_deref().map(files::load_ocsp).transpose()?;
                let config = server_config(options, &provider, &cert, &key, roots, ocsp)?;
                sni.insert(name.to_ascii_lowercase(), config);
            }
        }
        Ok(Contexts {
            default,
            sni,
            handshake_timeout: options.handshake_timeout,
        })
    }

    /// The configuration for a client asking for `server_name` (SNI): its own if the SNI
    /// directory has one, else the default.
    pub(super) fn choose(&self, server_name: Option<&str>) -> Arc<ServerConfig> {
        server_name
            .and_then(|name| self.sni.get(&name.to_ascii_lowercase()))
            .unwrap_or(&self.default)
            .clone()
    }
}

/// One rustls configuration: certificate chain, key (checked to match), optional OCSP staple,
/// client verification when `roots` is given.
fn server_config(
    options: &TlsOptions,
    provider: &Arc<CryptoProvider>,
    cert: &Path,
    key: &Path,
    roots: Option<Arc<RootCertStore>>,
    ocsp: Option<Vec<u8>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = files::load_certs(cert)?;
    let private = files::load_key(key)?;
    let rustls_err = |e: rustls::Error| TlsError::Rustls(e.to_string());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(options.protocols.versions())
        .map_err(|e| match options.ciphers {
            // The usual way to get here: `ssl_ciphers` kept only TLS 1.2 suites and `-L`
            // asked for TLS 1.3 only.
            Some(_) => TlsError::NoCiphers,
            None => rustls_err(e),
        })?;
    let builder = match roots {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::Rustls(format!("client certificate verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert_with_ocsp(chain, private, ocsp.unwrap_or_default())
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            },
            other => TlsError::BadFile {
                path: key.to_path_buf(),
                problem: other.to_string(),
            },
        })?;
    config.ignore_client_order = options.server_preference;
    Ok(Arc::new(config))
}
