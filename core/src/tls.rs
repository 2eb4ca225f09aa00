//! TLS client configs for the connections airlock opens: upstreams, the fleet's PostgreSQL, and
//! the CLI's to a proxy port that speaks TLS. ring only; the system roots plus extra PEM CA files;
//! verification has no off switch. This module reads those files and does no other I/O; callers
//! set their own ALPN.

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// A client config trusting the system roots and every certificate in `extra_ca` (each file must
/// hold at least one).
pub fn client_config(
    provider: Arc<CryptoProvider>,
    extra_ca: &[&Path],
) -> Result<ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    for path in extra_ca {
        let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let certs: Vec<_> = CertificateDer::pem_file_iter(path)
            .map_err(|e| at(&e))?
            .collect::<Result<_, _>>()
            .map_err(|e| at(&e))?;
        if certs.is_empty() {
            return Err(at(&"no certificates found"));
        }
        for c in certs {
            roots.add(c).map_err(|e| at(&e))?;
        }
    }
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// [`client_config`] with ring's provider.
pub fn ring_client_config(extra_ca: &[&Path]) -> Result<ClientConfig, String> {
    client_config(Arc::new(rustls::crypto::ring::default_provider()), extra_ca)
}
