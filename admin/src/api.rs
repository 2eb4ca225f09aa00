//! The admin JSON API, served on its own Unix socket only (`api.sock`; its peer-credential check
//! is the authentication). Neither the TCP listener nor the UI socket routes here, so a bridge
//! made for a browser does not expose it; requests with a non-loopback Host, or that a browser
//! marks as cross-site, are refused as on the pages ([`crate::security::api_guard`]).
//!
//! `GET /api/proposals[?status=S]`, `GET /api/proposals/{id}`,
//! `POST /api/proposals/{id}/approve {"digest", "values": {"KEY": "value"},
//! "allow_credential_reuse"}`,
//! `POST /api/proposals/{id}/reject {"digest", "reason"}`, `GET /api/vaults`, `GET /api/audit`,
//! and the admin process's own Prometheus metrics at `GET /metrics`.
//! Errors are `{"error": code, "message"}` with the vault's stable codes. Values are write-only.
//! Decisions are audited as `admin-socket uid=N`, the peer's uid from SO_PEERCRED.

use std::collections::BTreeMap;
use std::sync::Arc;

use airlock_core::secret::Secret;
use airlock_core::vault::VaultError;
use airlock_core::vault::proposals::{Confirmed, review_json};
use airlock_core::vault::records::{ProposalRecord, ProposalStatus};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::socket::Peer;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/proposals", get(list))
        .route("/api/proposals/{id}", get(show))
        .route("/api/proposals/{id}/approve", post(approve))
        .route("/api/proposals/{id}/reject", post(reject))
        .route("/api/vaults", get(vaults))
        .route("/api/audit", get(audit))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(crate::security::api_guard))
        .with_state(state)
}

fn error(e: &VaultError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(json!({"error": e.code(), "message": e.to_string()})),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
}

async fn list(State(state): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> Response {
    let status = match q
        .status
        .as_deref()
        .map(|s| serde_json::from_value::<ProposalStatus>(json!(s)))
    {
        Some(Err(_)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "bad_request", "message": "unknown status"})),
            )
                .into_response();
        }
        Some(Ok(s)) => Some(s),
        None => None,
    };
    match state.store.proposals(None, status) {
        Ok(l) => match l
            .iter()
            .map(|p| review_json(&state.store, p))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(v) => Json(v).into_response(),
            Err(e) => error(&e),
        },
        Err(e) => error(&e),
    }
}

/// Prometheus text: proposals by status and the sessions held (this process's own figures;
/// the data plane serves its own on `--metrics-listen`).
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let proposals = match state.store.proposals(None, None) {
        Ok(l) => l,
        Err(e) => return error(&e),
    };
    let now = airlock_core::vault::now();
    let mut counts = [0u64; 4];
    for p in &proposals {
        counts[match p.status_at(now) {
            ProposalStatus::Pending => 0,
            ProposalStatus::Applied => 1,
            ProposalStatus::Rejected => 2,
            ProposalStatus::Expired => 3,
        }] += 1;
    }
    let mut out = String::from(
        "# HELP airlock_admin_proposals Proposals by status.\n# TYPE airlock_admin_proposals gauge\n",
    );
    for (status, n) in ["pending", "applied", "rejected", "expired"]
        .iter()
        .zip(counts)
    {
        out.push_str(&format!(
            "airlock_admin_proposals{{status=\"{status}\"}} {n}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP airlock_admin_sessions Browser sessions held now.\n# TYPE airlock_admin_sessions gauge\nairlock_admin_sessions {}\n",
        state.sessions.count()
    ));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}

async fn show(State(state): State<Arc<AppState>>, Path(id): Path<u64>) -> Response {
    reply(&state, state.store.proposal(id))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    digest: Option<String>,
    #[serde(default)]
    values: BTreeMap<String, String>,
    #[serde(default)]
    reason: String,
    /// The operator's confirmation that stored credentials may go to new hosts (see the
    /// proposal's `review.credential_reuse`).
    #[serde(default)]
    allow_credential_reuse: bool,
    /// The operator's confirmation that request rules may be lifted (see the proposal's
    /// `review.rules_weakened`).
    #[serde(default)]
    allow_rule_removal: bool,
}

/// A proposal in its review form, or the error.
fn reply(state: &AppState, p: Result<ProposalRecord, VaultError>) -> Response {
    match p.and_then(|p| review_json(&state.store, &p)) {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(&e),
    }
}

async fn approve(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<u64>,
    Json(d): Json<Decision>,
) -> Response {
    let values = d
        .values
        .into_iter()
        .map(|(k, v)| (k, Secret::new(v.into_bytes())))
        .collect();
    let digest = d.digest.as_deref();
    let approved = state.store.approve_proposal(
        &peer.actor(),
        id,
        digest,
        values,
        Confirmed {
            credential_reuse: d.allow_credential_reuse,
            rule_removal: d.allow_rule_removal,
        },
    );
    reply(&state, approved)
}

async fn reject(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<u64>,
    Json(d): Json<Decision>,
) -> Response {
    let rejected = state
        .store
        .reject_proposal(&peer.actor(), id, &d.reason, d.digest.as_deref());
    reply(&state, rejected)
}

async fn vaults(State(state): State<Arc<AppState>>) -> Response {
    let Ok(list) = state.store.vaults() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let out: Vec<Value> = list
        .iter()
        .map(|v| {
            let services: Vec<Value> = state.store.services(&v.name).unwrap_or_default().iter().map(|s| json!({"name": s.spec.name, "host": s.spec.host, "auth": s.spec.auth_type(), "enabled": s.spec.enabled})).collect();
            let credentials: Vec<String> = state.store.credentials(&v.name).unwrap_or_default().into_iter().map(|(k, _)| k).collect();
            json!({"name": v.name, "policy": v.policy, "services": services, "credentials": credentials})
        })
        .collect();
    Json(out).into_response()
}

async fn audit(State(state): State<Arc<AppState>>) -> Response {
    match state.store.audit_log(500) {
        Ok(l) => Json(l.iter().map(|r| json!({"at": airlock_core::vault::rfc3339(r.at), "actor": r.actor, "action": r.action, "target": r.target, "detail": r.detail})).collect::<Vec<_>>()).into_response(),
        Err(e) => error(&e),
    }
}
