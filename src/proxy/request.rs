//! The request head, parsed once where it is read ([`Request::parse`]) and handed to every later
//! step: the CONNECT decision, proxy authentication, the agent API, matching and injection, and
//! the request log. It owns its bytes (taken out of the client's read buffer, zeroized on drop:
//! they may hold a token) and keeps the positions httparse found, so no step parses it again.
//! Framing and `Connection: close` are worked out once too; a framing error is kept and answered
//! where the head is checked, after the authority and path, as before.

use std::ops::Range;

use zeroize::Zeroizing;

use crate::http::HttpError;
use crate::http::head::{self, Framing};

/// A parsed request head that owns its bytes.
#[derive(Debug)]
pub struct Request {
    raw: Zeroizing<Vec<u8>>,
    method: Range<usize>,
    target: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    framing: Result<Framing, HttpError>,
    close: bool,
}

/// One header of a [`Request`].
#[derive(Clone, Copy, Debug)]
pub struct Header<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
}

impl Request {
    /// Parses a complete head (through its blank line): strict bytes, then httparse.
    pub fn parse(raw: Vec<u8>) -> Result<Self, HttpError> {
        let raw = Zeroizing::new(raw);
        let req = head::parse_request(&raw)?;
        let base = raw.as_ptr() as usize;
        // httparse's slices point into `raw`; an empty one may not, and needs no position.
        let at = |s: &[u8]| {
            let start = (s.as_ptr() as usize).wrapping_sub(base);
            match start.checked_add(s.len()) {
                Some(end) if !s.is_empty() && end <= raw.len() => start..end,
                _ => 0..0,
            }
        };
        let headers = req
            .headers
            .iter()
            .map(|h| (at(h.name.as_bytes()), at(h.value)))
            .collect();
        let (method, target) = (at(req.method.as_bytes()), at(req.target.as_bytes()));
        let framing = head::request_framing(&req);
        let close = head::wants_close(req.version, &req.headers);
        Ok(Self {
            method,
            target,
            headers,
            framing,
            close,
            raw,
        })
    }

    fn text(&self, r: &Range<usize>) -> &str {
        // httparse accepted these bytes as a token or a request target: visible ASCII.
        std::str::from_utf8(&self.raw[r.clone()]).unwrap_or_default()
    }

    pub fn method(&self) -> &str {
        self.text(&self.method)
    }

    /// The request target as sent: origin-form, absolute-form or a CONNECT authority.
    pub fn target(&self) -> &str {
        self.text(&self.target)
    }

    /// The target's path without its query, for the request log.
    pub fn path(&self) -> &str {
        let t = self.target();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    pub fn headers(&self) -> impl Iterator<Item = Header<'_>> {
        self.headers.iter().map(|(n, v)| Header {
            name: self.text(n),
            value: &self.raw[v.clone()],
        })
    }

    /// The single value of a header, or an error if it appears more than once.
    pub fn one(&self, name: &str) -> Result<Option<&[u8]>, HttpError> {
        head::one(self.headers().map(|h| (h.name, h.value)), name)
    }

    /// The values of every `Connection` header (the names they list are hop-by-hop).
    pub fn connection(&self) -> Vec<&[u8]> {
        self.headers()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| h.value)
            .collect()
    }

    /// The body's framing (R2), or why it is refused.
    pub fn framing(&self) -> Result<Framing, HttpError> {
        self.framing
    }

    /// Whether the client asked to close after this exchange.
    pub fn wants_close(&self) -> bool {
        self.close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_once_and_read_back() {
        let raw = b"POST /v1/x?q=1 HTTP/1.1\r\nHost: a.com\r\nX-Empty:\r\nConnection: close\r\nContent-Length: 3\r\n\r\n";
        let r = Request::parse(raw.to_vec()).unwrap();
        assert_eq!(
            (r.method(), r.target(), r.path()),
            ("POST", "/v1/x?q=1", "/v1/x")
        );
        assert_eq!(r.one("host").unwrap(), Some(&b"a.com"[..]));
        assert_eq!(r.one("x-empty").unwrap(), Some(&b""[..]));
        assert_eq!(r.framing(), Ok(Framing::Length(3)));
        assert!(r.wants_close());
        assert_eq!(r.connection(), vec![&b"close"[..]]);
        assert_eq!(r.headers().count(), 4);
        let twice =
            Request::parse(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec()).unwrap();
        assert!(twice.one("host").is_err());
        let bad = Request::parse(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        )
        .unwrap();
        assert!(bad.framing().is_err(), "kept, answered later");
        assert!(Request::parse(b"GET / HTTP/1.1\nHost: a\r\n\r\n".to_vec()).is_err());
    }
}
