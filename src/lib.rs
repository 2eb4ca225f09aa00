//! airlock: a credential-brokering proxy for AI agents.
//!
//! The `airlock` binary's library: the [`cli`] and the data plane: [`serve`] (workers),
//! [`proxy`], [`http`], [`policy`] (with [`rules`] and each service's [`credential`]), [`oauth`] (the token refresher; [`renewal`] is the workers' handle to it), [`scrub`], [`netguard`],
//! [`metrics`], [`memory`] (returning a burst's memory), [`follower`] (fleet mode, reporting in [`fleet_state`]) and
//! [`supervise`]. What it shares with the admin
//! process (the vault, specs, config, request log) is the `airlock-core` crate, re-exported here
//! under the same paths.

#![deny(unsafe_code)]

pub use airlock_core::{
    catalog, config, fsutil, logging, names, requestlog, secret, spec, text, tls, vault,
};

pub mod cli;
pub mod credential;
pub mod fleet_state;
pub mod follower;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod netguard;
pub mod oauth;
pub mod policy;
pub mod proxy;
pub mod renewal;
pub mod rules;
pub mod scrub;
pub mod serve;
pub mod supervise;
