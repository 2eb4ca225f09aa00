//! airlock's certificate authority and leaf certificates.
//!
//! [`generate_ca`] makes a per-install CA (ECDSA P-256); the caller wraps its key under the root
//! key and stores it (this crate never writes files). [`Ca::load`] rebuilds the issuer from the
//! stored certificate, subject name and key; [`Ca::mint_leaf`] signs short-lived leaves carrying
//! the authority key identifier that strict clients require. The shared, pre-warmed leaf cache
//! is [`cache::LeafCache`].

#![deny(unsafe_code)]

pub mod cache;

pub use cache::LeafCache;

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use zeroize::Zeroizing;

/// CA validity.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaf validity (R9: short-lived, at most 24 h).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Certificate failures.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("rcgen: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid host name for a certificate: {0:?}")]
    BadHost(String),
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the leaf cache lock is poisoned")]
    Poisoned,
}

/// A new CA: its certificate and its PKCS#8 key (wrap it before storing).
#[derive(Debug)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pkcs8_der: Zeroizing<Vec<u8>>,
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "airlock");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Generates a CA named `common_name`, valid from an hour ago for [`CA_VALIDITY`].
pub fn generate_ca(common_name: &str) -> Result<CaMaterial, CertError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params(common_name);
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pkcs8_der: Zeroizing::new(key.serialize_der()),
    })
}

/// A loaded CA that can mint leaves.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A minted leaf: certificate DER and its PKCS#8 key.
#[derive(Debug)]
pub struct Leaf {
    pub cert_der: Vec<u8>,
    pub key_pkcs8_der: Zeroizing<Vec<u8>>,
}

impl Ca {
    /// Rebuilds the issuer from what [`generate_ca`] produced.
    pub fn load(
        common_name: &str,
        cert_pem: &str,
        key_pkcs8_der: &[u8],
    ) -> Result<Self, CertError> {
        let key = KeyPair::try_from(key_pkcs8_der)?;
        Ok(Self {
            issuer: Issuer::new(ca_params(common_name), key),
            cert_pem: cert_pem.to_owned(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Mints a leaf for `host` (a DNS name or an IP literal), valid for [`LEAF_VALIDITY`].
    pub fn mint_leaf(&self, host: &str) -> Result<Leaf, CertError> {
        self.mint_leaf_for(&[host])
    }

    /// Mints one leaf naming every host in `hosts` (DNS names or IP literals; the first is the
    /// common name), valid for [`LEAF_VALIDITY`]. The proxy port's own certificate is one.
    pub fn mint_leaf_for(&self, hosts: &[&str]) -> Result<Leaf, CertError> {
        let first = hosts.first().ok_or(CertError::BadHost(String::new()))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, *first);
        params.subject_alt_names = hosts
            .iter()
            .map(|host| match host.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(
                    (*host)
                        .try_into()
                        .map_err(|_| CertError::BadHost((*host).to_owned()))?,
                )),
            })
            .collect::<Result<_, CertError>>()?;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + LEAF_VALIDITY;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_der: cert.der().to_vec(),
            key_pkcs8_der: Zeroizing::new(key.serialize_der()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_load_and_mint() {
        let m = generate_ca("airlock test CA").unwrap();
        assert!(m.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let ca = Ca::load("airlock test CA", &m.cert_pem, &m.key_pkcs8_der).unwrap();
        let leaf = ca.mint_leaf("api.example.com").unwrap();
        assert!(!leaf.cert_der.is_empty());
        assert!(ca.mint_leaf("127.0.0.1").is_ok());
    }
}
