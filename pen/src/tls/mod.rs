//! TLS termination with rustls: pen's `-E`/`-K`/`-G`/`-A`/`-R`/`-L` and the `ssl_*` control
//! commands, as a handshake that runs before a client is admitted. A client that completes the
//! handshake becomes a `TlsClient`, and from there on the balancer and the relay treat it as any
//! other stream; a client that does not is closed without a server ever being chosen.
//!
//! The parts: `TlsOptions` is what the command line and the control commands set (plain data,
//! checked for syntax only); `Tls` is the live handle the data plane accepts with. `Tls` holds
//! the built rustls configurations (`config::Contexts`: the default one and one per SNI name)
//! behind a lock that is taken only to clone an `Arc`, so a reload or a control command swaps
//! them atomically while handshakes go on, and open connections keep the configuration they
//! started with. Building reads files and so happens only on the main thread (at startup, on
//! HUP, in a control command), never on a data-plane thread.

mod config;
mod files;
mod stream;

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use config::{CipherChoice, Protocols};
pub use stream::{Handshake, TlsClient};

/// How long a client may take to complete its handshake. Until then it holds a `-x` slot but no
/// server; a silent or slow client is closed when this runs out.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything TLS termination is configured with. Setting a field checks nothing on disk: the
/// files are read when a `Tls` is built from the options (at startup, on reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// `-E`: the certificate chain (PEM). TLS is on when this is set.
    pub cert: Option<PathBuf>,
    /// `-K`: the private key (PEM); None means it is in the certificate file, as in pen.
    pub key: Option<PathBuf>,
    /// `-G`: a file of CA certificates that client certificates are checked against.
    pub ca_file: Option<PathBuf>,
    /// `-A`: a directory of CA certificate files (every PEM certificate in it is trusted).
    pub ca_dir: Option<PathBuf>,
    /// `-R`: ask every client for a certificate and refuse clients without a valid one.
    pub require_client_cert: bool,
    /// `-L` and `ssl_option no_tlsv1.2`.
    pub protocols: Protocols,
    /// `ssl_ciphers`: None means rustls's defaults.
    pub ciphers: Option<CipherChoice>,
    /// `ssl_option cipher_server_preference`: choose the cipher suite by our order, not the
    /// client's.
    pub server_preference: bool,
    /// `ssl_sni_path`: a directory of `NAME.crt`, `NAME.key` and optionally `NAME.ca` and
    /// `NAME.ocsp`, served to clients asking for NAME.
    pub sni_dir: Option<PathBuf>,
    /// `ssl_ocsp_response`: a DER OCSP response stapled to the default certificate.
    pub ocsp_file: Option<PathBuf>,
    pub handshake_timeout: Duration,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            cert: None,
            key: None,
            ca_file: None,
            ca_dir: None,
            require_client_cert: false,
            protocols: Protocols::default(),
            ciphers: None,
            server_preference: false,
            sni_dir: None,
            ocsp_file: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl TlsOptions {
    /// Is TLS termination asked for (`-E` given)?
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    /// `ssl_ciphers [LIST]`: an OpenSSL-style list mapped onto the suites rustls offers; no list
    /// goes back to rustls's defaults. See `CipherChoice::parse` for what is accepted.
    pub fn set_ciphers(&mut self, list: Option<&str>) -> Result<(), TlsError> {
        self.ciphers = list.map(CipherChoice::parse).transpose()?;
        Ok(())
    }

    /// `ssl_option OPT`. The options that switch off SSLv2, SSLv3, TLS 1.0 and TLS 1.1 are
    /// accepted and change nothing (rustls never offers them); `no_tlsv1.2` leaves TLS 1.3
    /// only; `cipher_server_preference` makes our cipher order win.
    pub fn set_option(&mut self, option: &str) -> Result<(), TlsError> {
        match option {
            "no_sslv2" | "no_sslv3" | "no_tlsv1" | "no_tlsv1.1" => {}
            "no_tlsv1.2" => self.protocols = Protocols::Tls13,
            "cipher_server_preference" => self.server_preference = true,
            other => return Err(TlsError::UnknownOption(other.to_string())),
        }
        Ok(())
    }
}

/// Apply an `ssl_*` control command to the options (the caller rebuilds, all or nothing).
pub fn apply_command(o: &mut TlsOptions, cmd: &crate::control::Ssl) -> Result<(), TlsError> {
    use crate::control::Ssl;
    match cmd {
        Ssl::Ciphers(list) => o.set_ciphers(list.as_deref()),
        Ssl::Option(opt) => o.set_option(opt),
        Ssl::OcspResponse(file) => {
            o.ocsp_file = Some(file.clone());
            Ok(())
        }
        Ssl::SniPath(dir) => {
            o.sni_dir = Some(dir.clone());
            Ok(())
        }
        // rustls never renegotiates, so there is nothing to limit.
        Ssl::RenegotiationInterval(_) => Ok(()),
    }
}

/// A TLS configuration that could not be built, or a setting that makes no sense. Each names
/// the file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The I/O error is part of the message rather than a `source`, so that a reply or log
    /// line that shows only this error still says why.
    #[error("can't read {what} {path}: {error}")]
    Read {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{path}: {problem}")]
    BadFile { path: PathBuf, problem: String },
    #[error("the key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{0}")]
    Rustls(String),
    #[error("-L {0}: {1} is not offered: it is insecure, and rustls speaks only TLS 1.2 and 1.3 (leave -L out, or use -L ssl23)")]
    InsecureProtocol(String, &'static str),
    #[error("protocol version {0} not known (expected ssl23, tls1, tls1.2 or tls1.3)")]
    UnknownProtocol(String),
    #[error("ssl_option: unknown option '{0}' (expected no_sslv2, no_sslv3, no_tlsv1, no_tlsv1.1, no_tlsv1.2 or cipher_server_preference)")]
    UnknownOption(String),
    #[error("ssl_ciphers: '{0}' is not a cipher suite rustls offers (it offers: {offered})", offered = config::offered_suites())]
    UnknownCipher(String),
    #[error("ssl_ciphers: the list leaves no cipher suite")]
    NoCiphers,
    #[error("-R: no CA to check client certificates against: give -G or -A (no system CA bundle found either)")]
    NoClientRoots,
    #[error("TLS is not on: no certificate was given (-E)")]
    NoCertificate,
}

/// The live TLS configuration the data plane accepts clients with.
pub struct Tls {
    /// The options the current contexts were built from. Held only while building (main
    /// thread), so updates are applied one at a time.
    options: Mutex<TlsOptions>,
    /// The built configurations. Data-plane threads take the read lock only to clone the Arc.
    contexts: RwLock<Arc<config::Contexts>>,
}

impl Tls {
    /// Build the configuration: read every file, check the key matches the certificate. Reads
    /// files, so call it from the main thread.
    pub fn new(options: TlsOptions) -> Result<Tls, TlsError> {
        let contexts = config::Contexts::build(&options)?;
        Ok(Tls {
            options: Mutex::new(options),
            contexts: RwLock::new(Arc::new(contexts)),
        })
    }

    /// Read the files again (SIGHUP). On any error the configuration in use is kept as it was,
    /// and the error says why. Open connections are never touched.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.update(|_| Ok(()))
    }

    /// Change the options and rebuild (a control command at run time), all or nothing: if the
    /// change or the rebuild fails, neither the options nor the configuration in use change.
    pub fn update(
        &self,
        change: impl FnOnce(&mut TlsOptions) -> Result<(), TlsError>,
    ) -> Result<(), TlsError> {
        let mut current = self.options.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = current.clone();
        change(&mut next)?;
        if !next.enabled() {
            return Err(TlsError::NoCertificate);
        }
        let contexts = config::Contexts::build(&next)?;
        *self.contexts.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(contexts);
        *current = next;
        Ok(())
    }

    /// The options in effect.
    pub fn options(&self) -> TlsOptions {
        self.options
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn contexts(&self) -> Arc<config::Contexts> {
        self.contexts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The server side of the handshake on a freshly accepted client, under the configuration
    /// in use now. The configuration is chosen by the client's SNI name once its ClientHello is
    /// in; a client that sends anything but a TLS 1.2 or 1.3 ClientHello gets an alert (where
    /// TLS allows one) and an error. The caller bounds it by `Handshake::timeout`.
    pub fn handshake<IO>(&self, client: IO) -> Handshake<IO> {
        Handshake::new(self.contexts(), client)
    }
}

#[cfg(test)]
mod tests;
