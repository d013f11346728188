//! The mapping of pen's OpenSSL-era settings onto rustls, and build errors that name the file.
//! Handshakes on real sockets are in `pen/tests/tls.rs`.

use super::*;

#[test]
fn l_words_map_to_tls_versions_and_old_protocols_are_refused() {
    for (word, want) in [
        ("ssl23", Protocols::Tls12And13),
        ("tls1", Protocols::Tls12And13),
        ("tls1.2", Protocols::Tls12And13),
        ("tls1.3", Protocols::Tls13),
    ] {
        assert_eq!(Protocols::parse(word).unwrap(), want, "{word}");
    }
    for (word, name) in [
        ("ssl2", "SSLv2"),
        ("ssl3", "SSLv3"),
        ("tls1.0", "TLS 1.0"),
        ("tls1.1", "TLS 1.1"),
    ] {
        let e = Protocols::parse(word).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains("not offered"), "{word}: {e}");
    }
    let e = Protocols::parse("sslv9").unwrap_err().to_string();
    assert_eq!(
        e,
        "protocol version sslv9 not known (expected ssl23, tls1, tls1.2 or tls1.3)"
    );
}

#[test]
fn ssl_options_map_to_rustls_or_are_already_the_case() {
    let mut o = TlsOptions::default();
    for already in ["no_sslv2", "no_sslv3", "no_tlsv1", "no_tlsv1.1"] {
        o.set_option(already).unwrap();
    }
    assert_eq!(o, TlsOptions::default(), "rustls never offers those");
    o.set_option("cipher_server_preference").unwrap();
    assert!(o.server_preference);
    o.set_option("no_tlsv1.2").unwrap();
    assert_eq!(o.protocols, Protocols::Tls13);
    let e = o.set_option("no_compression").unwrap_err().to_string();
    assert!(e.contains("'no_compression'"), "{e}");
}

#[test]
fn cipher_lists_map_openssl_and_iana_names_onto_rustls_suites() {
    let c = CipherChoice::parse("ECDHE-RSA-AES128-GCM-SHA256:TLS_AES_256_GCM_SHA384").unwrap();
    assert_eq!(
        c.names(),
        ["ECDHE-RSA-AES128-GCM-SHA256", "TLS_AES_256_GCM_SHA384"]
    );
    let c = CipherChoice::parse("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,tls13_aes_128_gcm_sha256")
        .unwrap();
    assert_eq!(
        c.names(),
        ["ECDHE-ECDSA-AES256-GCM-SHA384", "TLS_AES_128_GCM_SHA256"]
    );
    // The usual hardening list: everything rustls has, minus what is excluded by name; the
    // exclusions of classes rustls never offers do nothing.
    let c = CipherChoice::parse("HIGH:!aNULL:!MD5:!RC4:-ECDHE-RSA-CHACHA20-POLY1305:@STRENGTH")
        .unwrap();
    assert_eq!(c.names().len(), 8);
    assert!(!c.names().contains(&"ECDHE-RSA-CHACHA20-POLY1305"));
    let e = CipherChoice::parse("HIGH:DES-CBC3-SHA")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'DES-CBC3-SHA'") && e.contains("ECDHE-RSA-AES128-GCM-SHA256"),
        "{e}"
    );
    assert!(matches!(
        CipherChoice::parse("!HIGH"),
        Err(TlsError::NoCiphers)
    ));
    let mut o = TlsOptions::default();
    o.set_ciphers(Some("DEFAULT")).unwrap();
    assert!(o.ciphers.is_some());
    o.set_ciphers(None).unwrap();
    assert!(o.ciphers.is_none(), "no list: back to rustls's defaults");
}

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let path = std::env::temp_dir().join(format!(
            "pen-tls-unit-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }

    fn write(&self, name: &str, text: impl AsRef<[u8]>) -> std::path::PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn self_signed(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn builds_and_names_the_file_at_fault() {
    let dir = Dir::new("build");
    let (cert, key) = self_signed("localhost");
    let (_, other_key) = self_signed("localhost");
    let cert_path = dir.write("c.pem", &cert);
    let key_path = dir.write("k.pem", &key);
    let both = dir.write("both.pem", format!("{cert}{key}"));
    let good = TlsOptions {
        cert: Some(cert_path.clone()),
        key: Some(key_path.clone()),
        ..TlsOptions::default()
    };
    assert!(Tls::new(good.clone()).is_ok());
    assert!(Tls::new(TlsOptions {
        cert: Some(both),
        ..TlsOptions::default()
    })
    .is_ok());
    let cases = [
        (
            TlsOptions {
                key: Some(dir.write("other.pem", &other_key)),
                ..good.clone()
            },
            "does not belong",
        ),
        (
            TlsOptions {
                key: None,
                ..good.clone()
            },
            "no private key",
        ),
        (
            TlsOptions {
                ocsp_file: Some(dir.write("empty.ocsp", "")),
                ..good.clone()
            },
            "empty.ocsp: empty OCSP response",
        ),
        (
            TlsOptions {
                ocsp_file: Some(dir.write("big.ocsp", vec![0u8; 70_000])),
                ..good.clone()
            },
            "big.ocsp: 70000 bytes",
        ),
        (
            TlsOptions {
                require_client_cert: true,
                ca_file: Some(dir.write("noca.pem", "no certificates here")),
                ..good.clone()
            },
            "noca.pem: no certificate",
        ),
        (
            TlsOptions {
                ciphers: Some(CipherChoice::parse("ECDHE-RSA-AES128-GCM-SHA256").unwrap()),
                protocols: Protocols::Tls13,
                ..good.clone()
            },
            "leaves no cipher suite",
        ),
        (TlsOptions::default(), "no certificate was given"),
    ];
    for (options, want) in cases {
        let e = Tls::new(options).err().expect(want).to_string();
        assert!(e.contains(want), "want {want:?} in {e:?}");
    }
    // An SNI directory whose NAME.crt has no NAME.key.
    let sni = Dir::new("sni");
    sni.write("a.test.crt", &cert);
    let e = Tls::new(TlsOptions {
        sni_dir: Some(sni.0.clone()),
        ..good
    })
    .err()
    .expect("missing key")
    .to_string();
    assert!(e.contains("a.test.key") && e.contains("missing"), "{e}");
}
