//! OAuth credentials end to end: `airlock credential oauth` imports a token pair, `serve` keeps
//! the access token fresh against a stand-in authorization server (the origin's `/oauth/token`)
//! and the API it guards (`/api/...`). Expiry, one refresh for many waiting requests, a 401
//! renewed and retried, a refused refresh with its error code, and the token endpoint behind the
//! SSRF guard (rows 85 to 87 of tests/SECURITY-TESTS.md).

use std::time::{Duration, Instant};

use crate::support::origin::Origin;
use crate::support::{Curl, Env, Proxy, Run, canary};

const HOSTS: &[&str] = &["api.example.com", "auth.example.com"];

const SERVICES: &str = r#"
services:
  - name: api
    host: api.example.com
    auth: {type: bearer, token: API_OAUTH}
"#;

struct OAuthSetup {
    env: Env,
    origin: Origin,
    proxy: Proxy,
    token: String,
    prefix: String,
}

impl OAuthSetup {
    /// A vault whose service `api` injects the OAuth credential `API_OAUTH`, imported from
    /// `token_file` with the stand-in's endpoint; the stand-in set up by `configure` before serve
    /// starts.
    fn new(
        token_file: &str,
        configure: impl FnOnce(&mut crate::support::origin::OAuthStandIn),
        extra: &[&str],
    ) -> Self {
        let env = Env::init();
        let origin = Origin::https(env.tmp.path(), HOSTS);
        let prefix = canary();
        {
            let mut s = origin.oauth.lock().unwrap();
            s.prefix.clone_from(&prefix);
            s.refresh_token = format!("{prefix}-rt-0");
            configure(&mut s);
            s.issue(&format!("{prefix}-at-0"));
        }
        let setup = |env: &Env| {
            env.run_stdin(
                &[
                    "credential",
                    "oauth",
                    "API_OAUTH",
                    "--token-endpoint",
                    "https://auth.example.com/oauth/token",
                    "--client-id",
                    "test-client",
                ],
                token_file.replace("PREFIX", &prefix).as_bytes(),
            )
            .ok();
            env.set_services(SERVICES);
        };
        setup(&env);
        let token = env.agent_token("bot", "default");
        let proxy = Proxy::for_origin(&env, &origin, HOSTS, "auto", extra, true, true);
        Self {
            env,
            origin,
            proxy,
            token,
            prefix,
        }
    }

    /// curl through the proxy with a placeholder bearer; stdout is `BODY STATUS`.
    fn curl(&self, args: &[&str]) -> Run {
        let ca = self.env.data_dir.join("ca.pem");
        let r = Curl::via(&self.proxy.url(&self.token, "default"), &ca)
            .max_time(40)
            .bearer("placeholder")
            .status()
            .args(args)
            .run();
        assert!(
            !r.stdout.contains(&self.prefix) && !r.stderr.contains(&self.prefix),
            "a token reached the agent: {r:?}"
        );
        r
    }

    fn get(&self) -> Run {
        self.curl(&["https://api.example.com/api/items"])
    }

    fn grants(&self) -> usize {
        self.origin.oauth.lock().unwrap().grants
    }

    fn credential_json(&self) -> serde_json::Value {
        let r = self.env.run(&["credential", "list", "--json"]).ok();
        assert!(!r.stdout.contains(&self.prefix), "{r:?}");
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()[0].clone()
    }
}

/// An access token that expired long ago: the first requests must wait for a refresh.
const EXPIRED: &str =
    r#"{"access_token":"PREFIX-at-0","refresh_token":"PREFIX-rt-0","expires_at":1000}"#;

/// A token valid for an hour.
const VALID: &str =
    r#"{"access_token":"PREFIX-at-0","refresh_token":"PREFIX-rt-0","expires_in":3600}"#;

/// Expiry and concurrency: sixteen requests arrive while the imported token is expired and the
/// token endpoint takes 300 ms; all succeed after exactly one refresh. Then, with grants valid
/// 8 s (renewed 4 s ahead), ten seconds of requests never reach the API with an expired token:
/// serve renews ahead of expiry, with the rotated refresh token each time, in the form encoding
/// with the client id.
#[test]
fn oauth_renews_once_for_many_waiters_and_ahead_of_expiry() {
    let s = OAuthSetup::new(
        EXPIRED,
        |o| {
            o.lifetime = 8;
            o.delay = Duration::from_millis(300);
        },
        &[],
    );
    let started: Vec<_> = (0..16)
        .map(|_| {
            let ca = s.env.data_dir.join("ca.pem");
            Curl::via(&s.proxy.url(&s.token, "default"), &ca)
                .max_time(40)
                .status()
                .arg("https://api.example.com/api/items")
                .command()
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in started {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.ends_with(" 200"), "{text}");
        assert!(!text.contains(&s.prefix));
    }
    assert_eq!(s.grants(), 1, "one refresh for sixteen waiting requests");
    s.origin.oauth.lock().unwrap().delay = Duration::ZERO;
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let r = s.get();
        assert!(r.stdout.ends_with(" 200"), "{r:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let state = s.origin.oauth.lock().unwrap();
    assert!(
        state.grants >= 2,
        "renewed ahead of expiry: {}",
        state.grants
    );
    assert!(
        state.api_calls.iter().all(|(_, ok)| *ok),
        "no request reached the API with an expired token: {:?}",
        state.api_calls
    );
    for (i, (content_type, body)) in state.requests.iter().enumerate() {
        assert_eq!(content_type, "application/x-www-form-urlencoded");
        assert!(
            body.starts_with("grant_type=refresh_token&refresh_token=")
                && body.contains(&format!("-rt-{i}&"))
                && body.ends_with("&client_id=test-client"),
            "grant {i}: {body}"
        );
    }
    drop(state);
    let cred = s.credential_json();
    assert_eq!(cred["kind"], "oauth");
    assert!(
        cred["oauth"]["status"]
            .as_str()
            .unwrap()
            .starts_with("ok, expires "),
        "{cred}"
    );
    let logs = s.env.run(&["logs", "--json"]).ok().stdout;
    assert!(!logs.contains(&s.prefix), "{logs}");
}

/// An upstream 401 (the token was revoked upstream before its expiry): a request with a held
/// body is renewed and sent once more, and the agent sees only the 200; the origin received the
/// body twice. Not for a token younger than 5 s: that 401 goes to the agent. A streamed (chunked)
/// body cannot be sent twice: its 401 goes back to the agent, and a renewal starts so the
/// agent's own retry succeeds.
#[test]
fn oauth_401_renews_and_retries_a_held_body() {
    let s = OAuthSetup::new(VALID, |_| {}, &[]);
    let body = "x".repeat(1024);
    let post = |extra: &[&str]| {
        let mut args = vec!["-X", "POST", "--data-binary", body.as_str()];
        args.extend_from_slice(extra);
        args.push("https://api.example.com/api/items");
        s.curl(&args)
    };
    assert!(post(&[]).stdout.ends_with(" 200"));
    assert_eq!(s.grants(), 0);
    s.origin.oauth.lock().unwrap().revoke_all();
    // A token younger than 5 s is not renewed on a 401 (an API refusing for another reason must
    // not make every request renew it): the 401 goes to the agent.
    let r = post(&[]);
    assert!(r.stdout.ends_with(" 401"), "{r:?}");
    assert_eq!(s.grants(), 0);
    std::thread::sleep(Duration::from_millis(5200));
    let r = post(&[]);
    assert!(r.stdout.ends_with(" 200"), "{r:?}");
    assert!(r.stdout.contains(r#""body_len":1024"#), "{r:?}");
    assert_eq!(s.grants(), 1);
    let calls = s.origin.oauth.lock().unwrap().api_calls.clone();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(
        !calls[2].1 && calls[3].1,
        "rejected, then accepted: {calls:?}"
    );
    assert_eq!(calls[2].0, format!("{}-at-0", s.prefix));
    assert_eq!(calls[3].0, format!("{}-at-1", s.prefix));

    std::thread::sleep(Duration::from_millis(5200));
    s.origin.oauth.lock().unwrap().revoke_all();
    let r = post(&["-H", "Transfer-Encoding: chunked"]);
    assert!(
        r.stdout.ends_with(" 401"),
        "a streamed body's 401 is relayed: {r:?}"
    );
    let end = Instant::now() + Duration::from_secs(10);
    while s.grants() < 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.grants(), 2, "the relayed 401 started a renewal");
    std::thread::sleep(Duration::from_millis(300));
    let r = post(&["-H", "Transfer-Encoding: chunked"]);
    assert!(r.stdout.ends_with(" 200"), "{r:?}");
}

/// A refresh the token endpoint refuses (`invalid_grant`): the agent gets 502
/// `oauth_refresh_failed` naming the credential and the endpoint's answer; the credential list
/// shows the failure; later requests fail at once without asking the endpoint again; importing a
/// new pair makes the service work.
#[test]
fn oauth_refused_refresh_gives_a_clear_error_until_reimported() {
    let s = OAuthSetup::new(EXPIRED, |o| o.reject = true, &[]);
    let r = s.curl(&["-i", "https://api.example.com/api/items"]);
    assert!(r.stdout.ends_with(" 502"), "{r:?}");
    assert!(
        r.stdout.contains("x-airlock-error: oauth_refresh_failed"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("credential API_OAUTH")
            && r.stdout.contains("(rejected)")
            && r.stdout.contains("invalid_grant"),
        "{r:?}"
    );
    let cred = s.credential_json();
    assert_eq!(cred["oauth"]["failure"]["code"], "rejected", "{cred}");
    assert!(
        cred["oauth"]["status"]
            .as_str()
            .unwrap()
            .starts_with("failing (rejected): HTTP 400"),
        "{cred}"
    );
    let table = s.env.run(&["credential", "list"]).ok().stdout;
    assert!(
        table.contains("oauth") && table.contains("failing (rejected)"),
        "{table}"
    );
    let asked = s.origin.oauth.lock().unwrap().requests.len();
    let r = s.curl(&["-i", "https://api.example.com/api/items"]);
    assert!(
        r.stdout.contains("x-airlock-error: oauth_refresh_failed"),
        "{r:?}"
    );
    assert_eq!(
        s.origin.oauth.lock().unwrap().requests.len(),
        asked,
        "a rejected refresh token is not sent again"
    );
    {
        let mut st = s.origin.oauth.lock().unwrap();
        st.reject = false;
        st.refresh_token = format!("{}-rt-new", s.prefix);
    }
    s.env
        .run_stdin(
            &[
                "credential",
                "oauth",
                "API_OAUTH",
                "--token-endpoint",
                "https://auth.example.com/oauth/token",
                "--client-id",
                "test-client",
                "--request",
                "json",
            ],
            format!("{}-rt-new\n", s.prefix).as_bytes(),
        )
        .ok();
    let end = Instant::now() + Duration::from_secs(10);
    let mut last = s.get();
    while !last.stdout.ends_with(" 200") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        last = s.get();
    }
    assert!(last.stdout.ends_with(" 200"), "{last:?}");
    let state = s.origin.oauth.lock().unwrap();
    let (content_type, grant) = state.requests.last().unwrap();
    assert_eq!(content_type, "application/json");
    let v: serde_json::Value = serde_json::from_str(grant).unwrap();
    assert_eq!(v["client_id"], "test-client");
}

/// Row 85: the token endpoint is an upstream like any other: an endpoint whose name resolves to
/// a metadata address is refused by the SSRF guard (no connection is made) and the refresh fails
/// as `unavailable` naming `destination_blocked`.
#[test]
fn row85_token_endpoint_behind_the_ssrf_guard() {
    let s = OAuthSetup::new(
        VALID,
        |_| {},
        &["--resolve", "metadata.example.com:443:169.254.169.254:443"],
    );
    s.env
        .run_stdin(
            &[
                "credential",
                "oauth",
                "API_OAUTH",
                "--token-endpoint",
                "https://metadata.example.com/token",
                "--client-id",
                "test-client",
            ],
            format!("{}-rt-0", s.prefix).as_bytes(),
        )
        .ok();
    // Only a refresh token now: once serve has the new vault (within 100 ms), a request waits
    // for a refresh, which the guard stops.
    s.origin.oauth.lock().unwrap().revoke_all();
    let end = Instant::now() + Duration::from_secs(5);
    let r = loop {
        let r = s.curl(&["-i", "https://api.example.com/api/items"]);
        if !r.stdout.ends_with(" 401") || Instant::now() > end {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(r.stdout.ends_with(" 502"), "{r:?}");
    assert!(
        r.stdout.contains("oauth_refresh_failed")
            && r.stdout.contains("(unavailable)")
            && r.stdout.contains("destination_blocked"),
        "{r:?}"
    );
    assert_eq!(s.grants(), 0);
    assert!(s.origin.oauth.lock().unwrap().requests.is_empty());
}

/// Import errors are one clear line, and nothing is stored.
#[test]
fn oauth_import_refuses_bad_input() {
    let env = Env::init();
    let run = |args: &[&str], stdin: &str| {
        let mut all = vec!["credential", "oauth", "K"];
        all.extend_from_slice(args);
        env.run_stdin(&all, stdin.as_bytes())
    };
    let e = run(&["--client-id", "c"], "rt");
    assert!(
        e.fails().contains("(--token-endpoint) is required"),
        "{e:?}"
    );
    let e = run(
        &[
            "--token-endpoint",
            "http://a.example.com/t",
            "--client-id",
            "c",
        ],
        "rt",
    );
    assert!(e.fails().contains("https://"), "{e:?}");
    let e = run(
        &[
            "--token-endpoint",
            "https://a.example.com/t",
            "--client-id",
            "c",
        ],
        r#"{"access_token":"a"}"#,
    );
    assert!(e.fails().contains("no refresh token"), "{e:?}");
    let list = env.run(&["credential", "list", "--json"]).ok();
    assert_eq!(list.stdout.trim(), "[]");
    // A recognised login file needs no endpoint or client id.
    let file = env.write(
        "creds.json",
        r#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r","expiresAt":4102444800000}}"#,
    );
    let r = env
        .run(&["credential", "oauth", "K", "--from", file.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains("Claude Code login"), "{r:?}");
    let list: serde_json::Value =
        serde_json::from_str(&env.run(&["credential", "list", "--json"]).ok().stdout).unwrap();
    assert_eq!(
        list[0]["oauth"]["token_endpoint"],
        "https://platform.claude.com/v1/oauth/token"
    );
    assert_eq!(list[0]["oauth"]["expires_at"], "2100-01-01T00:00:00Z");
}
