//! airlock's integration tests: one binary (ripgrep-style), real processes, real LMDB in temp
//! dirs. Test names cite security.md rows where they cover one.

// Test helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod body_substitution;
mod cli;
mod cloud;
mod fleet;
mod fleet_log;
mod hardening;
mod hardening_admin;
mod harness;
mod oauth;
mod ops;
mod origin;
mod pg;
mod proposals;
mod proxy;
mod proxy_harness;
mod proxy_tls;
mod rows;
mod rules;
mod run;
mod sandbox;
mod storage;
mod vault_keys;
