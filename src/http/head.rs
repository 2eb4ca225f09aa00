//! Request and response heads: strict byte checks, httparse, and framing.
//!
//! [`check_bytes`] runs before httparse because httparse accepts a bare `\n` as a line end
//! (SECURITY-TESTS.md rows 12-13). [`parse_request`] and [`parse_response`] borrow from the read buffer;
//! [`request_framing`] and [`response_framing`] apply R2: CL+TE, TE other than exactly `chunked`,
//! and differing or malformed Content-Length are refused. Heads are never forwarded as received;
//! the proxy re-serialises them.

use super::HttpError;

/// Most headers accepted in one head (row 38).
pub const MAX_HEADERS: usize = 100;
/// Largest head accepted (row 38).
pub const MAX_HEAD: usize = 32 * 1024;

/// Position just past the `\r\n\r\n` that ends a head, if the buffer holds one.
pub fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Every line ends in CRLF; no bare CR or LF, no NUL or other controls but HTAB, no obs-fold.
pub fn check_bytes(head: &[u8]) -> Result<(), HttpError> {
    let mut prev = 0u8;
    let mut line_start = true;
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\n' if prev != b'\r' => return Err(HttpError::BadHeader("bare LF")),
            b'\n' => line_start = true,
            b'\r' if head.get(i + 1) != Some(&b'\n') => {
                return Err(HttpError::BadHeader("bare CR"));
            }
            b'\r' => {}
            b' ' | b'\t' if line_start && i > 0 => {
                // A line that starts with whitespace continues the previous header: obs-fold.
                return Err(HttpError::BadHeader("obs-fold line"));
            }
            0 => return Err(HttpError::BadHeader("NUL byte")),
            0x01..=0x08 | 0x0b..=0x1f | 0x7f => {
                return Err(HttpError::BadHeader("control character"));
            }
            _ => line_start = false,
        }
        prev = b;
    }
    Ok(())
}

/// A parsed request head, borrowing the buffer.
#[derive(Debug)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub target: &'a str,
    /// Minor version: 0 or 1.
    pub version: u8,
    pub headers: Vec<httparse::Header<'a>>,
}

impl<'a> RequestHead<'a> {
    /// The single value of a header, or an error if it appears more than once.
    pub fn one(&self, name: &str) -> Result<Option<&'a [u8]>, HttpError> {
        one(self.headers.iter().map(|h| (h.name, h.value)), name)
    }
}

/// The single value of header `name` among `(name, value)` pairs, or an error if it appears
/// more than once.
pub fn one<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    name: &str,
) -> Result<Option<&'a [u8]>, HttpError> {
    let mut found = None;
    for (_, value) in headers.filter(|(n, _)| n.eq_ignore_ascii_case(name)) {
        if found.is_some() {
            return Err(HttpError::BadRequest(
                "a header that must appear once appears twice",
            ));
        }
        found = Some(value);
    }
    Ok(found)
}

fn map_parse_error(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::HeadersTooLarge(MAX_HEAD),
        httparse::Error::HeaderName => HttpError::BadHeader("invalid header name"),
        httparse::Error::HeaderValue => HttpError::BadHeader("invalid header value"),
        httparse::Error::NewLine => HttpError::BadHeader("bad line ending"),
        _ => HttpError::BadRequest("malformed request line"),
    }
}

/// Parses a complete request head (`head` ends with CRLFCRLF and passed [`check_bytes`]).
pub fn parse_request(head: &[u8]) -> Result<RequestHead<'_>, HttpError> {
    check_bytes(head)?;
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    match req.parse(head).map_err(map_parse_error)? {
        httparse::Status::Complete(_) => {}
        httparse::Status::Partial => return Err(HttpError::BadRequest("incomplete head")),
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::BadRequest("malformed request line"));
    };
    // RFC 9112 has no fragment in a request target. Upstreams that split one off (Python's
    // urlsplit, Node's URL, Puma) act on the path before it, which rules would not have seen:
    // refused in every form (row 100).
    if target.contains('#') {
        return Err(HttpError::BadRequest(
            "a request target has no fragment (`#`)",
        ));
    }
    Ok(RequestHead {
        method,
        target,
        version,
        headers: req.headers.to_vec(),
    })
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead<'a> {
    pub status: u16,
    pub reason: &'a str,
    pub version: u8,
    pub headers: Vec<httparse::Header<'a>>,
}

pub fn parse_response(head: &[u8]) -> Result<ResponseHead<'_>, HttpError> {
    check_bytes(head)?;
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    match resp.parse(head).map_err(map_parse_error)? {
        httparse::Status::Complete(_) => {}
        httparse::Status::Partial => return Err(HttpError::BadRequest("incomplete head")),
    }
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(HttpError::BadRequest("malformed status line"));
    };
    Ok(ResponseHead {
        status,
        reason: resp.reason.unwrap_or(""),
        version,
        headers: resp.headers.to_vec(),
    })
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

fn framing(headers: &[httparse::Header<'_>]) -> Result<Option<Framing>, HttpError> {
    let mut te = None;
    let mut cl: Option<u64> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if te.is_some() {
                return Err(HttpError::BadFraming("duplicate Transfer-Encoding"));
            }
            if !h.value.eq_ignore_ascii_case(b"chunked") {
                return Err(HttpError::BadFraming(
                    "Transfer-Encoding other than chunked",
                ));
            }
            te = Some(());
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)?;
            if cl.is_some_and(|c| c != n) {
                return Err(HttpError::BadFraming("differing Content-Length headers"));
            }
            cl = Some(n);
        } else if h.name.contains('_')
            && h.name.to_ascii_lowercase().replace('_', "-") == "transfer-encoding"
        {
            return Err(HttpError::BadFraming("Transfer_Encoding look-alike header"));
        }
    }
    match (te, cl) {
        (Some(()), Some(_)) => Err(HttpError::BadFraming(
            "both Content-Length and Transfer-Encoding",
        )),
        (Some(()), None) => Ok(Some(Framing::Chunked)),
        (None, Some(0)) => Ok(Some(Framing::Empty)),
        (None, Some(n)) => Ok(Some(Framing::Length(n))),
        (None, None) => Ok(None),
    }
}

/// 1 to 19 ASCII digits (no sign, no list, no overflow: row 11).
pub fn parse_content_length(v: &[u8]) -> Result<u64, HttpError> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadFraming("invalid Content-Length"));
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::BadFraming("invalid Content-Length"))
}

/// A request without CL or TE has no body.
pub fn request_framing(req: &RequestHead<'_>) -> Result<Framing, HttpError> {
    Ok(framing(&req.headers)?.unwrap_or(Framing::Empty))
}

/// RFC 9112 section 6.3, for the response to `method`.
pub fn response_framing(method: &str, resp: &ResponseHead<'_>) -> Result<Framing, HttpError> {
    if method == "HEAD"
        || resp.status == 204
        || resp.status == 304
        || (100..200).contains(&resp.status)
    {
        return Ok(Framing::Empty);
    }
    Ok(framing(&resp.headers)?.unwrap_or(Framing::Close))
}

/// Hop-by-hop headers, never forwarded (plus whatever `Connection` names).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Whether `name` must not be forwarded, given the message's `Connection` header values.
pub fn is_hop_by_hop(name: &str, connection: &[&[u8]]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || connection.iter().any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
        })
}

/// Whether the message asks to close the connection after it.
pub fn wants_close(version: u8, headers: &[httparse::Header<'_>]) -> bool {
    let mut close = version == 0;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
    {
        for t in h.value.split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                close = false;
            }
        }
    }
    close
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Result<Framing, HttpError> {
        let head = parse_request(raw.as_bytes())?;
        request_framing(&head)
    }

    /// SECURITY-TESTS.md rows 12-13 (B-04, B-05).
    #[test]
    fn row12_row13_bare_line_ends_nul_and_obs_fold() {
        for bad in [
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\0\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(bad.as_bytes()), Err(HttpError::BadHeader(_))),
                "{bad:?}"
            );
        }
        assert!(parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\tb\r\n\r\n").is_ok());
    }

    /// Row 100: a fragment in the request target, in origin, absolute and authority form.
    #[test]
    fn row100_fragment_in_a_request_target_is_refused() {
        for target in [
            "/v1/refunds#",
            "/v1/charges#3",
            "/v1/refunds?x=1#y",
            "https://rul.example.com/v1/refunds#",
            "api.example.com:443#@evil",
        ] {
            let raw = format!("POST {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(
                matches!(parse_request(raw.as_bytes()), Err(HttpError::BadRequest(_))),
                "{target}"
            );
        }
        assert!(parse_request(b"POST /v1/refunds%23 HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
    }

    /// SECURITY-TESTS.md rows 9-11 (B-01..B-03).
    #[test]
    fn row9_row10_row11_framing() {
        let bad = [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1,2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        ];
        for raw in bad {
            assert!(matches!(req(raw), Err(HttpError::BadFraming(_))), "{raw:?}");
        }
        assert_eq!(
            req("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            req("POST / HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(req("GET / HTTP/1.1\r\n\r\n"), Ok(Framing::Empty));
    }

    #[test]
    fn row38_too_many_headers() {
        let mut raw = String::from("GET / HTTP/1.1\r\n");
        for i in 0..150 {
            raw.push_str(&format!("X-{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        assert_eq!(parse_request(raw.as_bytes()).unwrap_err().status(), 431);
    }

    #[test]
    fn hop_by_hop_includes_connection_named_headers() {
        let conn: [&[u8]; 1] = [b"Authorization, X-Foo"];
        assert!(is_hop_by_hop("x-foo", &conn));
        assert!(is_hop_by_hop("Keep-Alive", &[]));
        assert!(!is_hop_by_hop("accept", &conn));
    }
}
