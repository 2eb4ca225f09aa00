//! OAuth credentials: a refresh token, with its token endpoint and client id, from which the data
//! plane keeps a fresh access token (the refreshing itself is `crate::oauth`'s).
//!
//! What is not secret sits in the clear on the credential record ([`OAuthMeta`]: endpoint, client
//! id, scope, request format, expiry, a version bumped by every change of the tokens, the last
//! refresh failure). The access token, the refresh token and an optional client secret are sealed
//! together as one value ([`OAuthTokens`]), bound to the vault and key like any credential.
//!
//! This module owns the record shape, the import formats an operator pastes ([`Import::parse`]:
//! an RFC 6749 token response, Claude Code's `.credentials.json`, Codex's `auth.json`, a bare
//! refresh token, or a Google service-account key file, whose private key is sealed where a
//! refresh token would be). It does no network I/O; the store writes are
//! [`super::oauth_store`]'s.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::now;

use crate::secret::{Secret, check_value};

/// How a renewal's request is written: the refresh-token grant in RFC 6749's form encoding or
/// in JSON (Anthropic's and OpenAI's token endpoints, as Claude Code and Codex call them), or a
/// service account's signed JWT grant (RFC 7523, Google's), for which the sealed "refresh
/// token" is the account's private key.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RequestFormat {
    #[default]
    Form,
    Json,
    #[serde(rename = "jwt-bearer")]
    JwtBearer,
}

/// The scope a Google service account asks for when none is given.
pub const GOOGLE_DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's token endpoint, when a key file names none.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// The clear part of an OAuth credential.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
pub struct OAuthMeta {
    /// `https://host[:port]/path`.
    pub token_endpoint: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default)]
    pub request: RequestFormat,
    /// A service account's key id (the JWT header's `kid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// When the access token expires (Unix seconds); 0 when unknown.
    pub expires_at: u64,
    /// When the access token was obtained or imported (Unix seconds).
    pub obtained_at: u64,
    /// Bumped whenever the sealed tokens change (import or refresh).
    pub version: u64,
    /// The last refresh failure, cleared by the next success or import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<RefreshFailure>,
}

impl OAuthMeta {
    /// When to refresh: ahead of expiry by half the token's lifetime, at most five minutes.
    /// `None` when the expiry is unknown (a 401 from upstream triggers the refresh then).
    pub fn refresh_at(&self) -> Option<u64> {
        if self.expires_at == 0 {
            return None;
        }
        let lifetime = self.expires_at.saturating_sub(self.obtained_at);
        Some(self.expires_at - (lifetime / 2).min(300))
    }

    /// One line for operators: `ok, expires 2026-...`, `waiting for its first access token`, or
    /// `failing (rejected): HTTP 400: invalid_grant`.
    pub fn status(&self) -> String {
        match &self.failure {
            Some(f) => format!("failing ({}): {}", f.code.as_str(), f.detail),
            None if self.expires_at == 1 => "waiting for its first access token".into(),
            None if self.expires_at == 0 => "ok, expiry unknown".into(),
            None => format!("ok, expires {}", super::rfc3339(self.expires_at)),
        }
    }

    /// Whether the access token is past its expiry.
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at != 0 && now >= self.expires_at
    }

    /// When a failed refresh may be tried again: never after a rejection (the refresh token is
    /// dead until an operator imports a new one); after a transient failure, 5 s doubling per
    /// attempt up to 5 minutes.
    pub fn retry_at(&self) -> Option<u64> {
        match &self.failure {
            None => Some(0),
            Some(f) if f.code == FailureCode::Rejected => None,
            Some(f) => Some(f.at + (5u64 << f.attempts.min(6)).min(300)),
        }
    }
}

/// Why a refresh failed, as stored and shown to operators.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
pub struct RefreshFailure {
    pub code: FailureCode,
    /// What the token endpoint or the connection said (never a token).
    pub detail: String,
    pub at: u64,
    /// Consecutive failures.
    pub attempts: u32,
}

/// The stable codes of a refresh failure.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The token endpoint refused the refresh token (`invalid_grant` and the like): permanent
    /// until an operator imports a new token pair.
    Rejected,
    /// The endpoint could not be reached (refused by the SSRF guard, DNS, TCP, TLS, timeout) or
    /// answered with a server error: retried with a backoff.
    Unavailable,
    /// The endpoint answered something that is not a token response.
    InvalidResponse,
}

impl FailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Unavailable => "unavailable",
            Self::InvalidResponse => "invalid_response",
        }
    }
}

/// The sealed part of an OAuth credential.
#[derive(Clone, Debug, Default)]
pub struct OAuthTokens {
    /// Empty until the first refresh when only a refresh token was imported.
    pub access: Secret,
    pub refresh: Secret,
    /// Sent as `client_secret` when set (confidential clients).
    pub client_secret: Option<Secret>,
}

impl OAuthTokens {
    /// `[u32 length][bytes]` for access, refresh and client secret (empty when none).
    pub(super) fn encode(&self) -> Secret {
        let empty = Secret::default();
        let parts = [
            &self.access,
            &self.refresh,
            self.client_secret.as_ref().unwrap_or(&empty),
        ];
        let mut out = Vec::with_capacity(12 + parts.iter().map(|p| p.len()).sum::<usize>());
        for p in parts {
            out.extend_from_slice(&(p.len() as u32).to_be_bytes());
            out.extend_from_slice(p.expose());
        }
        Secret::new(out)
    }

    pub(super) fn decode(mut raw: &[u8]) -> Option<Self> {
        let mut next = || {
            let (len, rest) = raw.split_first_chunk::<4>()?;
            let len = u32::from_be_bytes(*len) as usize;
            let value = rest.get(..len)?.to_vec();
            raw = &rest[len..];
            Some(Secret::new(value))
        };
        let (access, refresh, secret) = (next()?, next()?, next()?);
        Some(Self {
            access,
            refresh,
            client_secret: (!secret.is_empty()).then_some(secret),
        })
    }

    /// Every value here, for the response scrubber.
    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        [&self.access, &self.refresh]
            .into_iter()
            .chain(self.client_secret.as_ref())
            .filter(|s| !s.is_empty())
    }
}

/// A token endpoint URL, split: always HTTPS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or("the token endpoint must be an https:// URL")?;
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or("the token endpoint's port is not a port number")?,
            ),
            None => (authority, 443),
        };
        crate::spec::HostPattern::parse(host)
            .ok()
            .filter(|p| matches!(p.host, crate::spec::HostName::Exact(_)))
            .ok_or("the token endpoint's host is not a host name")?;
        if path.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#') {
            return Err(
                "the token endpoint's path has a space, control character or fragment".into(),
            );
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
            path: path.to_owned(),
        })
    }
}

/// What an operator imports: the tokens, their expiry if known, and the endpoint and client id
/// of the program whose file it was, when recognised.
#[derive(Debug)]
pub struct Import {
    pub tokens: OAuthTokens,
    pub expires_at: u64,
    pub preset: Option<Preset>,
    /// Set for a Google service-account key file (its private key is `tokens.refresh`).
    pub service_account: Option<ServiceAccount>,
}

/// The clear part of a Google service-account key file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ServiceAccount {
    pub client_email: String,
    #[serde(default)]
    pub private_key_id: Option<String>,
    #[serde(default)]
    pub token_uri: Option<String>,
}

#[derive(Deserialize)]
struct ServiceAccountFile {
    #[serde(rename = "type")]
    kind: String,
    #[serde(flatten)]
    account: ServiceAccount,
    private_key: Text,
}

/// The DER of a PEM `PRIVATE KEY` (PKCS#8) block, checked to be an RSA key ring signs with.
pub fn rsa_pkcs8(pem: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "the private key is not PEM text")?;
    let body = text
        .split("-----BEGIN PRIVATE KEY-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END PRIVATE KEY-----").next())
        .ok_or("the private key is not a PEM PRIVATE KEY (PKCS#8) block")?;
    let b64: Zeroizing<String> = Zeroizing::new(body.split_whitespace().collect());
    let der = Zeroizing::new(
        data_encoding::BASE64
            .decode(b64.as_bytes())
            .map_err(|_| "the private key's PEM is not base64")?,
    );
    ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|e| format!("the private key is not a usable RSA key: {e}"))?;
    Ok(der)
}

/// Token endpoints and client ids of agents whose login files airlock recognises, as found in
/// the versions the tests pin (Claude Code 2.1, Codex 0.171). Flags override them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    pub program: &'static str,
    pub token_endpoint: &'static str,
    pub client_id: &'static str,
    pub request: RequestFormat,
}

pub const CLAUDE_CODE: Preset = Preset {
    program: "Claude Code",
    token_endpoint: "https://platform.claude.com/v1/oauth/token",
    client_id: "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
    request: RequestFormat::Json,
};

pub const CODEX: Preset = Preset {
    program: "Codex",
    token_endpoint: "https://auth.openai.com/oauth/token",
    client_id: "app_EMoamEEZ73f0CkXaXp7hrann",
    request: RequestFormat::Json,
};

type Text = Zeroizing<String>;

/// RFC 6749 section 5.1, the shape of a token response (and of what the refresher reads back).
#[derive(Debug, Default, Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub access_token: Option<Text>,
    #[serde(default)]
    pub refresh_token: Option<Text>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// Not RFC 6749, but what a saved token file often holds instead of `expires_in`.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaudeOauth {
    access_token: Option<Text>,
    refresh_token: Option<Text>,
    /// Milliseconds.
    expires_at: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaudeFile {
    claude_ai_oauth: ClaudeOauth,
}

#[derive(Deserialize)]
struct CodexFile {
    tokens: TokenResponse,
}

impl Import {
    /// Reads what an operator pasted or pointed at: a Google service-account key file (`"type":
    /// "service_account"`, its RSA key checked), a token response (`access_token`,
    /// `refresh_token`, `expires_in` or `expires_at`), Claude Code's `.credentials.json`, Codex's
    /// `auth.json`, or a bare refresh token on one line.
    pub fn parse(raw: &[u8]) -> Result<Self, String> {
        let trimmed = raw.trim_ascii();
        if let Ok(f) = serde_json::from_slice::<ServiceAccountFile>(trimmed)
            && f.kind == "service_account"
        {
            rsa_pkcs8(f.private_key.as_bytes())?;
            check_value(f.account.client_email.as_bytes())
                .map_err(|e| format!("client_email: {e}"))?;
            return Ok(Self {
                tokens: OAuthTokens {
                    refresh: Secret::new(f.private_key.as_bytes().to_vec()),
                    ..OAuthTokens::default()
                },
                expires_at: 0,
                preset: None,
                service_account: Some(f.account),
            });
        }
        if !trimmed.starts_with(b"{") {
            let refresh = Secret::new(trimmed.to_vec());
            check_value(refresh.expose()).map_err(|e| format!("the refresh token: {e}"))?;
            if std::str::from_utf8(refresh.expose()).is_err() {
                return Err("the refresh token is not UTF-8 text".into());
            }
            return Ok(Self {
                tokens: OAuthTokens {
                    refresh,
                    ..OAuthTokens::default()
                },
                expires_at: 0,
                preset: None,
                service_account: None,
            });
        }
        let bad = |e: serde_json::Error| format!("the token file does not parse: {e}");
        let (access, refresh, expires_at, preset) =
            if let Ok(f) = serde_json::from_slice::<ClaudeFile>(trimmed) {
                let o = f.claude_ai_oauth;
                let at = o.expires_at.map(|ms| ms / 1000);
                (o.access_token, o.refresh_token, at, Some(CLAUDE_CODE))
            } else if let Ok(f) = serde_json::from_slice::<CodexFile>(trimmed) {
                let t = f.tokens;
                (t.access_token, t.refresh_token, t.expires_at, Some(CODEX))
            } else {
                let t: TokenResponse = serde_json::from_slice(trimmed).map_err(bad)?;
                let at = t.expires_at.or(t.expires_in.map(|s| now() + s));
                (t.access_token, t.refresh_token, at, None)
            };
        let refresh = refresh.ok_or("the token file has no refresh token")?;
        let access = access.filter(|a| !a.is_empty());
        let tokens = OAuthTokens {
            access: Secret::new(access.map(|a| a.as_bytes().to_vec()).unwrap_or_default()),
            refresh: Secret::new(refresh.as_bytes().to_vec()),
            client_secret: None,
        };
        check_value(tokens.refresh.expose()).map_err(|e| format!("the refresh token: {e}"))?;
        if !tokens.access.is_empty() {
            check_value(tokens.access.expose()).map_err(|e| format!("the access token: {e}"))?;
        }
        let expires_at = expires_at
            .or_else(|| jwt_expiry(tokens.access.expose()))
            .unwrap_or(0);
        Ok(Self {
            tokens,
            expires_at,
            preset,
            service_account: None,
        })
    }
}

/// The `exp` claim of a JWT access token (Codex's are JWTs), read without verifying it: it only
/// schedules the refresh.
pub fn jwt_expiry(token: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Claims {
        exp: u64,
    }
    let payload = token.split(|&b| b == b'.').nth(1)?;
    let json = data_encoding::BASE64URL_NOPAD.decode(payload).ok()?;
    serde_json::from_slice::<Claims>(&json).ok().map(|c| c.exp)
}

/// The operator's settings for an OAuth credential.
#[derive(Clone, Debug)]
pub struct Settings {
    pub token_endpoint: String,
    pub client_id: String,
    pub scope: Option<String>,
    pub request: RequestFormat,
    pub key_id: Option<String>,
}

impl Settings {
    /// The operator's choices, falling back to the endpoint, client id and request format of the
    /// agent whose login file `import` came from.
    pub fn resolve(
        import: &Import,
        token_endpoint: Option<String>,
        client_id: Option<String>,
        scope: Option<String>,
        request: Option<RequestFormat>,
    ) -> Result<Self, String> {
        if let Some(sa) = &import.service_account {
            if request.is_some_and(|r| r != RequestFormat::JwtBearer) {
                return Err("a service-account key is renewed with the JWT grant only".into());
            }
            return Ok(Self {
                token_endpoint: token_endpoint
                    .or(sa.token_uri.clone())
                    .unwrap_or_else(|| GOOGLE_TOKEN_URI.to_owned()),
                client_id: client_id.unwrap_or_else(|| sa.client_email.clone()),
                scope: Some(scope.unwrap_or_else(|| GOOGLE_DEFAULT_SCOPE.to_owned())),
                request: RequestFormat::JwtBearer,
                key_id: sa.private_key_id.clone(),
            });
        }
        if request == Some(RequestFormat::JwtBearer) {
            return Err("the JWT grant needs a service-account key file (--from)".into());
        }
        let preset = import.preset;
        Ok(Self {
            token_endpoint: token_endpoint
                .or(preset.map(|p| p.token_endpoint.to_owned()))
                .ok_or("a token endpoint (--token-endpoint) is required for this token file")?,
            client_id: client_id
                .or(preset.map(|p| p.client_id.to_owned()))
                .ok_or("a client id (--client-id) is required for this token file")?,
            scope,
            request: request.or(preset.map(|p| p.request)).unwrap_or_default(),
            key_id: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let t = OAuthTokens {
            access: Secret::new(b"at-1".to_vec()),
            refresh: Secret::new(b"rt-1".to_vec()),
            client_secret: None,
        };
        let back = OAuthTokens::decode(t.encode().expose()).unwrap();
        assert_eq!(back.access.expose(), b"at-1");
        assert_eq!(back.refresh.expose(), b"rt-1");
        assert!(back.client_secret.is_none());
        assert!(OAuthTokens::decode(&t.encode().expose()[..9]).is_none());
        assert!(OAuthTokens::decode(&[0, 0, 0, 9, 1]).is_none());
    }

    #[test]
    fn service_account_files_are_checked() {
        let file = |key: &str| {
            format!(
                r#"{{"type":"service_account","client_email":"a@p.iam.gserviceaccount.com","private_key":{key:?},"private_key_id":"k1"}}"#
            )
        };
        let e = Import::parse(file("not a key").as_bytes()).unwrap_err();
        assert!(e.contains("PEM PRIVATE KEY"), "{e}");
        let e = Import::parse(
            file("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").as_bytes(),
        )
        .unwrap_err();
        assert!(e.contains("not a usable RSA key"), "{e}");
        // A JSON file of another type is not a service account.
        let e = Import::parse(br#"{"type":"authorized_user","refresh_token":"r"}"#).unwrap();
        assert!(e.service_account.is_none());
    }

    #[test]
    fn imports_each_shape() {
        let rfc =
            Import::parse(br#"{"access_token":"a","refresh_token":"r","expires_in":60}"#).unwrap();
        assert_eq!(rfc.tokens.access.expose(), b"a");
        assert!(rfc.expires_at >= now() + 59 && rfc.preset.is_none());
        let claude = Import::parse(
            br#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r","expiresAt":1700000000000,"scopes":["user:inference"]}}"#,
        )
        .unwrap();
        assert_eq!(claude.expires_at, 1_700_000_000);
        assert_eq!(claude.preset, Some(CLAUDE_CODE));
        let jwt = format!(
            "h.{}.s",
            data_encoding::BASE64URL_NOPAD.encode(br#"{"exp":1800000000}"#)
        );
        let codex = Import::parse(
            format!(r#"{{"OPENAI_API_KEY":null,"tokens":{{"access_token":"{jwt}","refresh_token":"r","id_token":"x"}}}}"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            (codex.expires_at, codex.preset),
            (1_800_000_000, Some(CODEX))
        );
        let bare = Import::parse(b"rt-only\n").unwrap();
        assert!(bare.tokens.access.is_empty() && bare.tokens.refresh.expose() == b"rt-only");
        assert!(Import::parse(br#"{"access_token":"a"}"#).is_err());
        assert!(Import::parse(b"a\rb").is_err());
    }

    #[test]
    fn endpoint_must_be_https_with_a_host() {
        let e = Endpoint::parse("https://auth.example.com:8443/oauth/token").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("auth.example.com", 8443, "/oauth/token")
        );
        assert_eq!(Endpoint::parse("https://a.example.com").unwrap().path, "/");
        for bad in [
            "http://a.example.com/t",
            "https://*.example.com/t",
            "https://a.example.com:0/t",
            "https://a.example.com/t x",
            "https:///t",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refresh_schedule() {
        let mut m = OAuthMeta {
            token_endpoint: String::new(),
            client_id: String::new(),
            scope: None,
            request: RequestFormat::Form,
            key_id: None,
            expires_at: 1000 + 3600,
            obtained_at: 1000,
            version: 1,
            failure: None,
        };
        assert_eq!(m.refresh_at(), Some(1000 + 3600 - 300));
        m.expires_at = 1004;
        assert_eq!(m.refresh_at(), Some(1002));
        m.expires_at = 0;
        assert_eq!(m.refresh_at(), None);
        m.failure = Some(RefreshFailure {
            code: FailureCode::Unavailable,
            detail: String::new(),
            at: 50,
            attempts: 2,
        });
        assert_eq!(m.retry_at(), Some(70));
        m.failure.as_mut().unwrap().code = FailureCode::Rejected;
        assert_eq!(m.retry_at(), None);
    }
}
