//! airlock's integration tests: one binary (ripgrep-style), real processes, real LMDB in temp
//! dirs. Test names cite the rows of `tests/SECURITY-TESTS.md` they
//! cover. What the tests share (the temp data dir, `airlock serve`, the origin, PostgreSQL, curl
//! and the agent API) is in [`support`].

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
mod oauth;
mod ops;
mod proposals;
mod proxy;
mod proxy_tls;
mod rows;
mod rules;
mod run;
mod sandbox;
mod storage;
mod support;
mod vault_keys;
