//! What every page handler answers with (a rendered page, the login redirect, the stale-form
//! refusal, a vault error), the [`SignedIn`] extractor that sends a visitor who is not logged in
//! to the login page before a handler runs. The page modules use this; it uses none of them
//! (the crate root mounts them).

use std::collections::HashMap;
use std::sync::Arc;

use airlock_core::vault::VaultError;
use airlock_core::vault::records::ProposalStatus;
use axum::Form;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use crate::AppState;
use crate::security::Session;
use crate::views::{flash, page};

pub(crate) type St = State<Arc<AppState>>;
pub(crate) type Fields = Form<HashMap<String, String>>;

fn pending(state: &AppState) -> usize {
    state
        .store
        .proposals(None, Some(ProposalStatus::Pending))
        .map_or(0, |p| p.len())
}

pub(crate) fn render(state: &AppState, session: &Session, title: &str, body: Markup) -> Response {
    let html = page(title, session, pending(state), body).into_string();
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// Where pages send a visitor who is not logged in.
pub(crate) fn login_redirect() -> Response {
    Redirect::to("/login").into_response()
}

/// The session of a logged-in operator. As a handler's argument it answers every other visitor
/// with the login redirect before the handler runs, so no page repeats that check.
pub(crate) struct SignedIn(pub(crate) Session);

impl<S: Send + Sync> FromRequestParts<S> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        match parts.extensions.get::<Session>() {
            Some(session) if session.operator.is_some() => Ok(Self(session.clone())),
            _ => Err(login_redirect()),
        }
    }
}

pub(crate) fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "the form is stale or was not sent by this site; reload and try again",
    )
        .into_response()
}

pub(crate) fn vault_error(state: &AppState, session: &Session, e: &VaultError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = render(
        state,
        session,
        "Could not do that",
        html! { (flash(false, &e.to_string())) p { a href="/proposals" { "Back to proposals" } } },
    );
    *r.status_mut() = status;
    r
}
