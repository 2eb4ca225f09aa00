//! The overview, the landing page after login: pending proposals and held requests first; then
//! per vault, from the request log of the last day (the admin process's copy, [`crate::logcache`],
//! never the request path): requests over the last hour and day as charts by status class, requests,
//! errors and p50 / p99 latency per service, error codes, hosts refused for want of a service,
//! and the agents active. Charts are SVG drawn on the server (no script, no external fetch), each
//! with a text summary and per-bar titles, so they read without colour.

use std::sync::Arc;

use crate::daily::{self, Buckets, VaultDay};
use airlock_core::vault::now;
use airlock_core::vault::records::ProposalStatus;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};

use crate::AppState;
use crate::respond::{SignedIn, St, render};

/// Status classes charted: 2xx and 3xx, 4xx, 5xx and no status.
const CLASSES: [(&str, &str); 3] = [
    ("ok", "2xx/3xx"),
    ("client", "4xx"),
    ("failed", "5xx or none"),
];

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/", get(overview))
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// One bar of a chart: its class and `x`, `y`, height in the chart's units.
type Bar = (&'static str, f64, f64, f64);

/// A stacked bar chart of `buckets` (oldest first), `step` naming one bucket ("5 minutes").
fn chart(title: &str, buckets: &Buckets, step: &str, ago: impl Fn(usize) -> String) -> Markup {
    let (w, h, pad) = (600.0, 120.0, 18.0);
    let max = buckets
        .iter()
        .map(|b| b.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let slot = w / buckets.len() as f64;
    let totals: [u64; 3] = buckets.iter().fold([0; 3], |mut t, b| {
        for i in 0..3 {
            t[i] += b[i];
        }
        t
    });
    let summary = format!(
        "{title}: {} requests ({} {}, {} {}, {} {}), in bars of {step}",
        totals.iter().sum::<u64>(),
        totals[0],
        CLASSES[0].1,
        totals[1],
        CLASSES[1].1,
        totals[2],
        CLASSES[2].1
    );
    let bars: Vec<(String, Vec<Bar>)> = buckets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let title = format!(
                "{}: {} {}, {} {}, {} {}",
                ago(i),
                b[0],
                CLASSES[0].1,
                b[1],
                CLASSES[1].1,
                b[2],
                CLASSES[2].1
            );
            let mut y = h;
            let rects = b
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| {
                    let height = *n as f64 / max as f64 * (h - 4.0);
                    y -= height;
                    (CLASSES[c].0, i as f64 * slot + 1.0, y, height)
                })
                .collect();
            (title, rects)
        })
        .collect();
    html! {
        figure.chart {
            figcaption { strong { (title) } " · " (summary.split_once(": ").map_or("", |(_, s)| s)) }
            svg viewBox={ "0 0 " (w) " " (h + pad) } role="img" aria-label=(summary) {
                @for (title, rects) in &bars {
                    g {
                        title { (title) }
                        @for (c, x, y, height) in rects {
                            rect class={ "c-" (c) } x=(format!("{x:.1}")) y=(format!("{y:.1}")) width=(format!("{:.1}", slot - 2.0)) height=(format!("{height:.1}")) {}
                        }
                    }
                }
                line x1="0" y1=(h) x2=(w) y2=(h) class="axis" {}
                text x="0" y=(h + pad - 4.0) class="tick" { (ago(0)) }
                text x=(w) y=(h + pad - 4.0) class="tick end" { "now" }
            }
        }
    }
}

/// One service's requests as a horizontal bar split by status class, scaled to the busiest
/// service (`most`), with the numbers as its accessible name.
fn split(classes: &[u64; 3], most: u64) -> Markup {
    let label = format!(
        "{} {}, {} {}, {} {}",
        classes[0], CLASSES[0].1, classes[1], CLASSES[1].1, classes[2], CLASSES[2].1
    );
    let mut x = 0.0;
    let parts: Vec<(&str, f64, f64)> = classes
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| {
            let w = *n as f64 / most as f64 * 200.0;
            x += w;
            (CLASSES[c].0, x - w, w)
        })
        .collect();
    html! {
        svg.split viewBox="0 0 200 12" role="img" aria-label=(label) {
            title { (label) }
            @for (c, x, w) in &parts { rect class={ "c-" (c) } x=(format!("{x:.1}")) y="0" width=(format!("{w:.1}")) height="12" {} }
        }
    }
}

async fn overview(State(state): St, SignedIn(session): SignedIn) -> Response {
    let pending = state
        .store
        .proposals(None, Some(ProposalStatus::Pending))
        .unwrap_or_default();
    let day = state.log.day().unwrap_or_else(|| {
        let now_ms = now() * 1000;
        let log = state.log.rows();
        Arc::new(daily::summarise(
            log.since(now_ms.saturating_sub(daily::DAY_MS)),
            now_ms,
        ))
    });
    let vaults = state.store.vaults().unwrap_or_default();
    render(
        &state,
        &session,
        "Overview",
        html! {
            div.card {
                h2 { "Waiting for you" }
                @if pending.is_empty() { p.muted { "No proposal or held request is pending." } }
                @else { ul.plain { @for p in &pending { li {
                    a href={ "/proposals/" (p.id) } {
                        @if let Some(h) = &p.held { "Held request " (p.id) ": " (h.summary()) }
                        @else { "Proposal " (p.id) ": " (p.hosts().join(", ")) }
                    }
                    " · vault " (p.vault) " · from " (p.agent.as_deref().unwrap_or("an agent"))
                } } } }
            }
            @for v in &vaults {
                @let empty = VaultDay::default();
                @let d = day.vaults.get(&v.name).unwrap_or(&empty);
                section.card aria-labelledby={ "v-" (v.name) } {
                    h2 id={ "v-" (v.name) } { "Vault " (v.name) }
                    @if d.requests == 0 { p.muted { "No requests in the last day." } }
                    @else {
                        div.legend aria-hidden="true" { @for (c, name) in CLASSES { span { i class={ "key c-" (c) } {} (name) } } }
                        (chart("Last hour", &d.hour, "5 minutes", |i| format!("{} min ago", (12 - i) * 5)))
                        (chart("Last day", &d.day, "1 hour", |i| format!("{} h ago", 24 - i)))
                        h3 { "Services, last day" }
                        @let most = d.services.values().map(|s| s.requests).max().unwrap_or(1).max(1);
                        table {
                            thead { tr { th scope="col" { "Service" } th scope="col" { "Requests" } th scope="col" { "By status" } th scope="col" { "Errors" } th scope="col" { "p50" } th scope="col" { "p99" } } }
                            tbody { @for (name, s) in &d.services {
                                tr { td { code { (name) } } td { (s.requests) } td { (split(&s.classes, most)) } td { (s.errors) } td.nowrap { (ms(s.p50_us)) } td.nowrap { (ms(s.p99_us)) } }
                            } }
                        }
                        div.cols {
                            div {
                                h3 { "Error codes" }
                                @if d.errors.is_empty() { p.muted { "None." } }
                                ul.plain { @for (code, n) in &d.errors { li { a href={ "/requests?vault=" (v.name) "&error=" (code) } { code { (code) } } " " (n) } } }
                            }
                            div {
                                h3 { "Hosts refused" }
                                @let tried: Vec<_> = day.refused.iter().filter(|t| t.vault == v.name).take(10).collect();
                                @if tried.is_empty() { p.muted { "None." } }
                                ul.plain { @for t in &tried { li { code { (t.host) } " " (t.tries) } } }
                            }
                            div {
                                h3 { "Agents active" }
                                ul.plain { @for (a, (hour, day)) in &d.agents { li { (a) ": " (hour) " in the hour, " (day) " in the day" } } }
                            }
                        }
                    }
                }
            }
        },
    )
}
