//! The agent API on a proxy port, as an agent's own HTTP client reaches it (origin-form, no
//! proxy), and the wait for a running proxy to serve the vault as the store has it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Curl;

/// `METHOD path` on the agent API at `addr`, with `token` as the bearer and `body` as JSON when
/// given: the status and the JSON answer (`Null` when it is not JSON).
pub(crate) fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut c = Curl::direct()
        .max_time(10)
        .args(["-o", "-", "-w", "\n%{http_code}", "-X", method]);
    if let Some(t) = token {
        c = c.bearer(t);
    }
    if let Some(b) = body {
        c = c.json(b);
    }
    let r = c.arg(format!("http://{addr}{path}")).run().ok();
    let (body, code) = r.stdout.rsplit_once('\n').unwrap();
    (
        code.parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// Waits until the proxy at `addr` reports (`/healthz`) a vault generation of at least `wanted`,
/// instead of sleeping for a reload; fails the test after 10 s.
#[track_caller]
pub(crate) fn wait_generation(addr: SocketAddr, wanted: u64) {
    let start = Instant::now();
    loop {
        let (_, health) = call(addr, "GET", "/healthz", None, None);
        if health["generation"].as_u64().is_some_and(|g| g >= wanted) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the proxy did not reach generation {wanted}: {health}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
