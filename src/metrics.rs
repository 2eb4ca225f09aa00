//! Prometheus metrics for the data plane, served on `--metrics-listen` as text at `/metrics`.
//!
//! Per-request figures are counted by the request-log writer from the rows it already receives
//! (once per batch, off the hot path): requests by vault, service, status class and error code,
//! and a latency histogram. Gauges and counters the data plane keeps anyway (open connections,
//! in-flight requests, open tunnels, upstream connections dialled or reused, leaf mints and cache
//! hits, each limiter's refusals) are read at scrape time ([`Gauges`]). No label ever holds a path, a query or a secret.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use crate::requestlog::Row;

/// Latency buckets, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Counters fed by the request-log writer.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    /// (vault, service, status class, error code) -> count.
    requests: BTreeMap<(String, String, String, String), u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
    pub dropped_log_rows: u64,
}

impl RequestMetrics {
    pub fn observe(&mut self, row: &Row) {
        let class = format!("{}xx", row.status / 100);
        let key = (
            row.vault.clone(),
            row.service.clone().unwrap_or_default(),
            class,
            row.error.clone().unwrap_or_default(),
        );
        *self.requests.entry(key).or_default() += 1;
        let secs = row.latency_us as f64 / 1e6;
        for (b, le) in self.buckets.iter_mut().zip(BUCKETS) {
            if secs <= le {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += secs;
    }
}

/// What the request-log writer feeds: the counters the metrics endpoint renders.
#[derive(Debug)]
pub struct Feed(pub Arc<Mutex<RequestMetrics>>);

impl crate::requestlog::Observe for Feed {
    fn row(&mut self, row: &Row) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(row);
    }

    fn dropped(&mut self, rows: u64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dropped_log_rows += rows;
    }
}

/// Scrape-time figures from the data plane.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub connections: u64,
    pub in_flight: u64,
    pub tunnels: u64,
    pub leaf_mints: u64,
    pub leaf_hits: u64,
    pub upstream_dialled: u64,
    pub upstream_reused: u64,
    pub pool_discarded: u64,
    pub retried: u64,
    pub refused_network: u64,
    pub refused_proxy_header: u64,
    /// Refusals by the per-agent limits, the auth-failure limiter and the leaf-mint limiter.
    pub limited_agent: u64,
    pub limited_auth: u64,
    pub limited_mint: u64,
    pub limited_refusals: u64,
    pub limited_token_mints: u64,
    pub fleet: Option<FleetGauges>,
}

/// Fleet mode's gauges.
#[derive(Clone, Copy, Debug, Default)]
pub struct FleetGauges {
    /// The last change of the log this node applied.
    pub applied: u64,
    /// Seconds since the store was last heard from.
    pub contact_age: f64,
    /// Whether the node refuses a change of the log (and so stopped following it).
    pub log_rejected: bool,
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text.
pub fn render(m: &RequestMetrics, g: Gauges) -> String {
    let mut out = String::new();
    render_requests(&mut out, m);
    render_gauges(&mut out, m, g);
    out
}

/// The requests by vault, service, class and error, and the latency histogram.
fn render_requests(out: &mut String, m: &RequestMetrics) {
    out.push_str("# HELP airlock_requests_total Proxied requests by vault, service, status class and error code.\n# TYPE airlock_requests_total counter\n");
    for ((vault, service, class, error), n) in &m.requests {
        let _ = writeln!(
            out,
            "airlock_requests_total{{vault=\"{}\",service=\"{}\",class=\"{}\",error=\"{}\"}} {n}",
            label(vault),
            label(service),
            class,
            label(error)
        );
    }
    out.push_str("# HELP airlock_request_duration_seconds Time from request head to the end of the response.\n# TYPE airlock_request_duration_seconds histogram\n");
    for (le, n) in BUCKETS.iter().zip(m.buckets) {
        let _ = writeln!(
            out,
            "airlock_request_duration_seconds_bucket{{le=\"{le}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "airlock_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        m.count
    );
    let _ = writeln!(
        out,
        "airlock_request_duration_seconds_sum {}",
        m.sum_seconds
    );
    let _ = writeln!(out, "airlock_request_duration_seconds_count {}", m.count);
}

/// What the process counts besides requests: connections, tunnels, leaves, the upstream pool,
/// the limiters, the request log and the fleet.
fn render_gauges(out: &mut String, m: &RequestMetrics, g: Gauges) {
    for (name, help, kind, v) in [
        (
            "airlock_open_connections",
            "Client connections open now.",
            "gauge",
            g.connections,
        ),
        (
            "airlock_requests_in_flight",
            "Requests between head and end of response.",
            "gauge",
            g.in_flight,
        ),
        (
            "airlock_open_tunnels",
            "CONNECT tunnels open now (intercepted or spliced).",
            "gauge",
            g.tunnels,
        ),
        (
            "airlock_leaf_mints_total",
            "Leaf certificates minted.",
            "counter",
            g.leaf_mints,
        ),
        (
            "airlock_leaf_cache_hits_total",
            "TLS accepts served by an already minted leaf.",
            "counter",
            g.leaf_hits,
        ),
        (
            "airlock_request_log_dropped_rows_total",
            "Request-log rows dropped while writes failed.",
            "counter",
            m.dropped_log_rows,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    render_counters(out, g);
    if let Some(f) = g.fleet {
        render_fleet(out, f);
    }
}

/// The labelled counters: upstream connections, refused connections and the limiters.
fn render_counters(out: &mut String, g: Gauges) {
    let _ = writeln!(
        out,
        "# HELP airlock_upstream_connections_total Upstream connections used, by whether the pool supplied them.\n\
         # TYPE airlock_upstream_connections_total counter\n\
         airlock_upstream_connections_total{{reused=\"false\"}} {}\n\
         airlock_upstream_connections_total{{reused=\"true\"}} {}",
        g.upstream_dialled, g.upstream_reused
    );
    let _ = writeln!(
        out,
        "# HELP airlock_upstream_pool_discarded_total Idle pooled connections closed instead of reused (too old, or the upstream sent or closed while idle).\n\
         # TYPE airlock_upstream_pool_discarded_total counter\n\
         airlock_upstream_pool_discarded_total {}\n\
         # HELP airlock_upstream_retries_total Requests sent again on a fresh connection after a reused one failed before any response byte.\n\
         # TYPE airlock_upstream_retries_total counter\n\
         airlock_upstream_retries_total {}",
        g.pool_discarded, g.retried
    );
    let _ = writeln!(
        out,
        "# HELP airlock_refused_connections_total Connections closed at once, by why: outside client_networks, or a balancer of proxy_protocol_from without a valid PROXY header.\n\
         # TYPE airlock_refused_connections_total counter\n\
         airlock_refused_connections_total{{reason=\"client_networks\"}} {}\n\
         airlock_refused_connections_total{{reason=\"proxy_protocol\"}} {}",
        g.refused_network, g.refused_proxy_header
    );
    let _ = writeln!(
        out,
        "# HELP airlock_rate_limited_total Requests refused with 429, by limiter.\n\
         # TYPE airlock_rate_limited_total counter\n\
         airlock_rate_limited_total{{limit=\"agent\"}} {}\n\
         airlock_rate_limited_total{{limit=\"auth_failures\"}} {}\n\
         airlock_rate_limited_total{{limit=\"leaf_mint\"}} {}\n\
         airlock_rate_limited_total{{limit=\"refused_connect\"}} {}\n\
         airlock_rate_limited_total{{limit=\"token_mint\"}} {}",
        g.limited_agent, g.limited_auth, g.limited_mint, g.limited_refusals, g.limited_token_mints
    );
}

/// A fleet node's position in the log, its contact with the store, and a refused change.
fn render_fleet(out: &mut String, f: FleetGauges) {
    let _ = writeln!(
        out,
        "# HELP airlock_fleet_applied_seq The last change of the fleet's log this node applied.\n\
         # TYPE airlock_fleet_applied_seq gauge\n\
         airlock_fleet_applied_seq {}\n\
         # HELP airlock_fleet_store_contact_age_seconds Seconds since this node last heard from the fleet's store.\n\
         # TYPE airlock_fleet_store_contact_age_seconds gauge\n\
         airlock_fleet_store_contact_age_seconds {:.3}\n\
         # HELP airlock_fleet_log_rejected 1 while this node refuses a change of the fleet's log that does not verify (it serves what it had).\n\
         # TYPE airlock_fleet_log_rejected gauge\n\
         airlock_fleet_log_rejected {}",
        f.applied,
        f.contact_age,
        u8::from(f.log_rejected)
    );
}

/// Serves `/metrics` on `addr` from a thread; returns the bound address.
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<Mutex<RequestMetrics>>,
    gauges: impl Fn() -> Gauges + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("airlock-metrics".into()).spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut buf = [0u8; 2048];
            let n = conn.read(&mut buf).unwrap_or(0);
            let ok = buf[..n].starts_with(b"GET /metrics ");
            let body = if ok {
                let m = metrics.lock().unwrap_or_else(|p| p.into_inner());
                render(&m, gauges())
            } else {
                "see /metrics\n".to_owned()
            };
            let status = if ok { "200 OK" } else { "404 Not Found" };
            let _ = write!(conn, "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        }
    })?;
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let mut m = RequestMetrics::default();
        let row = Row {
            vault: "default".into(),
            service: Some("openai".into()),
            status: 200,
            latency_us: 3000,
            ..Row::default()
        };
        m.observe(&row);
        m.observe(&Row {
            status: 403,
            error: Some("no_service".into()),
            vault: "default".into(),
            ..Row::default()
        });
        let text = render(
            &m,
            Gauges {
                connections: 2,
                ..Gauges::default()
            },
        );
        assert!(text.contains("airlock_requests_total{vault=\"default\",service=\"openai\",class=\"2xx\",error=\"\"} 1"), "{text}");
        assert!(text.contains("error=\"no_service\"} 1"));
        assert!(text.contains("airlock_request_duration_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("airlock_open_connections 2"));
    }
}
