//! Errors the proxy answers itself: an [`ErrorKind`] (status, stable code for `x-airlock-error`,
//! who is to blame, whether the request may be sent again on a fresh connection), a message and a
//! hint, answered as a JSON body `{"error", "message", "hint"}`. Every decision about an error
//! reads its kind; the code string is only ever written out. Messages never contain a credential,
//! a token or a query string.

use crate::http::HttpError;

/// Who caused a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The agent's request (4xx).
    Client,
    /// The upstream or the path to it.
    Upstream,
    /// airlock itself, or its store: what an operator looks at.
    Airlock,
}

macro_rules! kinds {
    ($($(#[$doc:meta])* $kind:ident = $status:literal $code:literal $blame:ident,)*) => {
        /// What went wrong, one variant per refusal the proxy answers. The code is stable: agents
        /// and operators match on it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorKind {
            $($(#[$doc])* $kind,)*
            /// A vault error answered on the agent API with the vault's own status and code.
            Vault { status: u16, code: &'static str },
        }

        impl ErrorKind {
            /// Every kind but [`ErrorKind::Vault`], for the README's code list (tested).
            pub const ALL: &'static [ErrorKind] = &[$(Self::$kind,)*];

            /// The status answered.
            pub fn status(self) -> u16 {
                match self {
                    $(Self::$kind => $status,)*
                    Self::Vault { status, .. } => status,
                }
            }

            /// The stable code (`x-airlock-error`, the body's `error`, the request log).
            pub fn code(self) -> &'static str {
                match self {
                    $(Self::$kind => $code,)*
                    Self::Vault { code, .. } => code,
                }
            }

            pub fn blame(self) -> Blame {
                match self {
                    $(Self::$kind => Blame::$blame,)*
                    Self::Vault { status, .. } if status < 500 => Blame::Client,
                    Self::Vault { .. } => Blame::Airlock,
                }
            }
        }
    };
}

kinds! {
    BadRequest = 400 "bad_request" Client,
    /// An agent-API body without a Content-Length.
    LengthRequired = 411 "bad_request" Client,
    BadFraming = 400 "bad_framing" Client,
    BadHeader = 400 "bad_header" Client,
    BadAuthority = 400 "bad_authority" Client,
    BadHost = 400 "bad_host" Client,
    BadPath = 400 "bad_path" Client,
    HostMismatch = 421 "host_mismatch" Client,
    HeadersTooLarge = 431 "headers_too_large" Client,
    BodyTooLarge = 413 "body_too_large" Client,
    NoService = 403 "no_service" Client,
    ServiceDisabled = 403 "service_disabled" Client,
    DestinationBlocked = 403 "destination_blocked" Client,
    PlaintextRefused = 403 "plaintext_refused" Client,
    SubstitutionFieldDenied = 403 "substitution_field_denied" Client,
    /// A service substitutes in request bodies, and this one is chunked or over the buffer.
    SubstitutionBodyTooLarge = 413 "substitution_body_too_large" Client,
    Forbidden = 403 "forbidden" Client,
    NotFound = 404 "not_found" Client,
    ProxyAuthRequired = 407 "proxy_auth_required" Client,
    /// Authentication required on the agent API (plain HTTP authentication).
    Unauthorized = 401 "unauthorized" Client,
    InvalidToken = 407 "invalid_token" Client,
    TokenExpired = 407 "token_expired" Client,
    TokenRevoked = 407 "token_revoked" Client,
    VaultMismatch = 407 "vault_mismatch" Client,
    RateLimited = 429 "rate_limited" Client,
    /// An `aws-sigv4` request whose body is chunk-signed by the agent's SDK.
    SigV4StreamingSigned = 400 "sigv4_streaming_signed" Client,
    /// An `aws-sigv4` request (not S3) whose body is too large or unframed to be hashed.
    SigV4BodyTooLarge = 413 "sigv4_body_too_large" Client,
    /// A request rule of the service refuses it (`action: deny`, or `rules_default: deny`).
    RuleDenied = 403 "rule_denied" Client,
    /// A `limit` rule's rate is used up.
    RuleLimited = 429 "rule_limited" Client,
    /// The path cannot be judged by the service's rules without guessing (an encoded `/`, `..;`).
    RulePathAmbiguous = 400 "rule_path_ambiguous" Client,
    /// A body may name another method (`_method`) that the service's rules would judge, but it
    /// cannot be read first (chunked, over the hold buffer) or parsed as its framework would.
    RuleMethodAmbiguous = 400 "rule_method_ambiguous" Client,
    /// An operator rejected a held request.
    HoldRejected = 403 "hold_rejected" Client,
    /// No operator answered a held request within `hold_timeout`.
    HoldTimedOut = 403 "hold_timed_out" Client,
    /// A held request's body is chunked or over the hold buffer.
    HoldBodyTooLarge = 413 "hold_body_too_large" Client,
    /// A held request's body is compressed (`Content-Encoding`): the operator could not read it.
    HoldBodyEncoded = 415 "hold_body_encoded" Client,
    /// Too many requests of the vault are already waiting for an operator.
    TooManyHolds = 429 "too_many_holds" Client,
    UpstreamUnreachable = 502 "upstream_unreachable" Upstream,
    UpstreamTlsError = 502 "upstream_tls_error" Upstream,
    UpstreamProtocolError = 502 "upstream_protocol_error" Upstream,
    UpstreamTimeout = 504 "upstream_timeout" Upstream,
    /// The configured upstream proxy refused the CONNECT (other than for its credentials).
    UpstreamProxyRefused = 502 "upstream_proxy_refused" Upstream,
    /// The configured upstream proxy refused airlock's credentials (407).
    UpstreamProxyAuth = 502 "upstream_proxy_auth" Airlock,
    OAuthRefreshFailed = 502 "oauth_refresh_failed" Upstream,
    CredentialMissing = 502 "credential_missing" Airlock,
    CredentialIntegrity = 502 "credential_integrity" Airlock,
    FleetStale = 503 "fleet_stale" Airlock,
    Overloaded = 503 "overloaded" Airlock,
    AuditUnavailable = 503 "audit_unavailable" Airlock,
    StorageUnavailable = 503 "storage_unavailable" Airlock,
}

impl ErrorKind {
    /// Whether a request that failed this way on a reused upstream connection, before any
    /// response byte arrived, may be sent again on a fresh one (pingora's `ReusedOnly`): the
    /// upstream closed or reset the idle connection under the request.
    pub fn retry_on_fresh_connection(self) -> bool {
        matches!(
            self,
            Self::UpstreamUnreachable | Self::UpstreamProtocolError
        )
    }

    /// Whether this is a proxy-authentication failure (answered 407 on the proxy).
    pub fn is_auth(self) -> bool {
        self.status() == 407
    }
}

/// A failure answered with an airlock error response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyError {
    kind: ErrorKind,
    status: u16,
    message: String,
    hint: Option<String>,
    /// Overrides the reason phrase (used by `no_service`, which clients print).
    reason: Option<String>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            status: kind.status(),
            message: message.into(),
            hint: None,
            reason: None,
        }
    }

    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// The status answered: the kind's, but for an authentication failure on the agent API.
    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// On the agent API, authentication is plain HTTP authentication: a 407 becomes 401,
    /// keeping its code, but for "no credentials at all", which is `unauthorized`.
    #[must_use]
    pub fn as_api_auth(self) -> Self {
        match self.kind {
            ErrorKind::ProxyAuthRequired => Self::new(
                ErrorKind::Unauthorized,
                "send Authorization: Bearer <token>",
            ),
            k if k.is_auth() => Self {
                status: 401,
                hint: None,
                ..self
            },
            _ => self,
        }
    }

    /// The full response. `close` adds `Connection: close`.
    pub fn response(&self, close: bool) -> Vec<u8> {
        let body =
            serde_json::json!({"error": self.code(), "message": self.message, "hint": self.hint})
                .to_string();
        let reason = self
            .reason
            .as_deref()
            .unwrap_or_else(|| reason_phrase(self.status));
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\nx-airlock-error: {}\r\ncontent-length: {}\r\n",
            self.status,
            self.code(),
            body.len()
        );
        if self.status == 407 {
            out.push_str("proxy-authenticate: Basic realm=\"airlock\"\r\n");
        }
        if self.status == 429 {
            out.push_str("retry-after: 1\r\n");
        }
        if close {
            out.push_str("connection: close\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&body);
        out.into_bytes()
    }
}

impl From<HttpError> for ProxyError {
    fn from(e: HttpError) -> Self {
        let kind = match e {
            HttpError::BadHeader(_) => ErrorKind::BadHeader,
            HttpError::BadFraming(_) => ErrorKind::BadFraming,
            HttpError::BadRequest(_) => ErrorKind::BadRequest,
            HttpError::HeadersTooLarge(_) => ErrorKind::HeadersTooLarge,
            HttpError::BodyTooLarge(_) => ErrorKind::BodyTooLarge,
        };
        Self::new(kind, e.to_string())
    }
}

impl From<crate::vault::VaultError> for ProxyError {
    fn from(e: crate::vault::VaultError) -> Self {
        let kind = ErrorKind::Vault {
            status: e.status(),
            code: e.code(),
        };
        Self::new(kind, e.to_string())
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// The 403 for a host no service matches, with the proposal hint in the reason phrase.
pub fn no_service(host: &str, port: u16, api_base: &str) -> ProxyError {
    let mut e = ProxyError::new(
        ErrorKind::NoService,
        format!("no service in this vault matches {host}:{port}"),
    )
    .hint(format!(
        "propose access with POST {api_base}/v1/proposals (see {api_base}/v1/guide)"
    ));
    e.reason = Some(format!(
        "no_service: propose access at {api_base}/v1/proposals"
    ));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_shape() {
        let r =
            String::from_utf8(no_service("api.x.com", 443, "http://127.0.0.1:7480").response(true))
                .unwrap();
        assert!(
            r.starts_with(
                "HTTP/1.1 403 no_service: propose access at http://127.0.0.1:7480/v1/proposals\r\n"
            ),
            "{r}"
        );
        assert!(r.contains("x-airlock-error: no_service\r\n"));
        let body = r.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "no_service");
        assert!(v["hint"].as_str().unwrap().contains("/v1/proposals"));
        let auth =
            String::from_utf8(ProxyError::new(ErrorKind::ProxyAuthRequired, "x").response(false))
                .unwrap();
        assert!(auth.contains("proxy-authenticate: Basic realm=\"airlock\""));
        let limited =
            String::from_utf8(ProxyError::new(ErrorKind::RateLimited, "x").response(false))
                .unwrap();
        assert!(limited.contains("retry-after: 1\r\n"));
    }

    /// On the agent API a 407 is a 401 with the same code; no credentials at all is
    /// `unauthorized`.
    #[test]
    fn agent_api_auth_is_http_auth() {
        let revoked = ProxyError::new(ErrorKind::TokenRevoked, "gone").as_api_auth();
        assert_eq!((revoked.status(), revoked.code()), (401, "token_revoked"));
        let none = ProxyError::new(ErrorKind::ProxyAuthRequired, "x").as_api_auth();
        assert_eq!((none.status(), none.code()), (401, "unauthorized"));
        let other = ProxyError::new(ErrorKind::NotFound, "x").as_api_auth();
        assert_eq!(other.status(), 404);
    }

    /// The codes in backquotes in the Errors chapter's text from `from` up to the next `to`.
    fn readme_codes(from: &str, to: &str) -> std::collections::BTreeSet<&'static str> {
        let readme = include_str!("../../docs/src/errors.md");
        let start = readme.find(from).expect("the README's list");
        let end = start + readme[start..].find(to).expect("end of the list");
        readme[start..end].split('`').skip(1).step_by(2).collect()
    }

    /// The Errors chapter's list of codes is the type's: every code is documented, and every code the
    /// README names exists; so is its list of the errors airlock itself is to blame for.
    #[test]
    fn readme_lists_every_code() {
        let codes = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(
            readme_codes("Codes in use:", ". The agent"),
            codes,
            "docs/src/errors.md's error codes and ErrorKind differ"
        );
        let ours = ErrorKind::ALL
            .iter()
            .filter(|k| k.blame() == Blame::Airlock)
            .map(|k| k.code())
            .collect();
        assert_eq!(
            readme_codes(
                "errors that airlock itself is to blame for (",
                ", and the vault"
            ),
            ours,
            "docs/src/errors.md's list of airlock's own errors"
        );
        for k in ErrorKind::ALL {
            let blame_fits = match k.blame() {
                Blame::Client => k.status() < 500,
                Blame::Upstream | Blame::Airlock => k.status() >= 500,
            };
            assert!(blame_fits, "{k:?}");
        }
    }
}
