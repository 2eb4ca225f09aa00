//! Body substitution (`in: [body]`): a service's placeholders replaced by its credentials inside
//! a request body, for APIs that take the key in the body (Tavily's search takes `api_key` in its
//! JSON). Only where the service declares it, and only in a body airlock already holds whole
//! (`Content-Length`, at most [`WHOLE_BODY_MAX`]; anything else is refused with 413
//! `substitution_body_too_large`, never sent with the placeholder unreplaced); only in JSON string
//! values (not keys), JSON-escaped, and in `application/x-www-form-urlencoded` field values,
//! percent-encoded. Other bodies (multipart, text, compressed with `Content-Encoding`) are sent as
//! they are. The `Content-Length` in the upstream head is set to the new length. Responses are
//! scrubbed of the substituted forms like every secret ([`crate::policy`] adds them).
//!
//! This module rewrites bytes it is given; reading the body is the exchange's. [`substitute`] is
//! public for the `inject` fuzz target.

use zeroize::Zeroizing;

use super::error::{ErrorKind, ProxyError};
use crate::http::body::WHOLE_BODY_MAX;
use crate::policy::{Service, Substitution};
use crate::spec::Surface;

/// The body substitutions a service declares.
pub fn declared(service: &Service) -> impl Iterator<Item = &Substitution> {
    service
        .substitutions
        .iter()
        .filter(|s| s.surfaces.contains(&Surface::Body))
}

/// How a body is read for placeholders, from its `Content-Type` (and `Content-Encoding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Json,
    Form,
}

impl Kind {
    /// `application/json` or any `+json` type; `application/x-www-form-urlencoded`; `None` for
    /// anything else or a body with a `Content-Encoding` other than `identity`.
    pub(super) fn of(content_type: Option<&[u8]>, content_encoding: Option<&[u8]>) -> Option<Self> {
        if content_encoding.is_some_and(|e| !e.trim_ascii().eq_ignore_ascii_case(b"identity")) {
            return None;
        }
        let media = content_type?.split(|&b| b == b';').next()?.trim_ascii();
        let media = String::from_utf8_lossy(media).to_ascii_lowercase();
        if media == "application/json" || media.ends_with("+json") {
            Some(Self::Json)
        } else if media == "application/x-www-form-urlencoded" {
            Some(Self::Form)
        } else {
            None
        }
    }
}

/// The refusal for a body that is not held whole.
pub(super) fn too_large(service: &str) -> ProxyError {
    ProxyError::new(
        ErrorKind::SubstitutionBodyTooLarge,
        format!(
            "service {service} substitutes credentials in request bodies, which needs a Content-Length body of at most {WHOLE_BODY_MAX} bytes"
        ),
    )
    .hint("send the body with Content-Length (not chunked), at most 1 MiB")
}

/// `body` with every declared placeholder replaced, or `None` when none occurs where it may be
/// replaced.
pub fn substitute(service: &Service, kind: Kind, body: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let mut out: Option<Zeroizing<Vec<u8>>> = None;
    for sub in declared(service) {
        let input = out.as_deref().map_or(body, Vec::as_slice);
        let replaced = match kind {
            Kind::Json => in_json_values(input, sub.placeholder.as_bytes(), sub.json.expose()),
            Kind::Form => in_form_values(input, sub.placeholder.as_bytes(), sub.encoded.expose()),
        };
        if let Some(r) = replaced {
            out = Some(r);
        }
    }
    out
}

/// Replaces `needle` inside JSON string values (a string followed by `:` is a key and is left
/// alone); `None` when nothing was replaced. A body that is not valid JSON is scanned all the
/// same: only the bytes between unescaped quotes are touched.
fn in_json_values(body: &[u8], needle: &[u8], value: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    memchr::memmem::find(body, needle)?;
    let mut out = Zeroizing::new(Vec::with_capacity(body.len() + value.len()));
    let mut i = 0;
    let mut changed = false;
    while i < body.len() {
        if body[i] != b'"' {
            out.push(body[i]);
            i += 1;
            continue;
        }
        let end = string_end(body, i + 1);
        let inner = &body[i + 1..end.min(body.len())];
        let after = body[end.saturating_add(1).min(body.len())..]
            .iter()
            .find(|b| !b.is_ascii_whitespace());
        out.push(b'"');
        if after == Some(&b':') {
            out.extend_from_slice(inner);
        } else {
            changed |= replace_into(&mut out, inner, needle, value);
        }
        if end < body.len() {
            out.push(b'"');
        }
        i = end + 1;
    }
    changed.then_some(out)
}

/// The index of the quote closing a JSON string whose content starts at `from` (after its `\`
/// escapes), or `body.len()` for an unterminated one.
fn string_end(body: &[u8], from: usize) -> usize {
    let mut j = from;
    while j < body.len() {
        match body[j] {
            b'\\' => j += 2,
            b'"' => return j,
            _ => j += 1,
        }
    }
    body.len()
}

/// Replaces `needle` in the values of `key=value&...` (never in the keys); `None` when nothing
/// was replaced.
fn in_form_values(body: &[u8], needle: &[u8], value: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    memchr::memmem::find(body, needle)?;
    let mut out = Zeroizing::new(Vec::with_capacity(body.len() + value.len()));
    let mut changed = false;
    for (n, pair) in body.split(|&b| b == b'&').enumerate() {
        if n > 0 {
            out.push(b'&');
        }
        match memchr::memchr(b'=', pair) {
            Some(eq) => {
                out.extend_from_slice(&pair[..=eq]);
                changed |= replace_into(&mut out, &pair[eq + 1..], needle, value);
            }
            None => out.extend_from_slice(pair),
        }
    }
    changed.then_some(out)
}

/// Appends `input` to `out` with every `needle` replaced by `value`; whether any was.
fn replace_into(out: &mut Vec<u8>, input: &[u8], needle: &[u8], value: &[u8]) -> bool {
    let mut rest = input;
    let mut changed = false;
    while let Some(k) = memchr::memmem::find(rest, needle) {
        out.extend_from_slice(&rest[..k]);
        out.extend_from_slice(value);
        rest = &rest[k + needle.len()..];
        changed = true;
    }
    out.extend_from_slice(rest);
    changed
}

/// Sets the `content-length` airlock wrote into the upstream `head` to `n`.
pub(super) fn set_length(head: &mut Zeroizing<Vec<u8>>, n: usize) {
    const NAME: &[u8] = b"\r\ncontent-length: ";
    let Some(at) = memchr::memmem::find(head, NAME) else {
        return;
    };
    let start = at + NAME.len();
    let end = head[start..]
        .iter()
        .position(|&b| b == b'\r')
        .map_or(head.len(), |k| start + k);
    let mut rebuilt = Zeroizing::new(Vec::with_capacity(head.len() + 8));
    rebuilt.extend_from_slice(&head[..start]);
    rebuilt.extend_from_slice(n.to_string().as_bytes());
    rebuilt.extend_from_slice(&head[end..]);
    *head = rebuilt;
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"tvly-SECRET";

    fn json(body: &str) -> Option<String> {
        in_json_values(body.as_bytes(), b"__key__", KEY)
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    /// Row 124: only string values are substituted, never keys; escapes inside strings are
    /// kept; a body without the placeholder is left alone.
    #[test]
    fn json_values_only() {
        assert_eq!(
            json(r#"{"api_key": "__key__", "query": "a \"__key__\" b"}"#).unwrap(),
            r#"{"api_key": "tvly-SECRET", "query": "a \"tvly-SECRET\" b"}"#
        );
        assert_eq!(
            json(r#"{"__key__" : "x", "y": ["__key__"]}"#).unwrap(),
            r#"{"__key__" : "x", "y": ["tvly-SECRET"]}"#
        );
        assert_eq!(json(r#"{"api_key": "other"}"#), None);
        assert_eq!(json(r#"{"__key__": 1}"#), None, "a key only");
        assert_eq!(json(r#"{"a": __key__}"#), None, "outside a string");
        // Unterminated: the rest is a string value, replaced; nothing panics.
        assert_eq!(json(r#"{"a": "__key__"#).unwrap(), r#"{"a": "tvly-SECRET"#);
        assert_eq!(json("\"\\"), None);
    }

    #[test]
    fn form_values_only() {
        let form = |b: &str| {
            in_form_values(b.as_bytes(), b"__key__", b"a%2Bb")
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
        };
        assert_eq!(
            form("api_key=__key__&q=x__key__y&__key__=z").unwrap(),
            "api_key=a%2Bb&q=xa%2Bby&__key__=z"
        );
        assert_eq!(form("__key__&q=1"), None);
    }

    #[test]
    fn kinds() {
        assert_eq!(
            Kind::of(Some(b"application/json; charset=utf-8"), None),
            Some(Kind::Json)
        );
        assert_eq!(
            Kind::of(Some(b"Application/Problem+JSON"), None),
            Some(Kind::Json)
        );
        assert_eq!(
            Kind::of(
                Some(b"application/x-www-form-urlencoded"),
                Some(b"identity")
            ),
            Some(Kind::Form)
        );
        assert_eq!(Kind::of(Some(b"application/json"), Some(b"gzip")), None);
        assert_eq!(
            Kind::of(Some(b"multipart/form-data; boundary=x"), None),
            None
        );
        assert_eq!(Kind::of(None, None), None);
    }

    #[test]
    fn length_is_rewritten() {
        let mut head = Zeroizing::new(
            b"POST /search HTTP/1.1\r\nhost: api.tavily.com\r\ncontent-length: 12\r\nx: y\r\n\r\n"
                .to_vec(),
        );
        set_length(&mut head, 1234);
        assert_eq!(
            &head[..],
            b"POST /search HTTP/1.1\r\nhost: api.tavily.com\r\ncontent-length: 1234\r\nx: y\r\n\r\n"
        );
    }
}
