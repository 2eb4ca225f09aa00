//! Request security for the admin UI (R10, SECURITY-TESTS.md row 48): sessions, CSRF tokens, Host
//! and Origin checks, login throttling and response headers.
//!
//! A session (cookie HttpOnly, SameSite=Strict, holding a random id) is created only where a
//! page needs a CSRF token before login: the login and setup forms. Other visitors without a
//! session get an ephemeral one that is never stored and whose empty CSRF token matches nothing.
//! Sessions are capped (anonymous and logged-in ones apart, so a flood of visitors cannot log an
//! operator out) and expire after [`IDLE`], checked on lookup and at the front of an insertion
//! queue, never by a scan of the whole map (row 70). [`guard`] answers 421 to a Host that is
//! not loopback (DNS rebinding) and 403 to a state-changing request whose Origin (or Referer) is
//! not this site, and adds CSP `frame-ancestors 'none'`, X-Frame-Options and no-store to every
//! response; [`api_guard`] does the Host and Origin checks for the JSON API. Logging in rotates
//! the session id.
//!
//! Logins ([`Sessions::login_begin`]) are charged before the password is checked, in the same
//! lock as the check, so a parallel burst gets no more tries than a sequential one: per operator
//! name and client ([`LOGIN_FAILURES`] a minute) and per client across names
//! ([`CLIENT_FAILURES`] a minute). A client is the loopback TCP listener as a whole (any
//! 127.x source address) or one uid on the socket; so strangers who can reach the TCP listener
//! can hold a name's TCP logins for a minute at a time, but never the socket's. At most
//! [`VERIFY_CONCURRENCY`] Argon2 verifications run at once and at most [`VERIFY_QUEUE`] wait;
//! more are answered 503, so parallel logins cannot grow the process's memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::socket::Peer;

pub(crate) const COOKIE: &str = "airlock_admin";
/// A session unused this long is gone.
pub(crate) const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Most anonymous sessions (login and setup forms) held; the oldest goes first.
pub(crate) const MAX_ANONYMOUS: usize = 1000;
/// Most logged-in sessions held; the oldest goes first.
pub(crate) const MAX_LOGGED_IN: usize = 1000;
/// Login attempts per operator name per client per minute.
pub(crate) const LOGIN_FAILURES: u32 = 5;
/// Login attempts per client per minute, whatever the name.
pub(crate) const CLIENT_FAILURES: u32 = 20;
const WINDOW: Duration = Duration::from_secs(60);
/// Password verifications (Argon2, 19 MiB each) running at once, and waiting.
pub(crate) const VERIFY_CONCURRENCY: usize = 4;
pub(crate) const VERIFY_QUEUE: usize = 16;

/// One browser session (anonymous until login).
#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    pub csrf: String,
    pub operator: Option<String>,
    seen: Instant,
}

impl Session {
    /// For a request that needs no session: never stored, and its empty CSRF token matches
    /// nothing.
    fn ephemeral() -> Self {
        Self {
            id: String::new(),
            csrf: String::new(),
            operator: None,
            seen: Instant::now(),
        }
    }

    fn new(operator: Option<&str>) -> Self {
        Self {
            id: random_token(),
            csrf: random_token(),
            operator: operator.map(str::to_owned),
            seen: Instant::now(),
        }
    }
}

#[derive(Debug, Default)]
struct Map {
    sessions: HashMap<String, Session>,
    /// Ids in insertion order: anonymous and logged-in apart.
    anonymous: VecDeque<String>,
    logged_in: VecDeque<String>,
}

impl Map {
    /// Drops from the front of a queue what is gone or expired, and what is past `cap` (one
    /// entry is about to be added). Stops at the first live entry under the cap.
    fn trim(&mut self, logged_in: bool, cap: usize) {
        let Self {
            sessions,
            anonymous,
            logged_in: authed,
        } = self;
        let queue = if logged_in { authed } else { anonymous };
        while let Some(id) = queue.front() {
            let live = sessions.get(id).is_some_and(|s| s.seen.elapsed() < IDLE);
            if live && queue.len() < cap {
                break;
            }
            sessions.remove(id);
            queue.pop_front();
        }
    }

    fn insert(&mut self, s: Session) {
        let logged_in = s.operator.is_some();
        let cap = if logged_in {
            MAX_LOGGED_IN
        } else {
            MAX_ANONYMOUS
        };
        self.trim(logged_in, cap);
        let queue = if logged_in {
            &mut self.logged_in
        } else {
            &mut self.anonymous
        };
        queue.push_back(s.id.clone());
        self.sessions.insert(s.id.clone(), s);
    }
}

/// Who is logging in, for the throttle: the loopback TCP listener as a whole, or a socket uid.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    Tcp,
    Uid(u32),
}

impl Client {
    fn of(req: &Request) -> Self {
        match req.extensions().get::<ConnectInfo<Peer>>() {
            Some(ConnectInfo(p)) => Self::Uid(p.uid),
            None => Self::Tcp,
        }
    }
}

/// Why a login is not tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginRefused {
    /// Too many attempts for this name or client this minute (429).
    Throttled,
    /// Too many verifications running or waiting (503).
    Busy,
}

#[derive(Debug, Default)]
struct Throttle {
    names: HashMap<(String, Client), (u32, Instant)>,
    clients: HashMap<Client, (u32, Instant)>,
}

/// Counts one attempt in a one-minute window; false when the window is full.
fn charge(slot: &mut (u32, Instant), max: u32) -> bool {
    if slot.1.elapsed() > WINDOW {
        *slot = (0, Instant::now());
    }
    if slot.0 >= max {
        return false;
    }
    slot.0 += 1;
    true
}

#[derive(Debug)]
pub struct Sessions {
    map: Mutex<Map>,
    throttle: Mutex<Throttle>,
    verify: tokio::sync::Semaphore,
    waiting: AtomicUsize,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
            throttle: Mutex::default(),
            verify: tokio::sync::Semaphore::new(VERIFY_CONCURRENCY),
            waiting: AtomicUsize::new(0),
        }
    }
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
        self.map.lock().map_or(0, |m| m.sessions.len())
    }

    /// The live session `id` names, refreshed.
    fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.sessions.get_mut(id)?;
        if s.seen.elapsed() >= IDLE {
            map.sessions.remove(id);
            return None;
        }
        s.seen = Instant::now();
        Some(s.clone())
    }

    fn create_anonymous(&self) -> Session {
        let s = Session::new(None);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(s.clone());
        s
    }

    /// Logs `operator` in: a fresh session id and CSRF token (no fixation).
    pub fn login(&self, old: &str, operator: &str) -> Session {
        let s = Session::new(Some(operator));
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.sessions.remove(old);
        map.insert(s.clone());
        s
    }

    pub fn logout(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sessions
            .remove(id);
    }

    /// Checks and charges one login attempt for `name` from `client`, atomically.
    pub fn login_begin(&self, name: &str, client: &Client) -> Result<(), LoginRefused> {
        let mut t = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        if t.clients.len() > 10_000 || t.names.len() > 10_000 {
            t.clients.retain(|_, (_, since)| since.elapsed() <= WINDOW);
            t.names.retain(|_, (_, since)| since.elapsed() <= WINDOW);
        }
        let now = Instant::now();
        let name_slot = t
            .names
            .entry((name.to_owned(), client.clone()))
            .or_insert((0, now));
        if name_slot.1.elapsed() <= WINDOW && name_slot.0 >= LOGIN_FAILURES {
            return Err(LoginRefused::Throttled);
        }
        let client_slot = t.clients.entry(client.clone()).or_insert((0, now));
        if !charge(client_slot, CLIENT_FAILURES) {
            return Err(LoginRefused::Throttled);
        }
        let name_slot = t
            .names
            .entry((name.to_owned(), client.clone()))
            .or_insert((0, now));
        charge(name_slot, LOGIN_FAILURES);
        Ok(())
    }

    /// A login that succeeded was not a failure: its charge is refunded.
    pub fn login_succeeded(&self, name: &str, client: &Client) {
        let mut t = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = t.names.get_mut(&(name.to_owned(), client.clone())) {
            slot.0 = slot.0.saturating_sub(1);
        }
        if let Some(slot) = t.clients.get_mut(client) {
            slot.0 = slot.0.saturating_sub(1);
        }
    }

    /// Runs password work (Argon2: a login's check, the setup form's hashing) under the
    /// concurrency limit, on the blocking pool; `Busy` when too many are running and waiting.
    pub async fn argon2<T, F>(&self, work: F) -> Result<T, LoginRefused>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= VERIFY_CONCURRENCY + VERIFY_QUEUE {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(LoginRefused::Busy);
        }
        let done = match self.verify.acquire().await {
            Ok(_permit) => tokio::task::spawn_blocking(work)
                .await
                .map_err(|_| LoginRefused::Busy),
            Err(_) => Err(LoginRefused::Busy),
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        done
    }
}

/// Constant-time comparison of a posted CSRF token with the session's.
pub(crate) fn csrf_ok(session: &Session, posted: Option<&String>) -> bool {
    !session.csrf.is_empty()
        && posted.is_some_and(|p| {
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

pub(crate) fn set_cookie(session: &Session) -> HeaderValue {
    let v = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", session.id);
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The request's Host when it names loopback (not a DNS-rebinding page's own hostname).
fn loopback_host(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok())?;
    host_allowed(host).then(|| host.to_owned())
}

/// The answer to a request whose Host is not loopback.
fn misdirected() -> Response {
    (
        StatusCode::MISDIRECTED_REQUEST,
        "the admin process answers only on localhost",
    )
        .into_response()
}

/// Middleware for the JSON API (its own socket): the pages' Host allow-list, and no request
/// that a browser marks as coming from another site (`Origin` or `Sec-Fetch-Site` other than
/// same-origin). Automation (curl, scripts) sends neither.
pub(crate) async fn api_guard(req: Request, next: Next) -> Response {
    let h = req.headers();
    let Some(host) = loopback_host(h) else {
        return misdirected();
    };
    let origin_ok = h
        .get(header::ORIGIN)
        .is_none_or(|o| o.to_str().is_ok_and(|o| o == format!("http://{host}")));
    let fetch_ok = h
        .get("sec-fetch-site")
        .is_none_or(|v| v.as_bytes() == b"same-origin");
    if !origin_ok || !fetch_ok {
        return (StatusCode::FORBIDDEN, "cross-site request refused").into_response();
    }
    next.run(req).await
}

/// Middleware: Host and Origin checks, the session, and security headers.
pub(crate) async fn guard(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(host) = loopback_host(req.headers()) else {
        return misdirected();
    };
    let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD);
    if unsafe_method && !same_origin(req.headers(), &host) {
        return (StatusCode::FORBIDDEN, "cross-site request refused").into_response();
    }
    let existing = cookie_value(req.headers()).and_then(|id| state.sessions.get(&id));
    let form_page = matches!(*req.method(), Method::GET | Method::HEAD)
        && matches!(req.uri().path(), "/login" | "/setup");
    let (session, new) = match existing {
        Some(s) => (s, false),
        None if form_page => (state.sessions.create_anonymous(), true),
        None => (Session::ephemeral(), false),
    };
    let client = Client::of(&req);
    req.extensions_mut().insert(client);
    req.extensions_mut().insert(session.clone());
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if new && !h.contains_key(header::SET_COOKIE) {
        h.insert(header::SET_COOKIE, set_cookie(&session));
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
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

    /// Row 70: password work runs at most VERIFY_CONCURRENCY at a time; past the queue, Busy.
    #[tokio::test(flavor = "current_thread")]
    async fn row70_argon2_work_is_bounded() {
        let s = Arc::new(Sessions::default());
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let (s, running, peak) = (s.clone(), running.clone(), peak.clone());
                tokio::spawn(async move {
                    s.argon2(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(30));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        let mut busy = 0;
        for t in tasks {
            if t.await.unwrap().is_err() {
                busy += 1;
            }
        }
        assert_eq!(busy, 40 - VERIFY_CONCURRENCY - VERIFY_QUEUE);
        assert_eq!(peak.load(Ordering::SeqCst), VERIFY_CONCURRENCY);
    }

    /// Row 70: attempts are charged before the check; a client is limited across names.
    #[test]
    fn row70_login_attempts_charged_per_name_and_client() {
        let s = Sessions::default();
        let tcp = Client::Tcp;
        let ok = (0..10)
            .filter(|_| s.login_begin("alice", &tcp).is_ok())
            .count();
        assert_eq!(ok, LOGIN_FAILURES as usize);
        assert!(
            s.login_begin("alice", &Client::Uid(1000)).is_ok(),
            "another client"
        );
        let others = (0..40)
            .filter(|i| s.login_begin(&format!("n{i}"), &tcp).is_ok())
            .count();
        assert_eq!(others, (CLIENT_FAILURES - LOGIN_FAILURES) as usize);
    }

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
