//! The shared leaf cache: one rustls [`ServerConfig`] per normalised host, minted once and
//! reused by every worker. Its resolver refuses a ClientHello whose SNI names another host
//! (SECURITY-TESTS.md row 3) and serves the CONNECT host's leaf when there is no SNI. The cache is
//! bounded; pre-warmed entries are minted before the first request.
//!
//! A leaf is minted outside the cache's lock: the map holds one slot per host, and concurrent
//! first requests for a host wait on that host's slot while one of them mints (single flight), so
//! a new host's keygen never delays a connection to a cached one.

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

/// One host's entry: empty until its leaf is minted; locked while minting.
type Slot = Arc<Mutex<Option<Arc<ServerConfig>>>>;

/// A host's server config, and whether this call minted its leaf.
#[derive(Debug)]
pub struct CachedLeaf {
    pub config: Arc<ServerConfig>,
    pub minted: bool,
}

/// Shared, bounded cache of per-host TLS server configs.
pub struct LeafCache {
    ca: Ca,
    provider: Arc<CryptoProvider>,
    map: Mutex<HashMap<String, Slot>>,
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

    /// Whether `host`'s leaf is minted (a host being minted now is not, yet).
    pub fn contains(&self, host: &str) -> bool {
        let slot = match self.map.lock() {
            Ok(map) => map.get(&normalise(host)).cloned(),
            Err(_) => None,
        };
        slot.is_some_and(|s| s.try_lock().is_ok_and(|c| c.is_some()))
    }

    /// The server config for `host`, minting its leaf on first use. The cache's lock is held
    /// only to find the host's slot; the mint holds that slot alone, so concurrent first requests
    /// for one host mint exactly one leaf and other hosts are not held up.
    pub fn server_config(&self, host: &str) -> Result<CachedLeaf, CertError> {
        let host = normalise(host);
        let slot = {
            let mut map = self.map.lock().map_err(|_| CertError::Poisoned)?;
            if !map.contains_key(&host)
                && map.len() >= self.capacity
                && let Some(victim) = map.keys().next().cloned()
            {
                map.remove(&victim);
            }
            map.entry(host.clone()).or_default().clone()
        };
        let mut slot = slot.lock().map_err(|_| CertError::Poisoned)?;
        if let Some(config) = &*slot {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(CachedLeaf {
                config: config.clone(),
                minted: false,
            });
        }
        let config = self.mint(&host)?;
        *slot = Some(config.clone());
        Ok(CachedLeaf {
            config,
            minted: true,
        })
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

    /// SECURITY-TESTS.md row 45 (G-06): `API.x.` and `api.x` are one entry.
    #[test]
    fn row45_normalised_single_entry() {
        let c = cache(10);
        let a = c.server_config("API.Example.com.").unwrap();
        let b = c.server_config("api.example.com").unwrap();
        assert!(Arc::ptr_eq(&a.config, &b.config));
        assert!(a.minted && !b.minted);
        assert_eq!(c.mints(), 1);
    }

    /// A mint holds only its host's slot: a cached host is served while another host mints.
    #[test]
    fn a_mint_does_not_hold_up_other_hosts() {
        let c = Arc::new(cache(10));
        c.server_config("cached.example.com").unwrap();
        let slot = c
            .map
            .lock()
            .unwrap()
            .entry("slow.example.com".into())
            .or_default()
            .clone();
        let minting = slot.lock().unwrap();
        let other = c.clone();
        let served = std::thread::spawn(move || other.server_config("cached.example.com").unwrap())
            .join()
            .unwrap();
        assert!(!served.minted);
        assert!(!c.contains("slow.example.com"), "not cached until minted");
        drop(minting);
        assert!(c.server_config("slow.example.com").unwrap().minted);
        assert!(c.contains("slow.example.com"));
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
