//! What the integration tests share, in one place:
//!
//! - [`env`]: a temp data dir and the `airlock` CLI run in it ([`Env`], [`Run`]), and small
//!   helpers over files and text;
//! - [`serve`]: a running `airlock serve` ([`Proxy`]) and a raw TLS client through it;
//! - [`origin`]: the test origin, HTTPS or plain HTTP, recording what it received;
//! - [`pg`]: a throwaway PostgreSQL cluster for the fleet tests;
//! - [`balancer`]: HAProxy in front of one node or a fleet ([`Balancer`]);
//! - [`curl`]: one builder for every curl the tests run ([`Curl`]);
//! - [`api`]: the agent API client ([`api::call`]) and the wait for a proxy to serve the vault
//!   as it is now ([`api::wait_generation`]).
//!
//! Waiting is done on conditions (a generation reached, a row written, a port answering), not
//! with fixed sleeps.

pub(crate) mod api;
mod balancer;
mod curl;
mod env;
pub(crate) mod origin;
pub(crate) mod pg;
mod serve;

pub(crate) use balancer::Balancer;
pub(crate) use curl::Curl;
pub(crate) use env::*;
pub(crate) use serve::*;
