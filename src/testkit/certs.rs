//! Certificates for TLS tests, made fresh for each test: a CA, a server
//! certificate it signs for `localhost` and 127.0.0.1, a client certificate
//! for mutual TLS, and a second CA that nothing trusts.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files written into a directory of the test's.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate from a CA the server does not trust.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

impl TestCerts {
    /// Generates the certificates and writes them into `dir`.
    pub fn generate(dir: &Path) -> TestCerts {
        let ca = ca("Tributary test CA");
        let stranger_ca = ca_untrusted();
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("the test directory is writable");
            path
        };
        let (server_cert, server_key) = leaf(
            &ca,
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            &ca,
            vec!["producer.test".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (stranger_cert, stranger_key) = leaf(
            &stranger_ca,
            vec!["stranger.test".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        TestCerts {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server-key.pem", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client-key.pem", client_key),
            stranger_cert: write("stranger.pem", stranger_cert),
            stranger_key: write("stranger-key.pem", stranger_key),
        }
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names to check");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("the default key type can be generated");
    CertifiedIssuer::self_signed(params, key).expect("a CA certificate can be self-signed")
}

fn ca_untrusted() -> CertifiedIssuer<'static, KeyPair> {
    ca("Some other CA")
}

/// A certificate for `names` signed by `ca`, and its key, as PEM.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = CertificateParams::new(names.clone()).expect("the names are valid");
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().expect("the default key type can be generated");
    let cert = params
        .signed_by(&key, ca)
        .expect("the CA can sign a leaf certificate");
    (cert.pem(), key.serialize_pem())
}
