//! The HTTP client the WhatsApp library uses for media (upload, download)
//! and the version fetch: the library's own ureq client, on an agent that
//! can also trust a test CA.
//!
//! The extra CA (`whatsapp.media_ca_file`) exists for fakewa's media server,
//! whose certificate comes from a CA it generates. [`crate::config::Config::check`]
//! refuses the key in any build that verifies WhatsApp's certificate chain
//! (release builds): the same boundary as that bypass.

use std::path::Path;
use std::sync::Arc;

use whatsapp_rust::http::UreqHttpClient;

/// Reads the certificates of a PEM file: at least one, nothing else.
pub fn read_ca_file(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {
                return Err(format!(
                    "{} holds something other than certificates",
                    path.display()
                ));
            }
            Err(e) => return Err(format!("{} is not valid PEM: {e}", path.display())),
        }
    }
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The library's HTTP client. Without `media_ca_file`, the library's default
/// (WebPKI roots). With it, an agent whose roots are the certificates of that
/// file: only test and demo builds accept the key, and they talk to fakewa.
pub fn client(media_ca_file: Option<&Path>) -> Result<UreqHttpClient, String> {
    let Some(path) = media_ca_file else {
        return Ok(UreqHttpClient::new());
    };
    let certs = read_ca_file(path)?;
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
        .build();
    let agent: ureq::Agent = ureq::config::Config::builder()
        .tls_config(tls)
        .build()
        .into();
    Ok(UreqHttpClient::with_agent(agent))
}
