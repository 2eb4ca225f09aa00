//! The log views: the request log with filters (vault, service, agent, status class, error code,
//! time range), pages by cursor, a live mode (`/static/live.js` polls `/requests/live` for rows
//! newer than the newest shown and adds them at the top) and CSV or JSON export of a filtered
//! view; and the audit log with filters and pages. Every cell is text (maud escapes it; the live
//! script sets `textContent`); exported CSV cells that a spreadsheet would run as a formula are
//! quoted out.

use std::collections::HashMap;
use std::sync::Arc;

use airlock_core::requestlog::{self, Filter, Row};
use airlock_core::vault::records::AuditRecord;
use airlock_core::vault::rfc3339;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{Markup, html};

use crate::AppState;
use crate::respond::{SignedIn, St, render};

/// Rows on a page of either log.
const PAGE: usize = 100;
/// Rows in one export.
const EXPORT_MAX: usize = 10_000;
/// Time ranges offered, in seconds (0: any time).
const RANGES: [(&str, u64); 5] = [
    ("any time", 0),
    ("last 15 minutes", 900),
    ("last hour", 3600),
    ("last day", 86_400),
    ("last week", 604_800),
];

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/requests", get(requests))
        .route("/requests/live", get(live))
        .route("/requests.json", get(export_json))
        .route("/requests.csv", get(export_csv))
        .route("/audit", get(audit))
}

type Params = Query<HashMap<String, String>>;

/// The filter a page's query names; empty fields mean "any".
fn filter_of(q: &HashMap<String, String>) -> Filter {
    let text = |k: &str| {
        q.get(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let since = text("range")
        .and_then(|r| r.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map(|s| now_ms().saturating_sub(s * 1000));
    Filter {
        vault: text("vault"),
        service: text("service"),
        agent: text("agent"),
        class: text("class").and_then(|c| c.parse().ok()),
        error: text("error"),
        since_ms: since,
        ..Filter::default()
    }
}

fn now_ms() -> u64 {
    airlock_core::vault::now() * 1000
}

/// The query string of the filter fields of `q` (for links that keep the filter).
fn keep(q: &HashMap<String, String>) -> String {
    let mut pairs: Vec<(&str, &str)> = ["vault", "service", "agent", "class", "error", "range"]
        .into_iter()
        .filter_map(|k| q.get(k).map(|v| (k, v.trim())))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub(crate) fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The cells of a row, as the page and the live script show them.
fn cells(r: &Row) -> [String; 6] {
    let service = match (&r.service, &r.rule) {
        (Some(s), Some(rule)) => format!("{s} · rule {rule}"),
        (Some(s), None) => s.clone(),
        _ => "-".into(),
    };
    [
        rfc3339(r.at_ms / 1000),
        format!("{} {}{}", r.method, r.host, r.path),
        if r.status == 0 {
            "-".into()
        } else {
            r.status.to_string()
        },
        service,
        r.agent.clone().unwrap_or_else(|| "-".into()),
        r.error.clone().unwrap_or_default(),
    ]
}

const HEADINGS: [&str; 6] = ["Time", "Request", "Status", "Service", "Agent", "Error"];

fn row_markup(r: &Row) -> Markup {
    let c = cells(r);
    html! { tr {
        td.muted.nowrap { (c[0]) } td { code { (c[1]) } } td.nowrap { (c[2]) }
        td { (c[3]) } td { (c[4]) } td { (c[5]) }
    } }
}

async fn requests(State(state): St, SignedIn(session): SignedIn, Query(q): Params) -> Response {
    let filter = filter_of(&q);
    let before = q.get("before").and_then(|b| b.parse().ok());
    let log = state.log.rows();
    let (rows, older) = log.page(before, PAGE, |r| filter.admits(r));
    let newest = log.rows.last().map_or(0, |(s, _)| *s);
    let live = q.contains_key("live") && before.is_none();
    let kept = keep(&q);
    let selected = |k: &str, v: &str| q.get(k).map(String::as_str) == Some(v);
    render(
        &state,
        &session,
        "Requests",
        html! {
            form.filters method="get" action="/requests" {
                div { label for="f-vault" { "Vault" } input id="f-vault" type="text" name="vault" value=(q.get("vault").map_or("", String::as_str)); }
                div { label for="f-service" { "Service" } input id="f-service" type="text" name="service" value=(q.get("service").map_or("", String::as_str)); }
                div { label for="f-agent" { "Agent" } input id="f-agent" type="text" name="agent" value=(q.get("agent").map_or("", String::as_str)); }
                div { label for="f-class" { "Status" } select id="f-class" name="class" {
                    option value="" { "any" }
                    @for (v, name) in [("2", "2xx"), ("3", "3xx"), ("4", "4xx"), ("5", "5xx"), ("0", "none (aborted)")] {
                        option value=(v) selected[selected("class", v)] { (name) }
                    }
                } }
                div { label for="f-error" { "Error code" } input id="f-error" type="text" name="error" value=(q.get("error").map_or("", String::as_str)); }
                div { label for="f-range" { "Time" } select id="f-range" name="range" {
                    @for (name, secs) in RANGES { option value=(secs) selected[selected("range", &secs.to_string())] { (name) } }
                } }
                div.actions { button { "Filter" } }
            }
            p.tools {
                @if live { a href={ "/requests?" (kept) } { "Stop following" } " · " span.live-note role="status" { "Following: new requests appear at the top." } }
                @else { a href={ "/requests?live=1&" (kept) } { "Follow live" } }
                " · Export this view: " a href={ "/requests.csv?" (kept) } { "CSV" } " · " a href={ "/requests.json?" (kept) } { "JSON" }
            }
            table.log data-live=[live.then_some("1")] data-after=(newest) {
                thead { tr { @for h in HEADINGS { th scope="col" { (h) } } } }
                tbody { @for (_, r) in &rows { (row_markup(r)) } }
            }
            @if rows.is_empty() { p.muted { "No requests match." } }
            @if let Some(older) = older {
                p { a rel="next" href={ "/requests?before=" (older) "&" (kept) } { "Older requests →" } }
            }
            @if live { script src="/static/live.js" {} }
        },
    )
}

/// Rows newer than `after` that the filter admits, oldest first, for the live script:
/// `{"last": SEQ, "rows": [[cell, ...], ...]}`.
async fn live(State(state): St, _: SignedIn, Query(q): Params) -> Response {
    let filter = filter_of(&q);
    let after = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let rows =
        requestlog::read(&state.data_dir, filter.vault.as_deref(), after).unwrap_or_default();
    let last = rows.last().map_or(after, |(s, _)| *s);
    let admitted: Vec<&Row> = rows
        .iter()
        .map(|(_, r)| r)
        .filter(|r| filter.admits(r))
        .collect();
    let skip = admitted.len().saturating_sub(PAGE);
    let shown: Vec<[String; 6]> = admitted[skip..].iter().map(|r| cells(r)).collect();
    axum::Json(serde_json::json!({ "last": last, "rows": shown })).into_response()
}

/// The filtered view, newest first, up to [`EXPORT_MAX`] rows.
fn exported(state: &AppState, q: &HashMap<String, String>) -> Vec<Row> {
    let filter = filter_of(q);
    let log = state.log.rows();
    let (rows, _) = log.page(None, EXPORT_MAX, |r| filter.admits(r));
    rows.into_iter().map(|(_, r)| r.clone()).collect()
}

fn attachment(name: &str, content_type: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

async fn export_json(State(state): St, _: SignedIn, Query(q): Params) -> Response {
    let rows = exported(&state, &q);
    let body = serde_json::to_string(&rows).unwrap_or_default();
    attachment("requests.json", "application/json", body)
}

async fn export_csv(State(state): St, _: SignedIn, Query(q): Params) -> Response {
    let mut out = String::from(
        "time,vault,agent,method,host,path,status,bytes,latency_us,service,rule,error\r\n",
    );
    for r in exported(&state, &q) {
        let fields = [
            rfc3339(r.at_ms / 1000),
            r.vault,
            r.agent.unwrap_or_default(),
            r.method,
            r.host,
            r.path,
            r.status.to_string(),
            r.bytes.to_string(),
            r.latency_us.to_string(),
            r.service.unwrap_or_default(),
            r.rule.unwrap_or_default(),
            r.error.unwrap_or_default(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_cell(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    attachment("requests.csv", "text/csv; charset=utf-8", out)
}

/// RFC 4180 quoting; a cell a spreadsheet would run as a formula starts with `'`.
fn csv_cell(f: &str) -> String {
    let f = if f.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{f}")
    } else {
        f.to_owned()
    };
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f
    }
}

/// The audit log, newest first, filtered by who (contains), action (prefix), target (contains)
/// and time range, a page at a time.
async fn audit(State(state): St, SignedIn(session): SignedIn, Query(q): Params) -> Response {
    let text = |k: &str| q.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    let (who, action, target) = (text("who"), text("action"), text("target"));
    let before: u64 = q
        .get("before")
        .and_then(|b| b.parse().ok())
        .unwrap_or(u64::MAX);
    let range: u64 = q.get("range").and_then(|r| r.parse().ok()).unwrap_or(0);
    let since = match range {
        0 => 0,
        r => airlock_core::vault::now().saturating_sub(r),
    };
    let admits = |r: &AuditRecord| {
        r.id < before
            && r.at >= since
            && r.actor.contains(who.as_str())
            && r.action.starts_with(action.as_str())
            && r.target.contains(target.as_str())
    };
    let mut list = state.store.audit_log(usize::MAX).unwrap_or_default();
    list.retain(admits);
    list.reverse();
    let older = (list.len() > PAGE).then(|| list[PAGE - 1].id);
    list.truncate(PAGE);
    let range_text = range.to_string();
    let kept: String = [
        ("who", &who),
        ("action", &action),
        ("target", &target),
        ("range", &range_text),
    ]
    .iter()
    .filter(|(_, v)| !v.is_empty() && v.as_str() != "0")
    .map(|(k, v)| format!("&{k}={}", urlencode(v)))
    .collect();
    render(
        &state,
        &session,
        "Audit log",
        html! {
            form.filters method="get" action="/audit" {
                div { label for="a-who" { "Who" } input id="a-who" type="text" name="who" value=(who); }
                div { label for="a-action" { "Action (prefix)" } input id="a-action" type="text" name="action" value=(action) placeholder="proposal."; }
                div { label for="a-target" { "Target" } input id="a-target" type="text" name="target" value=(target); }
                div { label for="a-range" { "Time" } select id="a-range" name="range" {
                    @for (name, secs) in RANGES { option value=(secs) selected[secs == range] { (name) } }
                } }
                div.actions { button { "Filter" } }
            }
            table.log {
                thead { tr { th scope="col" { "Time" } th scope="col" { "Who" } th scope="col" { "Action" } th scope="col" { "Target" } th scope="col" { "Detail" } } }
                tbody { @for r in &list { tr {
                    td.muted.nowrap { (rfc3339(r.at)) } td { (r.actor) } td { (r.action) } td { (r.target) } td.muted { (r.detail) }
                } } }
            }
            @if list.is_empty() { p.muted { "No records match." } }
            @if let Some(id) = older { p { a rel="next" href={ "/audit?before=" (id) (kept) } { "Older records →" } } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_never_formulas() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_cell("-1+1"), "'-1+1");
    }

    #[test]
    fn filters_from_the_query() {
        let q: HashMap<String, String> = [
            ("vault", "default"),
            ("class", "4"),
            ("agent", " "),
            ("range", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let f = filter_of(&q);
        assert_eq!(
            (f.vault.as_deref(), f.class, f.agent, f.since_ms),
            (Some("default"), Some(4), None, None)
        );
        assert_eq!(keep(&q), "class=4&range=0&vault=default");
    }
}
