//! airlock: a credential-brokering proxy for AI agents.
//!
//! The library holds everything the `airlock` binary and the admin process share:
//! [`vault`] (sealed LMDB store and keys), [`spec`] (service definitions), [`config`] (the TOML
//! file and `serve` settings), [`names`], [`secret`] and the [`cli`]; and the data plane:
//! [`serve`] (workers), [`proxy`], [`http`], [`policy`], [`oauth`] (the token refresher), [`tls`] and
//! [`netguard`].

#![deny(unsafe_code)]

pub mod catalog;
pub mod cli;
pub mod config;
pub mod follower;
pub mod fsutil;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod netguard;
pub mod oauth;
pub mod policy;
pub mod proxy;
pub mod requestlog;
pub mod scrub;
pub mod secret;
pub mod serve;
pub mod spec;
pub mod supervise;
pub mod tls;
pub mod vault;
