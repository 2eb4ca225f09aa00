//! The admin UI's pages and form handlers. Every state-changing form carries the session's
//! CSRF token; approvals also carry the proposal digest the operator saw (409 if it changed).
//! Agent-written text is rendered escaped (maud) and capped at submission. No page ever shows a
//! credential value: credentials appear by name and date only.

use std::collections::HashMap;
use std::sync::Arc;

use airlock_core::secret::Secret;
use airlock_core::spec::HostName;
use airlock_core::text::inert;
use airlock_core::vault::now;
use airlock_core::vault::proposals::Confirmed;
use airlock_core::vault::records::{ProposalRecord, ProposalStatus, ServiceChange, SlotAction};
use airlock_core::vault::review::{Review, ServiceDiff};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{Markup, html};

use crate::AppState;
use crate::respond::{Fields, SignedIn, St, forbidden, login_redirect, render, vault_error};
use crate::security::{self, Client, Session, csrf_ok};
use crate::views::{CSS, LIVE_JS, flash};

/// The pages' routes (the vault management pages are [`crate::manage::routes`]); the session
/// guard and the state are applied by the crate root's `app`.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/static/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], CSS) }),
        )
        .route(
            "/static/live.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], LIVE_JS) }),
        )
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/setup", get(setup_form).post(setup))
        .route("/proposals", get(proposals))
        .route("/proposals/{id}", get(proposal))
        .route("/proposals/{id}/approve", post(approve))
        .route("/proposals/{id}/reject", post(reject))
        .route("/hosts", get(hosts_tried))
        .route("/rules", get(rules))
}

async fn login_form(State(state): St, Extension(session): Extension<Session>) -> Response {
    render(&state, &session, "Log in", login_body(&session, None))
}

fn login_body(session: &Session, error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error { (flash(false, e)) }
        form.card method="post" action="/login" {
            input type="hidden" name="csrf" value=(session.csrf);
            label for="name" { "Operator" }
            input id="name" type="text" name="name" autocomplete="username" required;
            label for="password" { "Password" }
            input id="password" type="password" name="password" autocomplete="current-password" required;
            button type="submit" { "Log in" }
        }
    }
}

async fn login(
    State(state): St,
    Extension(session): Extension<Session>,
    Extension(client): Extension<Client>,
    Form(f): Fields,
) -> Response {
    if !csrf_ok(&session, f.get("csrf")) {
        return forbidden();
    }
    let name = f.get("name").cloned().unwrap_or_default();
    let refused = |status: StatusCode, text: &str| {
        let mut r = render(&state, &session, "Log in", login_body(&session, Some(text)));
        *r.status_mut() = status;
        r
    };
    // Charged before the check (row 70): a parallel burst gets no more tries than a sequence.
    if state.sessions.login_begin(&name, &client).is_err() {
        return refused(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed attempts; wait a minute.",
        );
    }
    let password = Secret::new(f.get("password").cloned().unwrap_or_default().into_bytes());
    let st = state.clone();
    let who = name.clone();
    let checked = state
        .sessions
        .argon2(move || st.store.verify_operator(&who, &password).unwrap_or(false))
        .await;
    match checked {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(operator = %name, ?client, "failed admin login");
            return refused(StatusCode::UNAUTHORIZED, "Wrong operator or password.");
        }
        Err(_) => {
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many logins at once; try again in a moment.",
            );
        }
    }
    state.sessions.login_succeeded(&name, &client);
    let fresh = state.sessions.login(&session.id, &name);
    let mut r = Redirect::to("/").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, security::set_cookie(&fresh));
    r
}

async fn logout(
    State(state): St,
    Extension(session): Extension<Session>,
    Form(f): Fields,
) -> Response {
    if !csrf_ok(&session, f.get("csrf")) {
        return forbidden();
    }
    state.sessions.logout(&session.id);
    Redirect::to("/login").into_response()
}

async fn setup_form(
    State(state): St,
    Extension(session): Extension<Session>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let token = q.get("token").cloned().unwrap_or_default();
    render(
        &state,
        &session,
        "Create the first operator",
        html! {
            form.card method="post" action="/setup" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="token" value=(token);
                label for="name" { "Operator name" }
                input id="name" type="text" name="name" required;
                label for="password" { "Password (at least 10 characters)" }
                input id="password" type="password" name="password" autocomplete="new-password" required;
                button type="submit" { "Create operator" }
            }
        },
    )
}

async fn setup(
    State(state): St,
    Extension(session): Extension<Session>,
    Form(f): Fields,
) -> Response {
    if !csrf_ok(&session, f.get("csrf")) {
        return forbidden();
    }
    let (token, name) = (
        f.get("token").cloned().unwrap_or_default(),
        f.get("name").cloned().unwrap_or_default(),
    );
    let password = Secret::new(f.get("password").cloned().unwrap_or_default().into_bytes());
    let st = state.clone();
    let n = name.clone();
    let result = state
        .sessions
        .argon2(move || st.store.setup_first_operator(&token, &n, &password))
        .await;
    match result {
        Ok(Ok(())) => render(
            &state,
            &session,
            "Operator created",
            html! { (flash(true, &format!("Operator {name} created."))) p { a href="/login" { "Log in" } } },
        ),
        Ok(Err(e)) => vault_error(&state, &session, &e),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "busy; try again in a moment",
        )
            .into_response(),
    }
}

fn status_cell(s: ProposalStatus) -> Markup {
    let word = format!("{s:?}").to_lowercase();
    html! { span class={ "status " (word) } { (word) } }
}

/// `/proposals`: newest first, [`crate::listing::PAGE`] a page (`before`: the cursor, an id),
/// searchable by host, vault, agent or status.
#[derive(Debug, Default, serde::Deserialize)]
struct ProposalQuery {
    #[serde(default)]
    q: String,
    before: Option<u64>,
}

async fn proposals(
    State(state): St,
    SignedIn(session): SignedIn,
    Query(query): Query<ProposalQuery>,
) -> Response {
    let all = match state.store.proposals(None, None) {
        Ok(l) => l,
        Err(e) => return vault_error(&state, &session, &e),
    };
    let t = now();
    let needle = query.q.trim().to_ascii_lowercase();
    let mut found: Vec<&ProposalRecord> = all
        .iter()
        .filter(|p| query.before.is_none_or(|b| p.id < b))
        .filter(|p| {
            let text = format!(
                "{} {} {} {:?}",
                p.hosts().join(" "),
                p.vault,
                p.agent.as_deref().unwrap_or(""),
                p.status_at(t)
            );
            needle.is_empty() || text.to_ascii_lowercase().contains(&needle)
        })
        .collect();
    // (The store lists them newest first.)
    let older = (found.len() > crate::listing::PAGE).then(|| found[crate::listing::PAGE - 1].id);
    found.truncate(crate::listing::PAGE);
    let list = found;
    render(
        &state,
        &session,
        "Proposals",
        html! {
            (crate::views::search_form("/proposals", ("proposal-search", "q"), "Search (host, vault, agent or status)", &query.q))
            @if list.is_empty() { p.muted { "No proposals here. Agents raise them when they need access to a new host." } }
            @else {
                table {
                    thead { tr { th { "#" } th { "Status" } th { "Hosts" } th { "Vault" } th { "Agent" } th { "Asked" } } }
                    tbody { @for p in &list { tr {
                        td { a href={ "/proposals/" (p.id) } { (p.id) } }
                        td { (status_cell(p.status_at(t))) }
                        td { a href={ "/proposals/" (p.id) } { (p.hosts().join(", ")) } }
                        td { (p.vault) }
                        td { (p.agent.as_deref().unwrap_or("-")) }
                        td.muted { (airlock_core::vault::rfc3339(p.created_at)) }
                    } } }
                }
            }
            @if let Some(id) = older {
                p { a rel="next" href={ "/proposals?before=" (id) "&q=" (crate::logs::urlencode(&query.q)) } { "Older proposals →" } }
            }
        },
    )
}

async fn proposal(State(state): St, SignedIn(session): SignedIn, Path(id): Path<u64>) -> Response {
    match state.store.proposal(id) {
        Ok(p) => proposal_page(&state, &session, &p, None),
        Err(e) => vault_error(&state, &session, &e),
    }
}

/// The proposal page; for a pending proposal, with its diff against the vault as it is now.
fn proposal_page(
    state: &AppState,
    session: &Session,
    p: &ProposalRecord,
    note: Option<Markup>,
) -> Response {
    let review = if p.status_at(now()) == ProposalStatus::Pending {
        match state.store.review_proposal(p) {
            Ok(r) => Some(r),
            Err(e) => return vault_error(state, session, &e),
        }
    } else {
        None
    };
    let body = proposal_body(session, p, review.as_ref(), note);
    render(
        state,
        session,
        &format!("Proposal {}", p.id),
        html! { (body) (agent_activity(state, p)) },
    )
}

/// What the proposing agent did lately in the proposal's vault: its newest requests and the
/// hosts it was refused for want of a service, next to what it asks for.
fn agent_activity(state: &AppState, p: &ProposalRecord) -> Markup {
    let Some(agent) = &p.agent else {
        return html! {};
    };
    let log = state.log.rows();
    let (mine, _) = log.page(None, 500, |r| {
        r.vault == p.vault && r.agent.as_deref() == Some(agent.as_str())
    });
    let recent: Vec<(u64, airlock_core::requestlog::Row)> = mine.into_iter().cloned().collect();
    drop(log);
    let refused = airlock_core::requestlog::hosts_tried(&recent);
    html! {
        div.card {
            h2 { "What " (agent) " did lately" }
            @if recent.is_empty() { p.muted { "No requests in the log." } }
            @if !refused.is_empty() {
                p { "Hosts refused for want of a service: "
                    @for (i, t) in refused.iter().enumerate() { @if i > 0 { ", " } code { (t.host) } " (" (t.tries) ")" } }
            }
            @if !recent.is_empty() {
                table.log {
                    thead { tr { th scope="col" { "Time" } th scope="col" { "Request" } th scope="col" { "Status" } th scope="col" { "Error" } } }
                    tbody { @for (_, r) in recent.iter().take(10) { tr {
                        td.muted.nowrap { (airlock_core::vault::rfc3339(r.at_ms / 1000)) }
                        td { code { (r.method) " " (r.host) (r.path) } }
                        td.nowrap { (r.status) } td { (r.error.as_deref().unwrap_or("")) }
                    } } }
                }
                p { a href={ "/requests?vault=" (p.vault) "&agent=" (agent) } { "All of its requests →" } }
            }
        }
    }
}

/// One service change as the operator reviews it: every field that decides where a credential
/// goes, old and new side by side for a replacement.
fn service_card(d: &ServiceDiff) -> Markup {
    html! { div.card { @match d {
        ServiceDiff::Add(s) => {
            h2 { "Adds service " code { (s.name) } }
            p { code { (s.describe()) } }
        }
        ServiceDiff::Replace { old, new } => {
            h2.warn { "Replaces service " code { (new.name) } }
            p { "Was: " code { (old.describe()) } }
            p { strong { "Now: " } code { (new.describe()) } }
        }
        ServiceDiff::Same(s) => {
            h2 { "Service " code { (s.name) } " (unchanged)" }
            p.muted { code { (s.describe()) } }
        }
        ServiceDiff::Remove(s) => {
            h2 { "Removes service " code { (s.name) } }
            p.muted { code { (s.describe()) } }
        }
        ServiceDiff::RemoveMissing(name) => {
            h2 { "Removes service " code { (name) } }
            p.muted { "The vault has no such service." }
        }
    } } }
}

fn proposal_body(
    session: &Session,
    p: &ProposalRecord,
    review: Option<&Review>,
    note: Option<Markup>,
) -> Markup {
    let status = p.status_at(now());
    let warnings = review.map(Review::reuse_warnings).unwrap_or_default();
    let weakened = review.map(|r| r.weakened.clone()).unwrap_or_default();
    html! {
        @if let Some(n) = note { (n) }
        @for w in &warnings { div.flash.bad.reuse { strong { "Stored credential re-used: " } (w) "." } }
        @for w in &weakened { div.flash.bad.reuse { strong { "Request rules lifted: " } (w) "." } }
        div.card {
            p { (status_cell(status)) " · vault " strong { (p.vault) } " · from " (p.agent.as_deref().unwrap_or("an agent")) }
            @if !p.user_message.is_empty() { h2 { "The agent says" } p.message { (inert(&p.user_message)) } }
            @if let Some(r) = &p.reason { p { "Reason: " (r) } }
        }
        @if let Some(h) = &p.held {
            div.card.held {
                h2 { "Held request" }
                p.muted { "A request rule stopped this request. Approve to send it with the credential; reject to refuse it. Nothing else changes." }
                dl {
                    @for (name, value) in h.lines() { dt { (name) } dd { code { (value) } } }
                    @if !h.body_preview.is_empty() { dt { "body preview" } dd { pre.message { (h.body_preview) } } }
                }
            }
        }
        @match review {
            Some(r) => { @for d in &r.services { (service_card(d)) } }
            None => { @for c in &p.services {
                div.card { @match c {
                    ServiceChange::Set(s) => { h2 { "Service " code { (s.name) } } p { code { (s.describe()) } } }
                    ServiceChange::Delete { name } => { h2 { "Remove service " code { (name) } } }
                } }
            } }
        }
        @let allow = review.map_or(&p.allow, |r| &r.allow);
        @if !allow.is_empty() {
            div.card {
                h2 { "Egress allowlist" }
                p.muted { "Hosts the agent may reach through an opaque tunnel, with no credential and nothing injected." }
                ul { @for h in allow { li { code { (h) } } } }
            }
        }
        @if status == ProposalStatus::Pending { (decision_forms(session, p, review, &warnings, &weakened)) }
        @if !p.message.is_empty() { div.card { h2 { "Note for developers" } p.message { (inert(&p.message)) } } }
        p.muted { "Digest " code { (p.digest) } }
    }
}

/// A pending proposal's approve form (a value for each empty credential slot, the confirmations
/// its warnings need) and its reject form.
fn decision_forms(
    session: &Session,
    p: &ProposalRecord,
    review: Option<&Review>,
    warnings: &[String],
    weakened: &[String],
) -> Markup {
    let replaces = |key: &str| {
        review.is_some_and(|r| {
            r.credentials
                .iter()
                .any(|c| c.key == key && c.replaces_stored)
        })
    };
    html! {
        form.card method="post" action={ "/proposals/" (p.id) "/approve" } {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="digest" value=(p.digest);
            @for c in &p.credentials { @match (c.action, c.sealed.is_some()) {
                (SlotAction::Delete, _) => { p { "Delete credential " code { (c.key) } } }
                (SlotAction::Set, true) => { p {
                    "Credential " code { (c.key) } ": supplied by the agent (sealed, never shown)."
                    @if replaces(&c.key) { " " strong.warn { "It replaces the value stored under " (c.key) "." } }
                } }
                (SlotAction::Set, false) => {
                    label for={ "value-" (c.key) } {
                        (c.key) @if !c.description.is_empty() { " — " (inert(&c.description)) }
                        @if replaces(&c.key) { " " strong.warn { "(replaces the stored value)" } }
                    }
                    @if c.obtain.starts_with("https://") || c.obtain.starts_with("http://") {
                        p.muted { "Get it at " a href=(c.obtain) rel="noopener noreferrer" target="_blank" { (inert(&c.obtain)) } }
                    }
                    @if !c.obtain_instructions.is_empty() { p.muted { (inert(&c.obtain_instructions)) } }
                    input id={ "value-" (c.key) } type="password" name={ "value:" (c.key) } autocomplete="off" required;
                }
            } }
            @if !warnings.is_empty() {
                label.confirm for="allow-reuse" {
                    input id="allow-reuse" type="checkbox" name="allow_credential_reuse" value="yes" required;
                    " I confirm: send the stored credentials named above to the new hosts."
                }
            }
            @if !weakened.is_empty() {
                label.confirm for="allow-rule-removal" {
                    input id="allow-rule-removal" type="checkbox" name="allow_rule_removal" value="yes" required;
                    " I confirm: lift the request rules named above."
                }
            }
            button type="submit" { "Approve" }
        }
        form.card method="post" action={ "/proposals/" (p.id) "/reject" } {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="digest" value=(p.digest);
            label for="reason" { "Reason (shown to the agent)" }
            input id="reason" type="text" name="reason" maxlength="500";
            button.secondary type="submit" { "Reject" }
        }
    }
}

async fn approve(
    State(state): St,
    Extension(session): Extension<Session>,
    Path(id): Path<u64>,
    Form(f): Fields,
) -> Response {
    let Some(who) = session.operator.as_deref().map(|o| format!("operator:{o}")) else {
        return login_redirect();
    };
    if !csrf_ok(&session, f.get("csrf")) {
        return forbidden();
    }
    let values: Vec<(String, Secret)> = f
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("value:").map(|key| {
                (
                    key.to_owned(),
                    Secret::new(v.trim_end_matches(['\r', '\n']).as_bytes().to_vec()),
                )
            })
        })
        .collect();
    let checked = |name: &str| f.get(name).is_some_and(|v| v == "yes");
    let confirmed = Confirmed {
        credential_reuse: checked("allow_credential_reuse"),
        rule_removal: checked("allow_rule_removal"),
    };
    let digest = f.get("digest").map(String::as_str);
    match state
        .store
        .approve_proposal(&who, id, digest, values, confirmed)
    {
        Ok(p) => {
            let done = flash(true, "Approved. The agent's next request will use it.");
            proposal_page(&state, &session, &p, Some(done))
        }
        Err(e) => vault_error(&state, &session, &e),
    }
}

async fn reject(
    State(state): St,
    Extension(session): Extension<Session>,
    Path(id): Path<u64>,
    Form(f): Fields,
) -> Response {
    let Some(who) = session.operator.as_deref().map(|o| format!("operator:{o}")) else {
        return login_redirect();
    };
    if !csrf_ok(&session, f.get("csrf")) {
        return forbidden();
    }
    let reason = f.get("reason").cloned().unwrap_or_default();
    match state
        .store
        .reject_proposal(&who, id, &reason, f.get("digest").map(String::as_str))
    {
        Ok(p) => proposal_page(&state, &session, &p, Some(flash(true, "Rejected."))),
        Err(e) => vault_error(&state, &session, &e),
    }
}

/// Every service's request rules with their hits in the request log: how many requests each
/// rule decided, and how many of those it refused or held.
async fn rules(State(state): St, SignedIn(session): SignedIn) -> Response {
    let log = state.log.rows();
    let rows = log.rows.as_slice();
    // (vault, service, rule) -> (decided, refused)
    let mut hits: HashMap<(&str, &str, &str), (u64, u64)> = HashMap::new();
    for (_, r) in rows {
        if let (Some(service), Some(rule)) = (&r.service, &r.rule) {
            let e = hits
                .entry((r.vault.as_str(), service.as_str(), rule.as_str()))
                .or_default();
            e.0 += 1;
            e.1 += u64::from(r.error.is_some());
        }
    }
    let vaults = state.store.vaults().unwrap_or_default();
    let with_rules: Vec<_> = vaults
        .iter()
        .map(|v| {
            let services = state.store.services(&v.name).unwrap_or_default();
            let services: Vec<_> = services
                .into_iter()
                .filter(|s| !s.spec.rules.is_empty() || s.spec.rules_default.is_some())
                .collect();
            (v, services)
        })
        .filter(|(_, s)| !s.is_empty())
        .collect();
    render(
        &state,
        &session,
        "Request rules",
        html! {
            p.muted { "Rules naming the agent are checked first, then the others, in order; the first that matches decides. Hits count the request log's rows." }
            @if with_rules.is_empty() { p { "No service has rules. Add " code { "rules:" } " to a service (see the manual's Request rules chapter, docs/src/rules.md)." } }
            @for (v, services) in &with_rules { @for s in services {
                div.card {
                    h2 { "Vault " (v.name) " · service " code { (s.spec.name) } }
                    table {
                        thead { tr { th { "Rule" } th { "Action" } th { "When" } th { "Hits" } th { "Refused" } } }
                        tbody {
                            @for r in &s.spec.rules {
                                @let (decided, refused) = hits.get(&(v.name.as_str(), s.spec.name.as_str(), r.name.as_str())).copied().unwrap_or_default();
                                tr {
                                    td { code { (r.name) } }
                                    td { (r.per_minute.map_or_else(|| r.action.as_str().to_owned(), |n| format!("limit {n}/min"))) }
                                    td { code { (r.conditions()) } }
                                    td { (decided) } td { (refused) }
                                }
                            }
                            tr { td { "(no rule matched)" } td { (s.spec.rules_default().as_str()) } td { "" } td { "" } td { "" } }
                        }
                    }
                }
            } }
        },
    )
}

/// Hosts agents tried that have no service (still), per vault, each with a service form filled
/// in for it (the catalog's template when it has the host): one step from "the agent wanted
/// this" to serving it.
async fn hosts_tried(State(state): St, SignedIn(session): SignedIn) -> Response {
    let mut tried = airlock_core::requestlog::hosts_tried(&state.log.rows().rows);
    let mut served: HashMap<String, Vec<HostName>> = HashMap::new();
    tried.retain(|t| {
        let hosts = served
            .entry(t.vault.clone())
            .or_insert_with(|| state.store.service_hosts(&t.vault).unwrap_or_default());
        !hosts.iter().any(|h| h.covers(&t.host))
    });
    render(
        &state,
        &session,
        "Hosts tried",
        html! {
            @if tried.is_empty() { p.muted { "No agent has been refused a host yet." } }
            @for t in &tried {
                div.card {
                    h2 { code { (t.host) } " · vault " (t.vault) }
                    p.muted { (t.tries) " tries, last " (airlock_core::vault::rfc3339(t.last_ms / 1000)) " by " (t.agents.join(", ")) }
                    form method="post" action={ "/vaults/" (t.vault) "/services" } {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for={ "yaml-" (t.vault) "-" (t.host) } { "Serve it: edit the name and the credential key, then save (set the credential on the Vaults page)" }
                        textarea id={ "yaml-" (t.vault) "-" (t.host) } name="yaml" rows="4" {
                            (airlock_core::catalog::draft(&t.host))
                        }
                        button { "Add service" }
                    }
                }
            }
        },
    )
}
