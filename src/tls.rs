//! The certificates an endpoint behind a private CA is trusted by (`ca_file` of S3 and Azure
//! endpoints): read and checked once by the configuration (so `check-config` catches a bad
//! file) and again when the HTTP client is built.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// The certificates of a PEM file (`ca_file`): at least one, each one a CA certificate rustls
/// can trust.
///
/// # Errors
/// A description naming the file: unreadable, not PEM, no certificate in it, or a certificate
/// that cannot be a trust anchor.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| format!("{shown}: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = iter
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{shown}: not a PEM file of certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{shown}: no PEM certificate (BEGIN CERTIFICATE) in it"
        ));
    }
    // The same check the client makes when it is built, so a configuration check catches it.
    let mut roots = RootCertStore::empty();
    for cert in &certs {
        roots
            .add(cert.clone())
            .map_err(|e| format!("{shown}: not a usable CA certificate: {e}"))?;
    }
    Ok(certs)
}
