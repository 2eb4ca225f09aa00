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
    hits: AtomicU64,
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
            hits: AtomicU64::new(0),
        }
    }

    /// How many leaves were minted since start.
    pub fn mints(&self) -> u64 {
        self.mints.load(Ordering::Relaxed)
    }

    /// Lookups answered from the cache, for metrics.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn contains(&self, host: &str) -> bool {
        self.map
            .lock()
            .map(|m| m.contains_key(&normalise(host)))
            .unwrap_or(false)
    }

    /// The server config for `host`, minting its leaf on first use. A miss mints while holding
    /// the lock, so concurrent first requests for one host mint exactly one leaf; hits only
    /// clone an `Arc`.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CertError> {
        let host = normalise(host);
        let mut map = self.map.lock().map_err(|_| CertError::Poisoned)?;
        if let Some(c) = map.get(&host) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(c.clone());
        }
        let config = self.mint(&host)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize) -> LeafCache {
        let m = crate::generate_ca("test CA").unwrap();
        let ca = Ca::load("test CA", &m.cert_pem, &m.key_pkcs8_der).unwrap();
        LeafCache::new(
            ca,
            Arc::new(rustls::crypto::ring::default_provider()),
            capacity,
        )
    }

    /// security.md row 45 (G-06): `API.x.` and `api.x` are one entry.
    #[test]
    fn row45_normalised_single_entry() {
        let c = cache(10);
        let a = c.server_config("API.Example.com.").unwrap();
        let b = c.server_config("api.example.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(c.mints(), 1);
    }

    #[test]
    fn concurrent_first_requests_mint_once_and_cache_is_bounded() {
        let c = Arc::new(cache(3));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || c.server_config("same.example.com").unwrap())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.mints(), 1);
        for i in 0..10 {
            c.server_config(&format!("h{i}.example.com")).unwrap();
        }
        assert!(c.map.lock().unwrap().len() <= 3);
    }
}
