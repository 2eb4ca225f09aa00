//! The rule matcher: any request head judged by a fixed set of rules (methods, path globs with
//! inner and final `*`, query and header conditions, an agent-specific rule) never panics, and a
//! request's headers and query never make it judged more leniently than its method and path alone.
//! The input's first line is also tried as a path glob against the head's path.
#![no_main]
use std::sync::OnceLock;

use airlock::proxy::request::Request;
use airlock::rules::{Rules, normalise};
use airlock::spec::{PathGlob, ServiceFile};

const RULES: &str = r#"
services:
  - name: fuzzed
    host: api.example.com
    auth: {type: bearer, token: K}
    rules:
      - {name: agent-rule, agents: [cleanup], methods: [DELETE], action: allow}
      - {name: no-deletes, methods: [DELETE], path: "/v1/*", action: deny}
      - {name: inner, methods: [POST, PUT], path: "/v1/charges/*/refund*", action: hold}
      - {name: slow, path: "/v1/files", action: limit, per_minute: 5}
      - {name: conditions, query: ["expand[]", dry_run], headers: [x-confirm], action: deny}
    rules_default: allow
"#;

fn rules() -> &'static Rules {
    static RULES_: OnceLock<Box<Rules>> = OnceLock::new();
    RULES_.get_or_init(|| {
        let spec = ServiceFile::from_yaml(RULES).unwrap().services.remove(0);
        Rules::compile(&spec.rules, spec.rules_default(), None).unwrap()
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(line) = data.split(|&b| b == b'\n').next()
        && let Ok(text) = std::str::from_utf8(line)
        && let Ok(glob) = PathGlob::parse(text)
        && let Ok(path) = normalise(text)
    {
        let _ = glob.matches(path.split('/').skip(1).filter(|s| !s.is_empty()));
    }
    let Ok(req) = Request::parse(data.to_vec()) else {
        return;
    };
    let target = req.target().to_owned();
    let (path, query) = target
        .split_once('?')
        .map_or((target.as_str(), None), |(p, q)| (p, Some(q)));
    for agent in [None, Some("cleanup")] {
        let Ok(verdict) = rules().evaluate(agent, &req, path, query) else {
            continue;
        };
        // Headers and query can only add conditions met or methods named: the same method and
        // path alone are judged no more strictly (earlier rules of this set use neither).
        let plain = format!("{} {path} HTTP/1.1\r\nHost: api.example.com\r\n\r\n", req.method());
        if let Ok(bare) = Request::parse(plain.into_bytes())
            && let Ok(v) = rules().evaluate(agent, &bare, path, None)
        {
            assert!(
                verdict.action.strictness() >= v.action.strictness(),
                "{verdict:?} vs {v:?}"
            );
        }
    }
});
