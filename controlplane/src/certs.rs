//! Development certificates (`sluicectl certs DIR`): a CA, a server certificate for
//! `localhost`/`127.0.0.1`/`::1` and a client certificate, all signed by that CA.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// The files [`write_dev_certs`] writes, by name in the directory.
pub const FILES: [&str; 6] = ["ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"];

/// Writes a dev CA (`ca.pem`/`ca.key`), a server certificate (`server.pem`/`server.key`, SAN
/// localhost, 127.0.0.1, ::1) and a client certificate (`client.pem`/`client.key`, CN
/// `sluicectl`) into `dir` (created if needed); returns the paths written.
pub fn write_dev_certs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Sluice dev CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |sans: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose| -> anyhow::Result<(String, String)> {
        let mut p = CertificateParams::new(sans)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.use_authority_key_identifier_extension = true;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let server = leaf(vec!["localhost".into(), "127.0.0.1".into(), "::1".into()], "sluice-controlplane", ExtendedKeyUsagePurpose::ServerAuth)?;
    let client = leaf(Vec::new(), "sluicectl", ExtendedKeyUsagePurpose::ClientAuth)?;

    let contents = [ca_cert.pem(), ca_key_pem, server.0, server.1, client.0, client.1];
    let mut written = Vec::new();
    for (name, text) in FILES.iter().zip(contents) {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        if name.ends_with(".key") {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        written.push(path);
    }
    Ok(written)
}
