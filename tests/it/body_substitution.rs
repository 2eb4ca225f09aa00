//! Body substitution (`in: [body]`) end to end: a service whose API takes its key in the JSON
//! body (as Tavily's search does) or in a form field, with curl and Python's requests (the way
//! SDKs send such bodies), against an origin that quotes the body back.

use crate::proxy::{SERVICES, Setup};
use crate::support::output;

/// The search service's key: quotes and a backslash, so the JSON escaping and the form's
/// percent-encoding both show.
const KEY: &str = "tvly-k\"e\\y+/=";

/// A Setup whose vault also has `search` on other.example.net, taking SEARCH_KEY in the body.
fn setup() -> Setup {
    let s = Setup::new("auto");
    s.env
        .run_stdin(&["credential", "set", "SEARCH_KEY"], KEY.as_bytes())
        .ok();
    s.env.set_services(&format!(
        "{SERVICES}  - name: search\n    host: other.example.net\n    auth: {{type: bearer, token: SEARCH_KEY}}\n    substitutions:\n      - {{key: SEARCH_KEY, placeholder: __search_key__, in: [body]}}\n"
    ));
    s.settle();
    s
}

/// What the agent must never see: the key as stored, JSON-escaped, or percent-encoded.
fn assert_no_key(text: &str) {
    for form in [KEY, r#"tvly-k\"e\\y+/="#, "tvly-k%22e%5Cy%2B%2F%3D"] {
        assert!(!text.contains(form), "the key reached the agent: {text}");
    }
}

/// Rows 124-125: a JSON body's string values get the key (JSON-escaped; keys and text outside
/// strings untouched), a form body's values get it percent-encoded, the upstream's
/// `Content-Length` is the new length, and the origin quoting the body back reaches the agent
/// masked.
#[test]
fn body_placeholders_get_the_key_and_echoes_are_masked() {
    let s = setup();
    let json =
        r#"{"api_key": "__search_key__", "query": "what is __search_key__?", "__search_key__": 1}"#;
    let r = s.curl(&[
        "https://other.example.net/echo-body",
        "-H",
        "content-type: application/json",
        "--data-binary",
        json,
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_no_key(&r.stdout);
    assert!(r.stdout.contains("\"__search_key__\": 1"), "{}", r.stdout);
    let sent = s.last();
    let expected = format!(
        r#"{{"api_key": "{esc}", "query": "what is {esc}?", "__search_key__": 1}}"#,
        esc = r#"tvly-k\"e\\y+/="#
    );
    assert_eq!(String::from_utf8_lossy(&sent.body), expected);
    assert_eq!(sent.header("content-length"), [expected.len().to_string()]);
    let parsed: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(
        parsed["api_key"], KEY,
        "the upstream reads the key as stored"
    );
    // The service's own header injection still happens.
    assert_eq!(sent.header("authorization"), [format!("Bearer {KEY}")]);

    // Python's requests, a form body (and a JSON one), as SDKs send them.
    let script = r#"
import sys, requests
proxy, ca = sys.argv[1], sys.argv[2]
r = requests.post("https://other.example.net/echo-body", data={"api_key": "__search_key__", "q": "x"},
                  proxies={"https": proxy}, verify=ca)
assert r.status_code == 200, r.status_code
print("form:", r.text)
r = requests.post("https://other.example.net/echo-body", json={"api_key": "__search_key__"},
                  proxies={"https": proxy}, verify=ca)
assert r.status_code == 200, r.status_code
print("json:", r.text)
"#;
    let mut c = std::process::Command::new("python3");
    c.arg("-c")
        .arg(script)
        .arg(s.proxy.url(&s.token, "default"))
        .arg(s.ca());
    let r = output(c, None).ok();
    assert_no_key(&r.stdout);
    let recorded = s.origin.recorded();
    let bodies: Vec<String> = recorded[recorded.len() - 2..]
        .iter()
        .map(|q| String::from_utf8_lossy(&q.body).into_owned())
        .collect();
    assert_eq!(bodies[0], "api_key=tvly-k%22e%5Cy%2B%2F%3D&q=x");
    let parsed: serde_json::Value = serde_json::from_str(&bodies[1]).unwrap();
    assert_eq!(parsed["api_key"], KEY);
}

/// Row 126: a body the service would substitute in but airlock cannot hold whole (chunked) is
/// refused with 413 `substitution_body_too_large` before anything goes upstream; a compressed
/// or multipart body, or a service that does not declare `body`, is sent as it is, placeholder
/// and all (no key in it).
#[test]
fn bodies_not_held_are_refused_and_others_left_alone() {
    let s = setup();
    let r = s.curl(&[
        "https://other.example.net/echo-body",
        "-H",
        "content-type: application/json",
        "-H",
        "transfer-encoding: chunked",
        "--data-binary",
        r#"{"api_key": "__search_key__"}"#,
        "-w",
        "\n%{http_code}",
    ]);
    assert!(
        r.stdout.ends_with("413") && r.stdout.contains("substitution_body_too_large"),
        "{}",
        r.stdout
    );
    assert!(s.origin.recorded().is_empty(), "something went upstream");
    for (url, content_type) in [
        ("https://other.example.net/echo-body", "text/plain"),
        ("https://api.openai.com/echo-body", "application/json"),
    ] {
        let r = s.curl(&[
            url,
            "-H",
            &format!("content-type: {content_type}"),
            "--data-binary",
            r#"{"api_key": "__search_key__"}"#,
        ]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(
            String::from_utf8_lossy(&s.last().body),
            r#"{"api_key": "__search_key__"}"#,
            "{url} {content_type}"
        );
    }
}
