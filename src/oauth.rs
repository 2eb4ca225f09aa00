//! Keeps OAuth credentials fresh (`vault::oauth` has the record and import formats): renews
//! access tokens with the refresh-token grant, or, for a Google service account, mints them with
//! a JWT grant signed by the account's key ([`jwt_assertion`], ring's RSA PKCS#1 SHA-256).
//!
//! One thread per data-plane process, `airlock-oauth`, with its own small monoio runtime, does
//! every refresh: ahead of expiry ([`OAuthMeta::refresh_at`]), and when a worker asks because an
//! upstream answered 401 or the token it holds has expired. Asks for the same credential are
//! answered by one refresh: an ask names the version the worker holds, and an ask for a version
//! already replaced is answered at once. The token endpoint is reached like any upstream, through
//! the SSRF guard, `--resolve` and verified TLS ([`upstream::dial_new`] with the data plane's [`Dialer`]); the new tokens are
//! sealed back into the vault (a write, done here, never on a worker) and the policy recompiled
//! before the waiting workers are answered. A rejected refresh token stays failed until an
//! operator imports a new pair; other failures are retried with a backoff.
//!
//! In fleet mode one node renews a given credential at a time (a fleet-wide lock named after
//! it); the others wait, catch up with the log and find it renewed.
//!
//! Workers only send on a channel and await the answer ([`crate::renewal::Refresher::renew`]); nothing here runs
//! on a worker thread.

use std::sync::Arc;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use crate::http::head::{self, Framing};
use crate::proxy::Shared;
use crate::proxy::error::ProxyError;
use crate::proxy::inject::host_header;
use crate::proxy::upstream::{self, Dialer, Target};
use crate::renewal::{Answer, Ask, Failure, Inbox};
use crate::secret::{Secret, check_value};
use crate::spec::Scheme;
use crate::vault::now;
use crate::vault::oauth::{
    Endpoint, FailureCode, OAuthMeta, OAuthTokens, RequestFormat, TokenResponse, jwt_expiry,
};
use crate::vault::oauth_store::{Entry, Refreshed};

/// How often the refresher looks for credentials coming due, when no worker asks first.
const TICK: Duration = Duration::from_secs(1);
/// The whole token request: connect, send, read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token response read.
const MAX_RESPONSE: usize = 64 * 1024;

/// Starts the refresher thread.
pub fn start(shared: Arc<Shared>, inbox: Inbox) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("airlock-oauth".into())
        .spawn(move || {
            let built = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .attach_thread_pool(Box::new(monoio::blocking::DefaultThreadPool::new(1)))
                .build();
            match built {
                Ok(mut rt) => rt.block_on(run(shared, inbox.0)),
                Err(e) => tracing::error!("the OAuth refresher could not start: {e}"),
            }
        })
        .map(drop)
}

async fn run(shared: Arc<Shared>, inbox: flume::Receiver<Ask>) {
    let mut asks: Vec<Ask> = Vec::new();
    loop {
        match monoio::time::timeout(TICK, inbox.recv_async()).await {
            Ok(Ok(ask)) => asks.push(ask),
            Ok(Err(_)) => return,
            Err(_) => {}
        }
        asks.extend(inbox.drain());
        let entries = match shared.store.oauth_credentials() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("reading OAuth credentials failed: {e}");
                continue;
            }
        };
        for entry in entries {
            let mine: Vec<Ask> = asks
                .extract_if(.., |a| a.vault == entry.vault && a.key == entry.key)
                .collect();
            let answer = serve(&shared, &entry, &mine).await;
            if !mine.is_empty() {
                // The waiting workers retry at once: they must find the new token compiled.
                if let Err(e) = shared.refresh() {
                    tracing::warn!("reloading the vault failed: {e}");
                }
            }
            for ask in mine {
                if let Some(reply) = ask.reply {
                    let _ = reply.try_send(answer.clone());
                }
            }
        }
        for ask in asks.drain(..) {
            if let Some(reply) = ask.reply {
                let _ = reply.try_send(Err(Failure {
                    code: FailureCode::Rejected,
                    detail: "it is no longer an OAuth credential of this vault".into(),
                }));
            }
        }
    }
}

/// Refreshes `entry` if it is due, or a worker asked about its current version and that token is
/// at least [`crate::credential::MIN_AGE_TO_RENEW_ON_401`] seconds old, and answers the asks.
async fn serve(shared: &Shared, entry: &Entry, asks: &[Ask]) -> Answer {
    let now = now();
    let meta = &entry.meta;
    let asked = asks.iter().any(|a| a.version >= meta.version)
        && now >= meta.obtained_at + crate::credential::MIN_AGE_TO_RENEW_ON_401;
    let due = meta.refresh_at().is_some_and(|at| now >= at);
    if !asked && !due {
        return Ok(());
    }
    match meta.retry_at() {
        Some(at) if now >= at => {}
        _ => {
            return meta.failure.as_ref().map_or(Ok(()), |f| {
                Err(Failure {
                    code: f.code,
                    detail: f.detail.clone(),
                })
            });
        }
    }
    let _renewing = fleet_turn(shared, entry)?;
    let outcome = match shared
        .store
        .open_oauth(&shared.opener, &entry.vault, &entry.key)
    {
        Ok(Some((meta, _))) if meta.version != entry.meta.version => return Ok(()),
        Ok(Some((meta, tokens))) => exchange(&shared.dialer, &entry.vault, &meta, &tokens)
            .await
            .map(|(tokens, expires_at)| (meta.version, tokens, expires_at))
            .map_err(|f| (meta.version, f)),
        Ok(None) => return Ok(()),
        Err(e) => {
            return Err(Failure {
                code: FailureCode::Rejected,
                detail: format!("the stored tokens cannot be opened: {e}"),
            });
        }
    };
    let (version, stored, answer) = match outcome {
        Ok((version, tokens, expires_at)) => {
            tracing::info!(vault = %entry.vault, key = %entry.key, "renewed an OAuth access token");
            (version, Refreshed::Tokens { tokens, expires_at }, Ok(()))
        }
        Err((version, f)) => {
            tracing::warn!(
                vault = %entry.vault,
                key = %entry.key,
                code = f.code.as_str(),
                "renewing an OAuth access token failed: {}",
                f.detail
            );
            let stored = Refreshed::Failed {
                code: f.code,
                detail: f.detail.clone(),
            };
            (version, stored, Err(f))
        }
    };
    if let Err(e) = shared
        .store
        .finish_refresh(&entry.vault, &entry.key, version, stored)
    {
        tracing::warn!(vault = %entry.vault, key = %entry.key, "storing the renewed OAuth tokens failed: {e}");
        return Err(Failure {
            code: FailureCode::Unavailable,
            detail: format!("the renewed tokens could not be stored: {}", e.code()),
        });
    }
    answer
}

/// Fleet mode: one node renews a credential at a time (a rotated refresh token works once); the
/// others wait for the fleet-wide lock held here, catch up, and find it renewed.
fn fleet_turn(
    shared: &Shared,
    entry: &Entry,
) -> Result<Option<Box<dyn std::any::Any + Send>>, Failure> {
    let Some(fleet) = shared.store.fleet() else {
        return Ok(None);
    };
    let lock = fleet
        .lock_named(&format!("oauth {}/{}", entry.vault, entry.key))
        .map_err(|e| Failure {
            code: FailureCode::Unavailable,
            detail: e.to_string(),
        })?;
    if let Err(e) = fleet.catch_up(&shared.store) {
        tracing::warn!("catching up before an OAuth renewal failed: {e}");
    }
    Ok(Some(lock))
}

/// One grant against the credential's token endpoint: the refresh-token grant (RFC 6749
/// section 6), or a service account's JWT grant (RFC 7523).
async fn exchange(
    dialer: &Dialer,
    vault: &str,
    meta: &OAuthMeta,
    tokens: &OAuthTokens,
) -> Result<(OAuthTokens, u64), Failure> {
    let fail = |code, detail: String| Failure { code, detail };
    let endpoint =
        Endpoint::parse(&meta.token_endpoint).map_err(|e| fail(FailureCode::Rejected, e))?;
    let target = Target {
        scheme: Scheme::Https,
        host: endpoint.host.clone(),
        port: endpoint.port,
    };
    let body = request_body(meta, tokens).map_err(|e| fail(FailureCode::Rejected, e))?;
    let request = request(meta, &endpoint, &target, &body);
    let (status, body) = post(dialer, vault, &target, request).await?;
    tokens_from(status, &body, tokens)
}

/// The grant's HTTP/1.1 request to `endpoint`, `body` included.
fn request(
    meta: &OAuthMeta,
    endpoint: &Endpoint,
    target: &Target,
    body: &[u8],
) -> Zeroizing<Vec<u8>> {
    let content_type = match meta.request {
        RequestFormat::Form | RequestFormat::JwtBearer => "application/x-www-form-urlencoded",
        RequestFormat::Json => "application/json",
    };
    let mut request = Zeroizing::new(
        format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: {content_type}\r\naccept: application/json\r\nuser-agent: airlock/{}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            endpoint.path,
            host_header(target),
            env!("CARGO_PKG_VERSION"),
            body.len()
        )
        .into_bytes(),
    );
    request.extend_from_slice(body);
    request
}

/// Sends `request` to the token endpoint at `target` (dialled like any upstream) and reads the
/// answer, within [`REQUEST_TIMEOUT`]: its status and body.
async fn post(
    dialer: &Dialer,
    vault: &str,
    target: &Target,
    mut request: Zeroizing<Vec<u8>>,
) -> Result<(u16, Zeroizing<Vec<u8>>), Failure> {
    let fail = |code, detail: String| Failure { code, detail };
    let unavailable = |e: ProxyError| {
        fail(
            FailureCode::Unavailable,
            format!("{}: {}", e.code(), e.message()),
        )
    };
    monoio::time::timeout(REQUEST_TIMEOUT, async {
        let mut up = upstream::dial_new(dialer, vault, target)
            .await
            .map_err(unavailable)?;
        let (written, mut sent) = up.conn.io.write_all(std::mem::take(&mut *request)).await;
        sent.zeroize();
        let io =
            |what: &str, e: std::io::Error| fail(FailureCode::Unavailable, format!("{what}: {e}"));
        written.map_err(|e| io("sending the request", e))?;
        up.conn
            .flush()
            .await
            .map_err(|e| io("sending the request", e))?;
        loop {
            let eof = up
                .conn
                .fill()
                .await
                .map_err(|e| io("reading the response", e))?
                == 0;
            match parse_response(up.conn.buffered(), eof) {
                Parsed::Done(status, body) => return Ok((status, body)),
                Parsed::Invalid => break,
                Parsed::Incomplete if eof || up.conn.buffered().len() > MAX_RESPONSE => break,
                Parsed::Incomplete => {}
            }
        }
        Err(fail(
            FailureCode::InvalidResponse,
            "the response is not valid HTTP/1.1".into(),
        ))
    })
    .await
    .map_err(|_| {
        fail(
            FailureCode::Unavailable,
            "the token endpoint did not answer in time".into(),
        )
    })?
}

/// The renewed tokens from a token endpoint's answer (`tokens`, the ones renewed, keep what the
/// answer leaves out), and when the access token expires.
fn tokens_from(
    status: u16,
    body: &[u8],
    tokens: &OAuthTokens,
) -> Result<(OAuthTokens, u64), Failure> {
    let fail = |code, detail: String| Failure { code, detail };
    if !(200..300).contains(&status) {
        let code = if matches!(status, 400 | 401 | 403) {
            FailureCode::Rejected
        } else {
            FailureCode::Unavailable
        };
        return Err(fail(code, describe_error(status, body, tokens)));
    }
    let parsed: TokenResponse = serde_json::from_slice(body).map_err(|_| {
        fail(
            FailureCode::InvalidResponse,
            format!("HTTP {status} without a JSON token response"),
        )
    })?;
    let access = parsed
        .access_token
        .filter(|a| check_value(a.as_bytes()).is_ok())
        .ok_or_else(|| {
            fail(
                FailureCode::InvalidResponse,
                "the response has no usable access_token".into(),
            )
        })?;
    let access = Secret::new(access.as_bytes().to_vec());
    let refresh = match parsed.refresh_token {
        Some(r) if check_value(r.as_bytes()).is_ok() => Secret::new(r.as_bytes().to_vec()),
        Some(_) => {
            return Err(fail(
                FailureCode::InvalidResponse,
                "the new refresh_token is not usable".into(),
            ));
        }
        None => tokens.refresh.clone(),
    };
    let expires_at = parsed
        .expires_in
        .map(|s| now() + s)
        .or(parsed.expires_at)
        .or_else(|| jwt_expiry(access.expose()))
        .unwrap_or(0);
    Ok((
        OAuthTokens {
            access,
            refresh,
            client_secret: tokens.client_secret.clone(),
        },
        expires_at,
    ))
}

/// The grant's body: the refresh-token grant form-encoded or JSON, or a service account's JWT
/// grant (form-encoded).
fn request_body(meta: &OAuthMeta, tokens: &OAuthTokens) -> Result<Zeroizing<Vec<u8>>, String> {
    fn text(s: &Secret) -> Result<&str, String> {
        std::str::from_utf8(s.expose()).map_err(|_| "a stored token is not UTF-8".to_owned())
    }
    let assertion;
    let mut fields = if meta.request == RequestFormat::JwtBearer {
        assertion = jwt_assertion(meta, &tokens.refresh, now())?;
        vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ]
    } else {
        vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", text(&tokens.refresh)?),
            ("client_id", meta.client_id.as_str()),
        ]
    };
    if let Some(secret) = &tokens.client_secret {
        fields.push(("client_secret", text(secret)?));
    }
    if let (Some(scope), false) = (&meta.scope, meta.request == RequestFormat::JwtBearer) {
        fields.push(("scope", scope));
    }
    Ok(Zeroizing::new(match meta.request {
        RequestFormat::Json => {
            let map: serde_json::Map<String, serde_json::Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into()))
                .collect();
            let out = serde_json::to_vec(&map).unwrap_or_default();
            drop(map);
            out
        }
        RequestFormat::Form | RequestFormat::JwtBearer => {
            let mut out = Vec::new();
            for (i, (k, v)) in fields.into_iter().enumerate() {
                if i > 0 {
                    out.push(b'&');
                }
                out.extend_from_slice(k.as_bytes());
                out.push(b'=');
                out.extend_from_slice(&crate::policy::percent_encode(v.as_bytes()));
            }
            out
        }
    }))
}

/// A service account's signed JWT (RFC 7523, as Google's token endpoint takes it): RS256 with
/// the account's private key (the sealed "refresh token"), issued by the account (`client_id`)
/// for the token endpoint, asking for `scope`, valid for an hour from `now`.
fn jwt_assertion(
    meta: &OAuthMeta,
    key_pem: &Secret,
    now: u64,
) -> Result<Zeroizing<String>, String> {
    use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
    let der = crate::vault::oauth::rsa_pkcs8(key_pem.expose())?;
    let key = RsaKeyPair::from_pkcs8(&der).map_err(|e| format!("the private key: {e}"))?;
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = &meta.key_id {
        header["kid"] = kid.as_str().into();
    }
    let claims = serde_json::json!({
        "iss": meta.client_id,
        "scope": meta.scope.as_deref().unwrap_or(crate::vault::oauth::GOOGLE_DEFAULT_SCOPE),
        "aud": meta.token_endpoint,
        "iat": now,
        "exp": now + 3600,
    });
    let b64 = data_encoding::BASE64URL_NOPAD;
    let mut jwt = Zeroizing::new(format!(
        "{}.{}",
        b64.encode(header.to_string().as_bytes()),
        b64.encode(claims.to_string().as_bytes())
    ));
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        jwt.as_bytes(),
        &mut signature,
    )
    .map_err(|_| "signing the JWT grant failed".to_owned())?;
    jwt.push('.');
    jwt.push_str(&b64.encode(&signature));
    Ok(jwt)
}

/// How far a token response has arrived.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Incomplete,
    Invalid,
    Done(u16, Zeroizing<Vec<u8>>),
}

/// Parses the response in `raw`; `eof` when the connection closed after it.
fn parse_response(raw: &[u8], eof: bool) -> Parsed {
    let Some(n) = head::find_end(raw) else {
        return Parsed::Incomplete;
    };
    let Ok(resp) = head::parse_response(&raw[..n]) else {
        return Parsed::Invalid;
    };
    let rest = &raw[n..];
    let body = match head::response_framing("POST", &resp) {
        Err(_) => return Parsed::Invalid,
        Ok(Framing::Empty) => Some(Vec::new()),
        Ok(Framing::Length(len)) => usize::try_from(len)
            .ok()
            .and_then(|len| rest.get(..len))
            .map(<[u8]>::to_vec),
        Ok(Framing::Close) => eof.then(|| rest.to_vec()),
        Ok(Framing::Chunked) => match dechunk(rest) {
            Ok(body) => body,
            Err(()) => return Parsed::Invalid,
        },
    };
    match body {
        Some(body) => Parsed::Done(resp.status, Zeroizing::new(body)),
        None => Parsed::Incomplete,
    }
}

/// A chunked body: `Ok(None)` while incomplete.
fn dechunk(mut b: &[u8]) -> Result<Option<Vec<u8>>, ()> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = memchr::memchr(b'\n', b) else {
            return Ok(None);
        };
        let size = crate::http::body::parse_chunk_size(&b[..=nl]).map_err(drop)?;
        let size = usize::try_from(size).map_err(drop)?;
        b = &b[nl + 1..];
        if size == 0 {
            return Ok(Some(out));
        }
        let Some(data) = b.get(..size) else {
            return Ok(None);
        };
        out.extend_from_slice(data);
        b = match &b[size..] {
            [b'\r', b'\n', after @ ..] => after,
            [] | [b'\r'] => return Ok(None),
            _ => return Err(()),
        };
    }
}

/// `HTTP 400 invalid_grant: description`, printable ASCII, short, with any token masked.
fn describe_error(status: u16, body: &[u8], tokens: &OAuthTokens) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: Option<String>,
        error_description: Option<String>,
    }
    let mut out = format!("HTTP {status}");
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        for part in [e.error, e.error_description].into_iter().flatten() {
            out.push_str(if out.contains(':') { " " } else { ": " });
            out.push_str(&part);
        }
    }
    let mut out: String = out
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(300)
        .collect();
    for secret in tokens.secrets() {
        if let Ok(s) = std::str::from_utf8(secret.expose()) {
            out = out.replace(s, "[redacted]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(request: RequestFormat) -> OAuthMeta {
        OAuthMeta {
            token_endpoint: "https://auth.example.com/token".into(),
            client_id: "cli ent".into(),
            scope: Some("a b".into()),
            request,
            key_id: None,
            expires_at: 0,
            obtained_at: 0,
            version: 1,
            failure: None,
        }
    }

    fn tokens() -> OAuthTokens {
        OAuthTokens {
            access: Secret::new(b"at".to_vec()),
            refresh: Secret::new(b"r&t=1".to_vec()),
            client_secret: None,
        }
    }

    #[test]
    fn grant_bodies() {
        let form = request_body(&meta(RequestFormat::Form), &tokens()).unwrap();
        assert_eq!(
            std::str::from_utf8(&form).unwrap(),
            "grant_type=refresh_token&refresh_token=r%26t%3D1&client_id=cli%20ent&scope=a%20b"
        );
        let json = request_body(&meta(RequestFormat::Json), &tokens()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["grant_type"], "refresh_token");
        assert_eq!(v["refresh_token"], "r&t=1");
        assert_eq!(v["client_id"], "cli ent");
    }

    #[test]
    fn responses_parse_as_they_arrive() {
        let done = |status, body: &[u8]| Parsed::Done(status, Zeroizing::new(body.to_vec()));
        let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(sized, false), done(200, b"{}"));
        assert_eq!(
            parse_response(&sized[..sized.len() - 1], false),
            Parsed::Incomplete
        );
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{\"\r\n3\r\na\":\r\n1\r\n1\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked, false), done(200, b"{\"a\":1"));
        for cut in 40..chunked.len() - 4 {
            assert_eq!(
                parse_response(&chunked[..cut], false),
                Parsed::Incomplete,
                "{cut}"
            );
        }
        let closed = b"HTTP/1.1 400 Bad Request\r\n\r\n{\"error\":\"x\"}";
        assert_eq!(parse_response(closed, false), Parsed::Incomplete);
        assert_eq!(
            parse_response(closed, true),
            done(400, b"{\"error\":\"x\"}")
        );
        assert_eq!(parse_response(b"garbage\r\n\r\n", false), Parsed::Invalid);
        let bad_chunk = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}XX";
        assert_eq!(parse_response(bad_chunk, false), Parsed::Invalid);
    }

    #[test]
    fn error_detail_is_short_and_masks_tokens() {
        let d = describe_error(
            400,
            br#"{"error":"invalid_grant","error_description":"refresh token r&t=1 revoked\n"}"#,
            &tokens(),
        );
        assert_eq!(
            d,
            "HTTP 400: invalid_grant refresh token [redacted] revoked"
        );
        assert_eq!(describe_error(503, b"<html>", &tokens()), "HTTP 503");
    }
}
