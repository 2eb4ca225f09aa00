//! airlock's core: what the `airlock` binary (CLI and data plane) and the admin process share,
//! and nothing of the data plane: [`vault`] (the sealed LMDB store, keys, tokens, proposals,
//! OAuth records, fleet mode's change log), [`spec`] and [`catalog`] (service definitions and
//! templates), [`config`] (the TOML file), [`requestlog`] (the request log's store), [`logging`],
//! [`tls`] (client configs), [`names`], [`text`] (agents' text made safe to show), [`secret`]
//! and [`fsutil`]. It must not depend on monoio,
//! the proxy or the CLI: the admin binary links only this.

#![deny(unsafe_code)]

pub mod catalog;
pub mod config;
pub mod fsutil;
pub mod logging;
pub mod names;
pub mod requestlog;
pub mod secret;
pub mod spec;
pub mod text;
pub mod tls;
pub mod vault;
