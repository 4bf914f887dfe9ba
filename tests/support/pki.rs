//! Test certificates and role tokens: a CA and one certificate for 127.0.0.1 (usable by servers
//! and clients alike), plus one from an unrelated CA, made with rcgen.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair as RcKey};

/// A token file with one token per role.
pub const TOKENS: &str = "admin  admin-token-0123456789\nworker worker-token-0123456789\n\
                      serving serving-token-0123456789\nreader reader-token-0123456789\n";

/// Where [`pki`] wrote its PEM files.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Signed by another CA: what a stranger presents.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

/// Writes `text` to `dir/name`; returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A CA, and one certificate for 127.0.0.1 signed by it, usable by servers and clients (the
/// processes here are both); plus a certificate from an unrelated CA.
pub fn pki(dir: &Path) -> Pki {
    let make_ca = |name: &str| {
        let key = RcKey::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (cert, key, params)
    };
    let leaf = |ca_params: CertificateParams, ca_key: &RcKey| {
        let key = RcKey::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = Issuer::new(ca_params, ca_key);
        (params.signed_by(&key, &issuer).unwrap(), key)
    };
    let (ca, ca_key, ca_params) = make_ca("ember test CA");
    let (cert, key) = leaf(ca_params, &ca_key);
    let (_, rogue_ca_key, rogue_params) = make_ca("someone else");
    let (rogue, rogue_key) = leaf(rogue_params, &rogue_ca_key);
    Pki {
        ca: write(dir, "ca.pem", &ca.pem()),
        cert: write(dir, "node.pem", &cert.pem()),
        key: write(dir, "node.key", &key.serialize_pem()),
        rogue_cert: write(dir, "rogue.pem", &rogue.pem()),
        rogue_key: write(dir, "rogue.key", &rogue_key.serialize_pem()),
    }
}
