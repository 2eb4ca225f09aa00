//! Management pages: vaults (create, unmatched-host policy), services (add or replace from
//! YAML, enable/disable, remove), credentials (set and replace, delete; names and dates only,
//! never a value), agents (create and rotate show the token once; revoke) and scoped tokens.
//! Each form posts the session's CSRF token and acts through the same store operations as the
//! CLI, so the same validation and audit records apply.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use airlock_core::secret::Secret;
use airlock_core::spec::ServiceFile;
use airlock_core::vault::ops::AgentInfo;
use airlock_core::vault::records::{CredentialRecord, ServiceRecord, VaultRecord};
use airlock_core::vault::{UnmatchedPolicy, VaultError};
use axum::Router;
use axum::extract::{Extension, Path, Query};
use axum::response::Response;
use axum::routing::{get, post};
use maud::{Markup, html};

use crate::AppState;
use crate::listing;
use crate::logs::urlencode;
use crate::respond::{Fields, SignedIn, St, forbidden, login_redirect, render};
use crate::security::{Session, csrf_ok};
use crate::views::{flash, search_form};

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/vaults", get(vaults).post(create_vault))
        .route("/vaults/{vault}", get(vault_page))
        .route("/vaults/{vault}/policy", post(set_policy))
        .route("/vaults/{vault}/services", post(set_services))
        .route("/vaults/{vault}/services/template", post(add_from_catalog))
        .route(
            "/vaults/{vault}/services/{name}/toggle",
            post(toggle_service),
        )
        .route(
            "/vaults/{vault}/services/{name}/remove",
            post(remove_service),
        )
        .route("/vaults/{vault}/credentials", post(set_credential))
        .route(
            "/vaults/{vault}/credentials/oauth",
            post(set_oauth_credential),
        )
        .route(
            "/vaults/{vault}/credentials/{key}/delete",
            post(delete_credential),
        )
        .route("/agents", get(agents).post(create_agent))
        .route("/agents/{name}/revoke", post(revoke_agent))
        .route("/agents/{name}/rotate", post(rotate_agent))
        .route("/tokens", post(mint_token))
}

/// A form post refused before it acts: the login page or 403 (boxed: responses are large).
pub(crate) struct Reject(Box<Response>);

impl axum::response::IntoResponse for Reject {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// The acting operator for a form post: logged in and carrying the right CSRF token.
fn actor(session: &Session, f: &Fields) -> Result<String, Reject> {
    let Some(op) = session.operator.as_deref() else {
        return Err(Reject(Box::new(login_redirect())));
    };
    if !csrf_ok(session, f.get("csrf")) {
        return Err(Reject(Box::new(forbidden())));
    }
    Ok(format!("operator:{op}"))
}

fn result(r: Result<String, VaultError>) -> Markup {
    match r {
        Ok(m) => flash(true, &m),
        Err(e) => flash(false, &e.to_string()),
    }
}

fn field<'a>(f: &'a Fields, name: &str) -> &'a str {
    f.get(name).map_or("", String::as_str)
}

fn button(session: &Session, action: &str, label: &str) -> Markup {
    html! { form.inline method="post" action=(action) { input type="hidden" name="csrf" value=(session.csrf); button { (label) } } }
}

/// A destructive action in two steps: `label` opens a note saying what is lost, and only its
/// own button (which sends `confirm=yes`) carries the action out; the handler refuses a post
/// without it ([`confirmed`]), so one click never revokes, rotates, deletes or disables.
fn destructive(session: &Session, action: &str, label: &str, lost: &str) -> Markup {
    html! {
        details.confirm {
            summary { (label) }
            p { (lost) }
            form.inline method="post" action=(action) {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="confirm" value="yes";
                button.danger { "Yes, " (label) }
            }
        }
    }
}

/// Whether a destructive form was confirmed (see [`destructive`]); a flash saying it was not.
fn confirmed(f: &Fields, what: &str) -> Result<(), Markup> {
    if f.get("confirm").is_some_and(|v| v == "yes") {
        return Ok(());
    }
    Err(flash(
        false,
        &format!("Nothing done: {what} needs its confirmation."),
    ))
}

async fn vaults(state: St, SignedIn(session): SignedIn) -> Response {
    vaults_page(&state, &session, None)
}

fn vaults_page(state: &AppState, session: &Session, note: Option<Markup>) -> Response {
    let vaults = state.store.vaults().unwrap_or_default();
    render(
        state,
        session,
        "Vaults",
        html! {
            @if let Some(n) = note { (n) }
            table {
                thead { tr { th scope="col" { "Vault" } th scope="col" { "Services" } th scope="col" { "Credentials" } th scope="col" { "Hosts without a service" } } }
                tbody { @for v in &vaults { tr {
                    td { a href={ "/vaults/" (v.name) } { (v.name) } }
                    td { (state.store.services(&v.name).map_or(0, |s| s.len())) }
                    td { (state.store.credentials(&v.name).map_or(0, |c| c.len())) }
                    td { (format!("{:?}", v.policy).to_lowercase()) }
                } } }
            }
            @for v in &vaults { (vault_card(state, session, v, &ListQuery::default())) }
            form.card method="post" action="/vaults" {
                input type="hidden" name="csrf" value=(session.csrf);
                label for="new-vault" { "New vault" }
                input id="new-vault" type="text" name="name" placeholder="team-a" required;
                button { "Create vault" }
            }
        },
    )
}

/// One vault's services a page at a time (see [`crate::listing`]; `sq`/`safter` on the vault's
/// own page), each with its enable, disable and remove controls.
fn services_table(
    state: &AppState,
    session: &Session,
    v: &VaultRecord,
    list: &ListQuery,
) -> Markup {
    let all = state.store.services(&v.name).unwrap_or_default();
    let text = |s: &ServiceRecord| format!("{} {}", s.spec.name, s.spec.host);
    let (shown, next) = listing::page(
        &all,
        |s| s.spec.name.as_str(),
        text,
        &list.sq,
        list.safter.as_deref(),
    );
    html! {
        @if all.len() > listing::PAGE {
            (search_form(&format!("/vaults/{}", v.name), (&format!("svc-search-{}", v.name), "sq"), "Search services (name or host)", &list.sq))
        }
        table {
        thead { tr { th { "Service" } th { "Host" } th { "Auth" } th { "Enabled" } th { span.sr { "Actions" } } } }
        tbody { @for s in &shown { tr {
            td { (s.spec.name) } td { code { (s.spec.host) } } td { (s.spec.auth_type()) }
            td { (if s.spec.enabled { "yes" } else { "no" }) }
            td {
                @let base = format!("/vaults/{}/services/{}", v.name, s.spec.name);
                @if s.spec.enabled {
                    (destructive(session, &format!("{base}/toggle"), "disable", &format!("Agents' requests to {} are refused (service_disabled) until service {} is enabled again.", s.spec.host, s.spec.name)))
                } @else {
                    (button(session, &format!("{base}/toggle"), "enable"))
                }
                " " (destructive(session, &format!("{base}/remove"), "remove", &format!("Service {} and its rules are deleted: agents' requests to {} are refused (no_service). Its credentials stay.", s.spec.name, s.spec.host)))
            }
        } } }
        }
        p.muted { (all.len()) " services; " (shown.len()) " shown" }
        @if let Some(after) = &next {
            p { a rel="next" href={ "/vaults/" (v.name) "?sq=" (urlencode(&list.sq)) "&safter=" (urlencode(after)) } { "More services →" } }
        }
    }
}

/// One vault's credentials a page at a time (`cq`/`cafter` on the vault's own page), names and
/// dates only, each with its delete control.
fn credentials_table(
    state: &AppState,
    session: &Session,
    v: &VaultRecord,
    list: &ListQuery,
) -> Markup {
    let all = state.store.credentials(&v.name).unwrap_or_default();
    let text = |(k, _): &(String, CredentialRecord)| k.clone();
    let (shown, next) = listing::page(
        &all,
        |(k, _)| k.as_str(),
        text,
        &list.cq,
        list.cafter.as_deref(),
    );
    html! {
        @if all.len() > listing::PAGE {
            (search_form(&format!("/vaults/{}", v.name), (&format!("cred-search-{}", v.name), "cq"), "Search credentials", &list.cq))
        }
        table {
            thead { tr { th { "Key" } th { "Kind" } th { "Created" } th { "Updated" } th { span.sr { "Actions" } } } }
            tbody { @for (k, c) in &shown { tr {
                td { code { (k) } }
                td { @if let Some(m) = &c.oauth { "OAuth: " (m.status()) } @else { "static" } }
                td.muted { (airlock_core::vault::rfc3339(c.created_at)) } td.muted { (airlock_core::vault::rfc3339(c.updated_at)) }
                td { (destructive(session, &format!("/vaults/{}/credentials/{k}/delete", v.name), "delete", &format!("The value of {k} is gone for good; services of vault {} that use it fail (credential_missing) until it is set again.", v.name))) }
            } } }
        }
        @if let Some(after) = &next {
            p { a rel="next" href={ "/vaults/" (v.name) "?cq=" (urlencode(&list.cq)) "&cafter=" (urlencode(after)) } { "More credentials →" } }
        }
    }
}

/// One vault's services, credentials and the forms that change them, each form behind its own
/// control.
fn vault_card(state: &AppState, session: &Session, v: &VaultRecord, list: &ListQuery) -> Markup {
    html! {
    div.card {
        h2 { (v.name) }
        p {
            "Hosts without a service: " strong { (format!("{:?}", v.policy).to_lowercase()) } " "
            (button(session, &format!("/vaults/{}/policy", v.name), if v.policy == UnmatchedPolicy::Deny { "allow opaque tunnels" } else { "deny them" }))
        }
        (services_table(state, session, v, list))
        details.form { summary { "Add or replace services (YAML)" }
        form method="post" action={ "/vaults/" (v.name) "/services" } {
            input type="hidden" name="csrf" value=(session.csrf);
            label for={ "yaml-" (v.name) } { "Add or replace services (YAML, as for " code { "airlock service set" } ")" }
            textarea id={ "yaml-" (v.name) } name="yaml" rows="5" placeholder="services:\n  - name: stripe\n    host: api.stripe.com\n    auth: {type: bearer, token: STRIPE_KEY}" {}
            button { "Save services" }
        }
        }
        details.form { summary { "Add a provider from the catalog" }
        form method="post" action={ "/vaults/" (v.name) "/services/template" } {
            input type="hidden" name="csrf" value=(session.csrf);
            label for={ "template-" (v.name) } { "Or add a well-known provider from the catalog" }
            select id={ "template-" (v.name) } name="template" {
                @for t in airlock_core::catalog::TEMPLATES {
                    option value=(t.name) { (t.title) " (" (t.host) ", key " (t.keys.join(", ")) ")" }
                }
            }
            label for={ "tname-" (v.name) } { "Service name (default: the template's)" }
            input id={ "tname-" (v.name) } type="text" name="name";
            label for={ "tkeys-" (v.name) } { "Credential key(s), comma separated (default: the template's; set the credential first)" }
            input id={ "tkeys-" (v.name) } type="text" name="credentials";
            button { "Add from the catalog" }
        }
        }
        h2 { "Credentials" }
        (credentials_table(state, session, v, list))
        details.form { summary { "Set or replace a credential" }
        form method="post" action={ "/vaults/" (v.name) "/credentials" } {
            input type="hidden" name="csrf" value=(session.csrf);
            label for={ "key-" (v.name) } { "Set or replace a credential (values are never shown again)" }
            input id={ "key-" (v.name) } type="text" name="key" placeholder="STRIPE_KEY" required;
            input type="password" name="value" placeholder="value" autocomplete="off" required;
            button { "Seal credential" }
        }
        }
        details.form { summary { "Import an OAuth token pair" }
        form method="post" action={ "/vaults/" (v.name) "/credentials/oauth" } {
            input type="hidden" name="csrf" value=(session.csrf);
            label for={ "okey-" (v.name) } { "Import an OAuth token pair (airlock renews the access token with the refresh token)" }
            input id={ "okey-" (v.name) } type="text" name="key" placeholder="CLAUDE_OAUTH" required;
            label for={ "otokens-" (v.name) } { "Token file: a token response, Claude Code's .credentials.json, Codex's auth.json, or a bare refresh token" }
            textarea id={ "otokens-" (v.name) } name="tokens" rows="3" autocomplete="off" spellcheck="false" required {}
            label for={ "oendpoint-" (v.name) } { "Token endpoint (https://; default: the agent's own, for a recognised file)" }
            input id={ "oendpoint-" (v.name) } type="url" name="token_endpoint" placeholder="https://auth.example.com/oauth/token";
            label for={ "oclient-" (v.name) } { "Client id (default: the agent's own, for a recognised file)" }
            input id={ "oclient-" (v.name) } type="text" name="client_id";
            label for={ "oformat-" (v.name) } { "Refresh request body" }
            select id={ "oformat-" (v.name) } name="request" {
                option value="" { "default (form, or the agent's own)" }
                option value="form" { "form (RFC 6749)" }
                option value="json" { "JSON" }
            }
            button { "Import OAuth credential" }
        }
        }
    }
    }
}

/// Scoped-token counts per vault, with the store generation and when they were counted.
pub(crate) type TokenCounts =
    std::sync::Mutex<HashMap<String, (u64, std::time::Instant, Arc<BTreeMap<String, u64>>)>>;

/// `vault`'s live scoped tokens by holder: counted again after a vault write, or after ten
/// seconds (tokens expire without one).
fn token_counts(state: &AppState, vault: &str) -> Arc<BTreeMap<String, u64>> {
    let generation = state.store.generation().unwrap_or(0);
    let mut cache = state
        .token_counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((g, at, counts)) = cache.get(vault)
        && *g == generation
        && at.elapsed() < std::time::Duration::from_secs(10)
    {
        return counts.clone();
    }
    let counts = Arc::new(state.store.scoped_token_counts(vault).unwrap_or_default());
    cache.insert(
        vault.to_owned(),
        (generation, std::time::Instant::now(), counts.clone()),
    );
    counts
}

/// One vault on its own: its card, then the agents that may use it (a page at a time, in
/// natural order, searchable) with their live scoped tokens counted (never listed), so the page
/// grows neither with the agents nor with the tokens.
async fn vault_page(
    state: St,
    SignedIn(session): SignedIn,
    Path(name): Path<String>,
    Query(list): Query<ListQuery>,
) -> Response {
    let v = match state.store.vault(&name) {
        Ok(v) => v,
        Err(e) => return crate::respond::vault_error(&state, &session, &e),
    };
    let granted: Vec<_> = state
        .store
        .agents()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.vaults.contains(&v.name))
        .collect();
    let name_of = |a: &AgentInfo| a.name.clone();
    let (agents, next) = listing::page(
        &granted,
        |a| a.name.as_str(),
        name_of,
        &list.q,
        list.after.as_deref(),
    );
    let scoped = token_counts(&state, &v.name);
    render(
        &state,
        &session,
        &format!("Vault {}", v.name),
        html! {
            (vault_card(&state, &session, &v, &list))
            div.card {
                h2 { "Agents and their scoped tokens" }
                table {
                    thead { tr { th scope="col" { "Agent" } th scope="col" { "Status" } th scope="col" { "Live scoped tokens" } } }
                    tbody {
                        @for a in &agents { tr {
                            td { (a.name) } td { (if a.revoked { "revoked" } else { "active" }) }
                            td { (scoped.get(&a.name).copied().unwrap_or(0)) }
                        } }
                        @for (who, n) in scoped.iter().filter(|(who, _)| list.after.is_none() && !granted.iter().any(|a| &&a.name == who)) { tr {
                            td { (who) } td.muted { "no agent (minted by)" } td { (n) }
                        } }
                    }
                }
                p.muted { (granted.len()) " agents may use it; " (agents.len()) " shown" }
                @if let Some(after) = &next {
                    p { a rel="next" href={ "/vaults/" (v.name) "?q=" (urlencode(&list.q)) "&after=" (urlencode(after)) } { "More agents →" } }
                }
                p { a href={ "/requests?vault=" (v.name) } { "Its request log →" } }
            }
        },
    )
}

async fn create_vault(
    state: St,
    Extension(session): Extension<Session>,
    f: Fields,
) -> Result<Response, Reject> {
    let who = actor(&session, &f)?;
    let name = field(&f, "name");
    let note = result(
        state
            .store
            .create_vault(&who, name)
            .map(|_| format!("Created vault {name}.")),
    );
    Ok(vaults_page(&state, &session, Some(note)))
}

async fn set_policy(
    state: St,
    Extension(session): Extension<Session>,
    Path(vault): Path<String>,
    f: Fields,
) -> Result<Response, Reject> {
    let who = actor(&session, &f)?;
    let r = state.store.vault(&vault).and_then(|v| {
        let next = if v.policy == UnmatchedPolicy::Deny {
            UnmatchedPolicy::Tunnel
        } else {
            UnmatchedPolicy::Deny
        };
        state.store.set_policy(&who, &vault, next).map(|()| {
            format!("Vault {vault}: hosts without a service are now {next:?}.").to_lowercase()
        })
    });
    Ok(vaults_page(&state, &session, Some(result(r))))
}

async fn set_services(
    state: St,
    Extension(session): Extension<Session>,
    Path(vault): Path<String>,
    f: Fields,
) -> Result<Response, Reject> {
    let who = actor(&session, &f)?;
    let r = ServiceFile::from_yaml(field(&f, "yaml"))
        .map_err(VaultError::from)
        .and_then(|file| {
            let c = state
                .store
                .set_services(&who, &vault, file.services, false)?;
            Ok(format!(
                "Vault {vault}: {} added, {} updated.",
                c.added.len(),
                c.updated.len()
            ))
        });
    Ok(vaults_page(&state, &session, Some(result(r))))
}

/// A service from the built-in catalog: template, optional name, credential keys (comma
/// separated, in the template's order; its defaults when empty).
async fn add_from_catalog(
    state: St,
    Extension(session): Extension<Session>,
    Path(vault): Path<String>,
    f: Fields,
) -> Result<Response, Reject> {
    let who = actor(&session, &f)?;
    let keys: Vec<String> = field(&f, "credentials")
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    let name = Some(field(&f, "name").trim()).filter(|n| !n.is_empty());
    let r = airlock_core::catalog::find(field(&f, "template"))
        .and_then(|t| t.service(name, &keys))
        .map_err(|e| VaultError::Invalid(e.to_string()))
        .and_then(|spec| {
            let summary = format!("Vault {vault}: service {}: {}.", spec.name, spec.describe());
            state.store.set_services(&who, &vault, vec![spec], false)?;
            Ok(summary)
        });
    Ok(vaults_page(&state, &session, Some(result(r))))
}

async fn toggle_service(
    state: St,
    Extension(session): Extension<Session>,
    Path((vault, name)): Path<(String, String)>,
    f: Fields,
) -> Result<Response, Reject> {
    let who = actor(&session, &f)?;
    let found = state.store.services(&vault).and_then(|list| {
        let record = list.into_iter().find(|s| s.spec.name == name);
        record.map(|s| s.spec).ok_or_else(|| VaultError::NotFound {
            kind: "service",
            name: name.clone(),
        })
    });
    // Disabling is destructive; enabling is not.
    if found.as_ref().is_ok_and(|spec| spec.enabled)
        && let Err(note) = confirmed(&f, "disabling a service")
    {
        return Ok(vaults_page(&state, &session, Some(note)));
    }
    let r = found.and_then(|mut spec| {
        spec.enabled = !spec.enabled;
        let word = if spec.enabled { "enabled" } else { "disabled" };
        state.store.set_services(&who, &vault, vec![spec], false)?;
        Ok(format!("Service {name} {word}."))
    });
    Ok(vaults_page(&state, &session, Some(result(r))))
}

async fn remove_service(
    state: St,
    Extension(session): Extension<Session>,
    Path((vault, name)): Path<(String, String)>,
    f: Fields,
) -> Result<Response, Reject> {
    let who = actor(&session, &f)?;
    if let Err(note) = confirmed(&f, "removing a service") {
        return Ok(vaults_page(&state, &session, Some(note)));
    }
    let note = result(
        state
            .store
            .remove_service(&who, &vault, &name)
            .map(|()| format!("Removed service {name}.")),
    );
    Ok(vaults_page(&state, &session, Some(note)))
}

async fn set_credential(
    state: St,
    Extension(session): Extension<Session>,
    Path(vault): Path<String>,
    f: Fields,
) -> Result<Response, Reject> {
    let who = actor(&session, &f)?;
    let key = field(&f, "key").to_owned();
    let value = Secret::new(
        field(&f, "value")
            .trim_end_matches(['\r', '\n'])
            .as_bytes()
            .to_vec(),
    );
    let r = state
        .store
        .set_credential(&who, &vault, &key, &value)
        .map(|new| {
            format!(
                "{} credential {key}.",
                if new { "Sealed" } else { "Replaced" }
            )
        });
    Ok(vaults_page(&state, &session, Some(result(r))))
}

async fn set_oauth_credential(
    state: St,
    Extension(session): Extension<Session>,
    Path(vault): Path<String>,
    f: Fields,
) -> Result<Response, Reject> {
    use airlock_core::vault::oauth::{Import, RequestFormat, Settings};
    let who = actor(&session, &f)?;
    let key = field(&f, "key").to_owned();
    let given = |name| Some(field(&f, name).trim().to_owned()).filter(|v| !v.is_empty());
    let r = Import::parse(field(&f, "tokens").as_bytes())
        .and_then(|import| {
            let request = match field(&f, "request") {
                "form" => Some(RequestFormat::Form),
                "json" => Some(RequestFormat::Json),
                _ => None,
            };
            let settings = Settings::resolve(
                &import,
                given("token_endpoint"),
                given("client_id"),
                None,
                request,
            )?;
            Ok((import, settings))
        })
        .map_err(VaultError::Invalid)
        .and_then(|(import, settings)| {
            state
                .store
                .set_oauth_credential(&who, &vault, &key, &settings, &import)
        })
        .map(|new| {
            format!(
                "{} OAuth credential {key}; the data plane renews its access token. Delete the agent's own copy of these tokens.",
                if new { "Stored" } else { "Replaced" }
            )
        });
    Ok(vaults_page(&state, &session, Some(result(r))))
}

async fn delete_credential(
    state: St,
    Extension(session): Extension<Session>,
    Path((vault, key)): Path<(String, String)>,
    f: Fields,
) -> Result<Response, Reject> {
    let who = actor(&session, &f)?;
    if let Err(note) = confirmed(&f, "deleting a credential") {
        return Ok(vaults_page(&state, &session, Some(note)));
    }
    let note = result(
        state
            .store
            .delete_credential(&who, &vault, &key)
            .map(|()| format!("Deleted credential {key}.")),
    );
    Ok(vaults_page(&state, &session, Some(note)))
}

async fn agents(state: St, SignedIn(session): SignedIn, Query(list): Query<ListQuery>) -> Response {
    agents_page(&state, &session, None, &list)
}

/// A long list's search and cursor (see [`crate::listing`]).
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ListQuery {
    /// Agents: the search and the cursor.
    #[serde(default)]
    q: String,
    after: Option<String>,
    /// A vault's services and credentials: theirs.
    #[serde(default)]
    sq: String,
    safter: Option<String>,
    #[serde(default)]
    cq: String,
    cafter: Option<String>,
}

/// A token shown once, with the reminder that it will not be shown again.
fn token_note(what: &str, token: &Secret) -> Markup {
    html! { div.flash.ok { (what) " Copy it now; it is not shown again:" br; code { (String::from_utf8_lossy(token.expose())) } } }
}

fn agents_page(
    state: &AppState,
    session: &Session,
    note: Option<Markup>,
    list: &ListQuery,
) -> Response {
    let all = state.store.agents().unwrap_or_default();
    let text = |a: &AgentInfo| format!("{} {}", a.name, a.vaults.join(" "));
    let (shown, next) = listing::page(
        &all,
        |a| a.name.as_str(),
        text,
        &list.q,
        list.after.as_deref(),
    );
    let day = state.log.day();
    let seen = |name: &str| day.as_ref().and_then(|d| d.seen.get(name).copied());
    render(
        state,
        session,
        "Agents",
        html! {
            @if let Some(n) = note { (n) }
            (search_form("/agents", ("agent-search", "q"), "Search agents (name or vault)", &list.q))
            p.muted { (all.len()) " agents; " (shown.len()) " shown, in natural order" }
            table {
                thead { tr { th { "Agent" } th { "Vaults" } th { "Status" } th { "Last seen" } th { "Requests (day)" } th { "Created" } th { span.sr { "Actions" } } } }
                tbody { @for a in &shown { tr {
                    td { (a.name) } td { (a.vaults.join(", ")) } td { (if a.revoked { "revoked" } else { "active" }) }
                    @let (day_count, last_ms) = seen(&a.name).unwrap_or((0, 0));
                    td.muted { (if last_ms == 0 { "not in the log".to_owned() } else { airlock_core::vault::rfc3339(last_ms / 1000) }) }
                    td { (day_count) }
                    td.muted { (airlock_core::vault::rfc3339(a.created_at)) }
                    td { @if !a.revoked {
                        (destructive(session, &format!("/agents/{}/rotate", a.name), "rotate token", &format!("Agent {}'s token and every scoped token minted with it stop working now; you get a new token to hand to the agent.", a.name))) " "
                        (destructive(session, &format!("/agents/{}/revoke", a.name), "revoke", &format!("Agent {} and every scoped token it minted stop working now, for good (a revoked agent is not restored).", a.name)))
                    } }
                } } }
            }
            @if let Some(after) = &next {
                p { a rel="next" href={ "/agents?q=" (urlencode(&list.q)) "&after=" (urlencode(after)) } { "More agents →" } }
            }
            form.card method="post" action="/agents" {
                input type="hidden" name="csrf" value=(session.csrf);
                label for="agent-name" { "New agent" }
                input id="agent-name" type="text" name="name" placeholder="ci-bot" required;
                label for="agent-vaults" { "Vaults (comma separated; the first is its default)" }
                input id="agent-vaults" type="text" name="vaults" value="default" required;
                button { "Create agent" }
            }
            form.card method="post" action="/tokens" {
                input type="hidden" name="csrf" value=(session.csrf);
                label for="token-vault" { "Scoped token for one vault" }
                input id="token-vault" type="text" name="vault" value="default" required;
                label for="token-ttl" { "Lifetime (e.g. 1h, 8h, 7d)" }
                input id="token-ttl" type="text" name="ttl" value="1h" required;
                button { "Mint scoped token" }
            }
        },
    )
}

async fn create_agent(
    state: St,
    Extension(session): Extension<Session>,
    f: Fields,
) -> Result<Response, Reject> {
    let who = actor(&session, &f)?;
    let name = field(&f, "name");
    let vaults: Vec<String> = field(&f, "vaults")
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    let note = match state.store.create_agent(&who, name, &vaults) {
        Ok(m) => token_note(&format!("Created agent {name}."), &m.token),
        Err(e) => flash(false, &e.to_string()),
    };
    Ok(agents_page(
        &state,
        &session,
        Some(note),
        &ListQuery::default(),
    ))
}

async fn revoke_agent(
    state: St,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    f: Fields,
) -> Result<Response, Reject> {
    let who = actor(&session, &f)?;
    if let Err(note) = confirmed(&f, "revoking an agent") {
        return Ok(agents_page(
            &state,
            &session,
            Some(note),
            &ListQuery::default(),
        ));
    }
    let note = result(
        state
            .store
            .revoke_agent(&who, &name)
            .map(|()| format!("Revoked agent {name} and its scoped tokens.")),
    );
    Ok(agents_page(
        &state,
        &session,
        Some(note),
        &ListQuery::default(),
    ))
}

async fn rotate_agent(
    state: St,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    f: Fields,
) -> Result<Response, Reject> {
    let who = actor(&session, &f)?;
    if let Err(note) = confirmed(&f, "rotating an agent's token") {
        return Ok(agents_page(
            &state,
            &session,
            Some(note),
            &ListQuery::default(),
        ));
    }
    let note = match state.store.rotate_agent(&who, &name) {
        Ok(m) => token_note(
            &format!("Rotated the token of {name}; the old one stopped working."),
            &m.token,
        ),
        Err(e) => flash(false, &e.to_string()),
    };
    Ok(agents_page(
        &state,
        &session,
        Some(note),
        &ListQuery::default(),
    ))
}

async fn mint_token(
    state: St,
    Extension(session): Extension<Session>,
    f: Fields,
) -> Result<Response, Reject> {
    let who = actor(&session, &f)?;
    let vault = field(&f, "vault");
    let note = match airlock_core::config::parse_duration(field(&f, "ttl")) {
        Err(e) => flash(false, &e),
        Ok(ttl) => match state.store.mint_token(&who, vault, ttl, None) {
            Ok((m, expires)) => token_note(
                &format!(
                    "Scoped token for {vault}, expires {}.",
                    airlock_core::vault::rfc3339(expires)
                ),
                &m.token,
            ),
            Err(e) => flash(false, &e.to_string()),
        },
    };
    Ok(agents_page(
        &state,
        &session,
        Some(note),
        &ListQuery::default(),
    ))
}
