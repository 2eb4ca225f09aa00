//! AWS Signature Version 4 for `aws-sigv4` services: the agent holds dummy keys (its SDK signs
//! with them); airlock drops that signature (the `Authorization`, `X-Amz-Date`,
//! `X-Amz-Security-Token` and `X-Amz-Content-SHA256` headers, and a presigned URL's `X-Amz-*`
//! query parameters) and signs the request it sends upstream with the vault's keys.
//!
//! The signature covers exactly what goes upstream: it is computed from the finished upstream
//! head (request line, `host`, `content-type`, `content-md5` and every `x-amz-*` header) and the
//! payload hash [`payload`] chose. The payload is hashed when the body is held
//! ([`BODY_MAX`]); a body the agent's SDK already declared unsigned (`UNSIGNED-PAYLOAD`,
//! `STREAMING-UNSIGNED-PAYLOAD-TRAILER`) keeps that declaration and streams; a larger body
//! streams as `UNSIGNED-PAYLOAD` to S3 and is refused elsewhere. A chunk-signed stream
//! (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`) cannot be re-signed without rewriting every chunk and is
//! refused. This module does no I/O.

use std::collections::BTreeMap;

use ring::{digest, hmac};
use zeroize::Zeroizing;

use super::error::{ErrorKind, ProxyError};
use crate::credential::SigV4Keys as Keys;
use crate::http::head::Framing;
use crate::policy::percent_encode;

/// Bodies up to this size are read whole and hashed into the signature; larger ones stream
/// unsigned (S3) or are refused (other services, which require a signed payload).
pub const BODY_MAX: u64 = 8 * 1024 * 1024;

/// A query without a presigned URL's signature parameters (`X-Amz-Signature` and the rest).
pub fn strip_presign(query: &str) -> String {
    const PRESIGN: &[&str] = &[
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "x-amz-expires",
        "x-amz-signedheaders",
        "x-amz-signature",
        "x-amz-security-token",
    ];
    query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            !PRESIGN.iter().any(|p| name.eq_ignore_ascii_case(p))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// What the payload hash will be, and whether the body must be held to compute it.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload {
    /// Hash the body once it is held (at most [`BODY_MAX`] bytes).
    Hash,
    /// Send this declaration (`UNSIGNED-PAYLOAD`, ...) and stream the body.
    Declared(&'static str),
}

/// Decides the payload hash for a request with `framing` whose agent sent `declared` as its
/// `X-Amz-Content-SHA256`.
pub fn payload(
    keys: &Keys,
    framing: Framing,
    declared: Option<&[u8]>,
) -> Result<Payload, ProxyError> {
    const UNSIGNED: &[&str] = &["UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"];
    if let Some(d) = declared {
        if let Some(u) = UNSIGNED.iter().find(|u| u.as_bytes() == d) {
            return Ok(Payload::Declared(u));
        }
        if d.starts_with(b"STREAMING-") {
            let m =
                "a chunk-signed stream (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) cannot be re-signed";
            return Err(ProxyError::new(ErrorKind::SigV4StreamingSigned, m)
                .hint("send the body with Content-Length, or as UNSIGNED-PAYLOAD (the default of current AWS SDKs over HTTPS)"));
        }
    }
    match framing {
        Framing::Empty => Ok(Payload::Hash),
        Framing::Length(n) if n <= BODY_MAX => Ok(Payload::Hash),
        _ if keys.service == "s3" => Ok(Payload::Declared("UNSIGNED-PAYLOAD")),
        _ => Err(ProxyError::new(
            ErrorKind::SigV4BodyTooLarge,
            format!(
                "{} requires a signed payload: bodies of at most {BODY_MAX} bytes with Content-Length are signed",
                keys.service
            ),
        )),
    }
}

/// The hex SHA-256 of a held body.
pub fn hash(body: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(digest::digest(&digest::SHA256, body).as_ref())
}

/// Signs the finished upstream `head` (ending in the empty line) with `keys` at `now` (Unix
/// seconds): inserts `x-amz-date`, `x-amz-content-sha256` (= `payload_hash`), the session token
/// if any, and `authorization` before the empty line.
pub fn sign(keys: &Keys, head: &mut Vec<u8>, payload_hash: &str, now: u64) {
    let stamp: String = crate::vault::rfc3339(now)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let date = &stamp[..8];
    let scope = format!("{date}/{}/{}/aws4_request", keys.region, keys.service);
    let mut added: Vec<(&str, &[u8])> = vec![
        ("x-amz-date", stamp.as_bytes()),
        ("x-amz-content-sha256", payload_hash.as_bytes()),
    ];
    if let Some(t) = &keys.session_token {
        added.push(("x-amz-security-token", t.expose()));
    }
    let (canonical, signed) = canonical_request(keys, head, &added, payload_hash);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        hash(canonical.as_bytes())
    );
    let signature = signature(keys, date, &to_sign);
    let body_start = head.len() - 2;
    let mut tail = Zeroizing::new(Vec::with_capacity(512));
    for (name, value) in &added {
        tail.extend_from_slice(name.as_bytes());
        tail.extend_from_slice(b": ");
        tail.extend_from_slice(value);
        tail.extend_from_slice(b"\r\n");
    }
    tail.extend_from_slice(b"authorization: AWS4-HMAC-SHA256 Credential=");
    tail.extend_from_slice(keys.access_key_id.expose());
    tail.extend_from_slice(
        format!("/{scope}, SignedHeaders={signed}, Signature={signature}\r\n").as_bytes(),
    );
    head.splice(body_start..body_start, tail.iter().copied());
}

/// The canonical request of `head` plus the `added` headers, and its signed-header list.
fn canonical_request(
    keys: &Keys,
    head: &[u8],
    added: &[(&str, &[u8])],
    payload_hash: &str,
) -> (Zeroizing<String>, String) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let wanted = |n: &str| {
        n == "host" || n == "content-type" || n == "content-md5" || n.starts_with("x-amz-")
    };
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.to_ascii_lowercase();
        if wanted(&name) {
            headers.entry(name).or_default().push(collapse(value));
        }
    }
    for (name, value) in added {
        headers
            .entry((*name).to_owned())
            .or_default()
            .push(collapse(&String::from_utf8_lossy(value)));
    }
    let signed = headers.keys().cloned().collect::<Vec<_>>().join(";");
    let uri = if keys.service == "s3" {
        path.to_owned()
    } else {
        encode(path.as_bytes(), true)
    };
    let mut out = Zeroizing::new(format!("{method}\n{uri}\n{}\n", canonical_query(query)));
    for (name, values) in &headers {
        out.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    out.push_str(&format!("\n{signed}\n{payload_hash}"));
    (out, signed)
}

/// Name-sorted query pairs, each name and value decoded then encoded the RFC 3986 way.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(&decode(k), false), encode(&decode(v), false))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// RFC 3986 encoding of all but the unreserved characters (and `/` in a path).
fn encode(raw: &[u8], path: bool) -> String {
    if !path {
        return String::from_utf8_lossy(&percent_encode(raw)).into_owned();
    }
    raw.split(|&b| b == b'/')
        .map(|segment| String::from_utf8_lossy(&percent_encode(segment)).into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Percent-decoding; a `%` not followed by two hex digits stays as it is.
fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// A header value trimmed, inner runs of spaces collapsed to one.
fn collapse(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The hex HMAC of `to_sign` under the key derived for `date` (YYYYMMDD).
fn signature(keys: &Keys, date: &str, to_sign: &str) -> String {
    let mut secret = Zeroizing::new(b"AWS4".to_vec());
    secret.extend_from_slice(keys.secret_access_key.expose());
    let step = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k_date = step(&secret, date);
    let k_region = step(k_date.as_ref(), &keys.region);
    let k_service = step(k_region.as_ref(), &keys.service);
    let k_signing = step(k_service.as_ref(), "aws4_request");
    data_encoding::HEXLOWER.encode(step(k_signing.as_ref(), to_sign).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn keys(service: &str) -> Keys {
        Keys {
            access_key_id: Secret::new(b"AKIDEXAMPLE".to_vec()),
            secret_access_key: Secret::new(b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_vec()),
            session_token: None,
            region: "us-east-1".into(),
            service: service.into(),
        }
    }

    /// The AWS SigV4 test suite's `get-vanilla-query-order-key-case` case: GET
    /// `/?Param2=value2&Param1=value1` to example.amazonaws.com at 20150830T123600Z.
    #[test]
    fn aws_test_suite_vanilla_query_order() {
        let mut head = Zeroizing::new(
            b"GET /?Param2=value2&Param1=value1 HTTP/1.1\r\nhost: example.amazonaws.com\r\n\r\n"
                .to_vec(),
        );
        let empty = hash(b"");
        sign(&keys("service"), &mut head, &empty, 1_440_938_160);
        let text = String::from_utf8(head.to_vec()).unwrap();
        // The suite omits x-amz-content-sha256; with it signed too, the signature differs from
        // the suite's, so check the canonical form and the structure, and the known signature
        // on the suite's exact header set below.
        assert!(text.contains("x-amz-date: 20150830T123600Z\r\n"), "{text}");
        assert!(text.contains("Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
        let (canonical, _) = canonical_request(
            &keys("service"),
            b"GET /?Param2=value2&Param1=value1 HTTP/1.1\r\nhost: example.amazonaws.com\r\n\r\n",
            &[("x-amz-date", b"20150830T123600Z")],
            &empty,
        );
        assert_eq!(
            canonical.as_str(),
            "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n{}",
            hash(canonical.as_bytes())
        );
        assert_eq!(
            signature(&keys("service"), "20150830", &to_sign),
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
    }

    #[test]
    fn paths_are_encoded_again_except_for_s3() {
        let head = b"GET /model/anthropic.claude-v2%3A1/invoke HTTP/1.1\r\nhost: h\r\n\r\n";
        let (c, _) = canonical_request(&keys("bedrock"), head, &[], "x");
        assert!(
            c.starts_with("GET\n/model/anthropic.claude-v2%253A1/invoke\n"),
            "{}",
            c.as_str()
        );
        let (c, _) = canonical_request(&keys("s3"), head, &[], "x");
        assert!(
            c.starts_with("GET\n/model/anthropic.claude-v2%3A1/invoke\n"),
            "{}",
            c.as_str()
        );
    }

    #[test]
    fn signed_headers_and_values() {
        let head = b"PUT /b/k HTTP/1.1\r\nhost: s3.example\r\nuser-agent: x\r\ncontent-type:  text/plain \r\nx-amz-meta-a: 1   2\r\nX-Amz-Meta-A: 3\r\ncontent-length: 3\r\n\r\n";
        let (c, signed) = canonical_request(&keys("s3"), head, &[], "h");
        assert_eq!(signed, "content-type;host;x-amz-meta-a");
        assert!(
            c.contains("content-type:text/plain\nhost:s3.example\nx-amz-meta-a:1 2,3\n"),
            "{}",
            c.as_str()
        );
    }

    #[test]
    fn query_canonicalisation_and_presign_stripping() {
        assert_eq!(canonical_query("b=2&a=%7e x&c"), "a=~%20x&b=2&c=");
        assert_eq!(
            strip_presign("list-type=2&X-Amz-Signature=abc&x-amz-credential=k&prefix=a"),
            "list-type=2&prefix=a"
        );
        assert_eq!(strip_presign("X-Amz-Date=1"), "");
    }

    #[test]
    fn payload_choices() {
        let s3 = keys("s3");
        let other = keys("bedrock");
        assert_eq!(
            payload(&s3, Framing::Length(10), None).unwrap(),
            Payload::Hash
        );
        assert_eq!(
            payload(
                &s3,
                Framing::Chunked,
                Some(b"STREAMING-UNSIGNED-PAYLOAD-TRAILER")
            )
            .unwrap(),
            Payload::Declared("STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        );
        assert_eq!(
            payload(&s3, Framing::Length(BODY_MAX + 1), None).unwrap(),
            Payload::Declared("UNSIGNED-PAYLOAD")
        );
        let e = payload(&other, Framing::Length(BODY_MAX + 1), None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SigV4BodyTooLarge);
        let e = payload(
            &s3,
            Framing::Chunked,
            Some(b"STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SigV4StreamingSigned);
        assert_eq!(
            payload(&other, Framing::Empty, Some(b"abc")).unwrap(),
            Payload::Hash
        );
    }
}
