//! TLS helpers for the tests: certificates generated on the spot (a CA, server and client
//! certificates signed by it), written to a temporary directory, and a blocking rustls client
//! that records what the server showed it (certificate, stapled OCSP response, handshake kind).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, StreamOwned};

use super::{Pen, TempDir, IO_TIMEOUT};

/// A certificate authority that signs server and client certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate with its key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    fn leaf(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A server certificate for these DNS names.
    pub fn server(&self, names: &[&str]) -> Leaf {
        self.leaf(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate.
    pub fn client(&self, name: &str) -> Leaf {
        self.leaf(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key PEM")
    }
}

/// Files in a temporary directory.
pub struct Files {
    pub dir: TempDir,
}

impl Files {
    pub fn new() -> Files {
        Files {
            dir: TempDir::new("tls"),
        }
    }

    /// Write `text` to `name` in the directory and return its path.
    pub fn write(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write test file");
        path
    }

    /// `NAME.crt` and `NAME.key`; returns the certificate's path.
    pub fn leaf(&self, name: &str, leaf: &Leaf) -> PathBuf {
        self.write(&format!("{name}.key"), &leaf.key_pem);
        self.write(&format!("{name}.crt"), &leaf.cert_pem)
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Default for Files {
    fn default() -> Self {
        Files::new()
    }
}

/// What the server showed the client during the handshake.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub cert: Option<CertificateDer<'static>>,
    pub ocsp: Vec<u8>,
}

/// Checks the server's certificate against the test CA (through rustls's own verifier), and
/// records the certificate and the stapled OCSP response.
#[derive(Debug)]
struct Recorder {
    inner: Arc<WebPkiServerVerifier>,
    seen: Arc<Mutex<Seen>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Seen {
            cert: Some(end_entity.clone().into_owned()),
            ocsp: ocsp.to_vec(),
        };
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A session store that files every session under one name, so that a session made with one
/// server name is offered to another: the attack of nginx's CVE-2025-23419.
#[derive(Debug)]
pub struct OneNameStore(ClientSessionMemoryCache);

impl OneNameStore {
    pub fn new() -> Arc<OneNameStore> {
        Arc::new(OneNameStore(ClientSessionMemoryCache::new(32)))
    }
}

fn one_name() -> ServerName<'static> {
    ServerName::try_from("any.test").expect("name")
}

impl ClientSessionStore for OneNameStore {
    fn set_kx_hint(&self, _: ServerName<'static>, group: rustls::NamedGroup) {
        self.0.set_kx_hint(one_name(), group)
    }
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.0.kx_hint(&one_name())
    }
    fn set_tls12_session(
        &self,
        _: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.0.set_tls12_session(one_name(), value)
    }
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.0.tls12_session(&one_name())
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        self.0.remove_tls12_session(&one_name())
    }
    fn insert_tls13_ticket(
        &self,
        _: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.0.insert_tls13_ticket(one_name(), value)
    }
    fn take_tls13_ticket(
        &self,
        _: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.0.take_tls13_ticket(&one_name())
    }
}

/// A client configuration trusting `ca`, presenting `cert` if given.
pub struct Client {
    config: Arc<ClientConfig>,
    seen: Arc<Mutex<Seen>>,
}

impl Client {
    pub fn new(ca: &Ca, cert: Option<&Leaf>) -> Client {
        Client::with_store(ca, cert, None)
    }

    /// As `new`, with this session store (for resumption tests).
    pub fn with_store(
        ca: &Ca,
        cert: Option<&Leaf>,
        store: Option<Arc<dyn ClientSessionStore>>,
    ) -> Client {
        Client::build(ca, cert, store, rustls::DEFAULT_VERSIONS)
    }

    /// Only these TLS versions.
    pub fn with_versions(
        ca: &Ca,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Client {
        Client::build(ca, None, None, versions)
    }

    fn build(
        ca: &Ca,
        cert: Option<&Leaf>,
        store: Option<Arc<dyn ClientSessionStore>>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Client {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert.der().clone()).expect("CA root");
        let inner = WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .expect("verifier");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let builder = ClientConfig::builder_with_protocol_versions(versions)
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Recorder {
                inner,
                seen: seen.clone(),
            }));
        let mut config = match cert {
            Some(leaf) => builder
                .with_client_auth_cert(vec![leaf.der.clone()], leaf.key())
                .expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        if let Some(store) = store {
            config.resumption = rustls::client::Resumption::store(store);
        }
        Client {
            config: Arc::new(config),
            seen,
        }
    }

    /// Connect to `addr` asking for `name` (SNI) and complete the handshake. With TLS 1.3 the
    /// server's verdict on a client certificate arrives after this returns: the first read
    /// sees it.
    pub fn connect(&self, addr: SocketAddr, name: &str) -> io::Result<Session> {
        self.connect_within(addr, name, IO_TIMEOUT)
    }

    /// `connect` with this read and write timeout.
    pub fn connect_within(
        &self,
        addr: SocketAddr,
        name: &str,
        timeout: std::time::Duration,
    ) -> io::Result<Session> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = ClientConnection::new(self.config.clone(), name).map_err(io::Error::other)?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(Session {
            stream,
            seen: self.seen.lock().unwrap().clone(),
        })
    }
}

/// A client connection through TLS.
pub struct Session {
    pub stream: StreamOwned<ClientConnection, TcpStream>,
    pub seen: Seen,
}

impl Session {
    pub fn resumed(&self) -> bool {
        self.stream.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Send `line` and read one line back.
    pub fn ask(&mut self, line: &str) -> io::Result<String> {
        self.stream.write_all(line.as_bytes())?;
        self.stream.flush()?;
        super::read_line(&mut self.stream)
    }

    /// Read until EOF (a clean close_notify or the TCP close).
    pub fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        match self.stream.read_to_end(&mut out) {
            Ok(_) => Ok(out),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(out),
            Err(e) => Err(e),
        }
    }

    /// Send close_notify.
    pub fn close(&mut self) {
        self.stream.conn.send_close_notify();
        let _ = self.stream.conn.complete_io(&mut self.stream.sock);
    }
}

/// A CA, a server certificate for `localhost` and its files (`server.crt`, `server.key`,
/// `ca.pem`).
pub struct Setup {
    pub ca: Ca,
    pub files: Files,
}

impl Setup {
    pub fn new() -> Setup {
        let ca = Ca::new("pen test CA");
        let files = Files::new();
        files.leaf("server", &ca.server(&["localhost"]));
        files.write("ca.pem", ca.pem());
        Setup { ca, files }
    }

    pub fn cert(&self) -> String {
        self.files.path("server.crt")
    }

    pub fn key(&self) -> String {
        self.files.path("server.key")
    }

    /// pen with TLS on: `-E server.crt -K server.key EXTRA...`.
    pub fn pen(&self, extra: &[&str], servers: &[String]) -> Pen {
        let (cert, key) = (self.cert(), self.key());
        let mut opts = vec!["-E", &cert, "-K", &key];
        opts.extend_from_slice(extra);
        Pen::start(&opts, servers)
    }
}
