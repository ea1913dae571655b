//! Test certificates, generated per run (never committed): a CA, and certificates it signs.

/// A self-signed CA certificate and its key.
pub fn ca() -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    (params.self_signed(&key).unwrap(), key)
}

/// A certificate for `names` (DNS names or IP addresses) signed by `ca`: (cert PEM, key PEM).
pub fn signed(
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
    names: &[&str],
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, ca, ca_key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A new CA and a certificate it signed for `localhost` and 127.0.0.1: (CA PEM, cert PEM, key PEM).
pub fn localhost() -> (String, String, String) {
    let (ca, ca_key) = ca();
    let (cert, key) = signed(&ca, &ca_key, &["localhost", "127.0.0.1"]);
    (ca.pem(), cert, key)
}
