//! The shared leaf cache: one rustls [`ServerConfig`] per normalised host, minted once and
//! reused by every worker. Its resolver refuses a ClientHello whose SNI names another host
//! (security.md row 3) and serves the CONNECT host's leaf when there is no SNI. The cache is
//! bounded; pre-warmed entries are minted before the first request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{Ca, CertError};

/// Normalises a host for the cache key and the certificate: lowercase, no trailing dot (row 45).
pub fn normalise(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Shared, bounded cache of per-host TLS server configs.
pub struct LeafCache {
    ca: Ca,
    provider: Arc<CryptoProvider>,
    map: Mutex<HashMap<String, Arc<ServerConfig>>>,
    capacity: usize,
    mints: AtomicU64,
}

impl std::fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl LeafCache {
    pub fn new(ca: Ca, provider: Arc<CryptoProvider>, capacity: usize) -> Self {
        Self {
            ca,
            provider,
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            mints: AtomicU64::new(0),
        }
    }

    /// How many leaves were minted since start.
    pub fn mints(&self) -> u64 {
        self.mints.load(Ordering::Relaxed)
    }

    pub fn contains(&self, host: &str) -> bool {
        self.map
            .lock()
            .map(|m| m.contains_key(&normalise(host)))
            .unwrap_or(false)
    }

    /// The server config for `host`, minting its leaf on first use.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CertError> {
        let host = normalise(host);
        if let Some(c) = self.map.lock().ok().and_then(|m| m.get(&host).cloned()) {
            return Ok(c);
        }
        let config = self.mint(&host)?;
        let mut map = self.map.lock().map_err(|_| CertError::Poisoned)?;
        if let Some(existing) = map.get(&host) {
            // Another worker minted it meanwhile; keep one.
            return Ok(existing.clone());
        }
        if map.len() >= self.capacity
            && let Some(victim) = map.keys().next().cloned()
        {
            map.remove(&victim);
        }
        map.insert(host, config.clone());
        Ok(config)
    }

    fn mint(&self, host: &str) -> Result<Arc<ServerConfig>, CertError> {
        let leaf = self.ca.mint_leaf(host)?;
        self.mints.fetch_add(1, Ordering::Relaxed);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_pkcs8_der.to_vec()));
        let signing = self.provider.key_provider.load_private_key(key)?;
        let certified = Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(leaf.cert_der)],
            signing,
        ));
        let resolver = Arc::new(HostResolver {
            host: host.to_owned(),
            key: certified,
        });
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Serves one host's leaf; refuses other SNI names.
#[derive(Debug)]
struct HostResolver {
    host: String,
    key: Arc<CertifiedKey>,
}

impl ResolvesServerCert for HostResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(sni) if normalise(sni) != self.host => None,
            _ => Some(self.key.clone()),
        }
    }
}
