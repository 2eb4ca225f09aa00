//! Errors the proxy answers itself: status, stable code (`x-airlock-error`), JSON body
//! `{"error", "message", "hint"}`, and who is to blame (pingora-style), which decides whether a
//! connection may be reused. Messages never contain a credential, a token or a query string.

use crate::http::HttpError;

/// Who caused a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The agent's request (4xx).
    Downstream,
    /// The upstream or the path to it (502/504).
    Upstream,
    /// airlock itself (5xx).
    Internal,
}

/// A failure answered with an airlock error response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
    /// Overrides the reason phrase (used by `no_service`, which clients print).
    pub reason: Option<String>,
}

impl ProxyError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            hint: None,
            reason: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn blame(&self) -> Blame {
        match self.status {
            400..=499 => Blame::Downstream,
            502 | 504 => Blame::Upstream,
            _ => Blame::Internal,
        }
    }

    /// The full response. `close` adds `Connection: close`.
    pub fn response(&self, close: bool) -> Vec<u8> {
        let body =
            serde_json::json!({"error": self.code, "message": self.message, "hint": self.hint})
                .to_string();
        let reason = self
            .reason
            .clone()
            .unwrap_or_else(|| reason_phrase(self.status).to_owned());
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\nx-airlock-error: {}\r\ncontent-length: {}\r\n",
            self.status,
            self.code,
            body.len()
        );
        if self.status == 407 {
            out.push_str("proxy-authenticate: Basic realm=\"airlock\"\r\n");
        }
        if let Some(secs) = self.retry_after() {
            out.push_str(&format!("retry-after: {secs}\r\n"));
        }
        if close {
            out.push_str("connection: close\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&body);
        out.into_bytes()
    }

    fn retry_after(&self) -> Option<u32> {
        (self.status == 429).then_some(1)
    }
}

impl From<HttpError> for ProxyError {
    fn from(e: HttpError) -> Self {
        Self::new(e.status(), e.code(), e.to_string())
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
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
        403,
        "no_service",
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
            String::from_utf8(ProxyError::new(407, "proxy_auth_required", "x").response(false))
                .unwrap();
        assert!(auth.contains("proxy-authenticate: Basic realm=\"airlock\""));
    }
}
