//! Request security for the admin UI (R10, security.md row 48): sessions, CSRF tokens, Host
//! and Origin checks, login throttling and response headers.
//!
//! Every visitor gets a session cookie (HttpOnly, SameSite=Strict) holding a random id; the
//! session carries a CSRF token that every form posts back. [`guard`] answers 421 to a Host
//! that is not loopback (DNS rebinding) and 403 to a state-changing request whose Origin (or
//! Referer) is not this site, and adds CSP `frame-ancestors 'none'`, X-Frame-Options and
//! no-store to every response. Logging in rotates the session id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

pub const COOKIE: &str = "airlock_admin";
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Failed logins allowed per name per minute before 429.
const LOGIN_FAILURES: u32 = 5;

/// One browser session (anonymous until login).
#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    pub csrf: String,
    pub operator: Option<String>,
    seen: Instant,
}

#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    // The system CSPRNG failing is not survivable for a security token; fall back to nothing
    // usable (an all-zero token never matches a real session because ids are looked up).
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    data_encoding::BASE64URL_NOPAD.encode(&b)
}

impl Sessions {
    /// Sessions held now (logged in or not), for metrics.
    pub fn count(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }

    /// The session named by the cookie, or a new anonymous one (and whether it is new).
    pub fn get_or_create(&self, id: Option<&str>) -> (Session, bool) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, s| now.duration_since(s.seen) < IDLE);
        if let Some(s) = id.and_then(|id| map.get_mut(id)) {
            s.seen = now;
            return (s.clone(), false);
        }
        let s = Session {
            id: random_token(),
            csrf: random_token(),
            operator: None,
            seen: now,
        };
        map.insert(s.id.clone(), s.clone());
        (s, true)
    }

    /// Logs `operator` in: a fresh session id and CSRF token (no fixation).
    pub fn login(&self, old: &str, operator: &str) -> Session {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(old);
        let s = Session {
            id: random_token(),
            csrf: random_token(),
            operator: Some(operator.to_owned()),
            seen: Instant::now(),
        };
        map.insert(s.id.clone(), s.clone());
        s
    }

    pub fn logout(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Whether `name` may try to log in now.
    pub fn login_allowed(&self, name: &str) -> bool {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name).is_none_or(|(n, since)| {
            *n < LOGIN_FAILURES || since.elapsed() > Duration::from_secs(60)
        })
    }

    pub fn login_failed(&self, name: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry(name.to_owned()).or_insert((0, Instant::now()));
        if e.1.elapsed() > Duration::from_secs(60) {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}

/// Constant-time comparison of a posted CSRF token with the session's.
pub fn csrf_ok(session: &Session, posted: Option<&String>) -> bool {
    posted.is_some_and(|p| {
        subtle::ConstantTimeEq::ct_eq(p.as_bytes(), session.csrf.as_bytes()).into()
    })
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_owned())
        })
}

/// Loopback names only: a rebinding page's own hostname is refused.
fn host_allowed(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    matches!(name, "localhost" | "127.0.0.1" | "[::1]")
}

fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    let expected = format!("http://{host}");
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        return origin == expected;
    }
    headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|r| r == expected || r.starts_with(&format!("{expected}/")))
}

pub fn set_cookie(session: &Session) -> HeaderValue {
    let v = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", session.id);
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Middleware: Host and Origin checks, the session, and security headers.
pub async fn guard(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !host_allowed(&host) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this admin UI answers only on localhost",
        )
            .into_response();
    }
    let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD);
    if unsafe_method && !same_origin(req.headers(), &host) {
        return (StatusCode::FORBIDDEN, "cross-site request refused").into_response();
    }
    let (session, new) = state
        .sessions
        .get_or_create(cookie_value(req.headers()).as_deref());
    req.extensions_mut().insert(session.clone());
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if new && !h.contains_key(header::SET_COOKIE) {
        h.insert(header::SET_COOKIE, set_cookie(&session));
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "localhost",
            "localhost:7481",
            "127.0.0.1:7481",
            "[::1]:7481",
        ] {
            assert!(host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7481",
            "localhost.evil.example",
            "127.0.0.1.nip.io:80",
            "",
        ] {
            assert!(!host_allowed(bad), "{bad}");
        }
    }
}
