//! A service's request rules, compiled once per vault generation with the rest of the policy
//! ([`Rules::compile`]) and evaluated per request ([`Rules::evaluate`]) with no lock, no
//! allocation for ordinary paths and no I/O. Evaluation is pure: it names the rule that decides
//! and its action; taking a `limit` rule's token and holding a request are the exchange's steps.
//!
//! Order (documented in docs/src/rules.md): rules naming the requesting agent first, then the rules for
//! every agent, each group in file order; the first rule whose conditions all hold decides; when
//! none does, the service's `rules_default` (allow unless stated).
//!
//! What a rule is matched against is what the upstream will act on (security rows 96, 97):
//! - the path with percent-encoded unreserved characters decoded (`%72efunds` is `refunds`),
//!   `;` parameters cut from each segment (`/refunds;x`) and a trailing `/` dropped; a path with
//!   an encoded `/` or `\`, a raw `\`, or a segment that normalises to empty, `.` or `..` is
//!   refused (`rule_path_ambiguous`) rather than guessed at, when any rule names a path;
//! - the method in any case, and also each method an `X-HTTP-Method-Override`, `X-HTTP-Method`
//!   or `X-Method-Override` header, a `_method` query parameter, or (judged by the exchange once
//!   the body is read, [`body_methods`]) a `_method` field of a form or JSON body names: the
//!   request is judged as each, and the strictest outcome wins (deny, then hold, then limit,
//!   then allow);
//! - query keys percent-decoded, pairs split at `&` and `;` (older Rack), and a key with an
//!   index (`expand[0]`, `expand[]`, `expand`) matching a rule key of the same name written
//!   bare or with `[]` (row 104);
//! - header names in any case, `_` the same as `-` (WSGI, Rack and PHP read `Idempotency_Key`
//!   as `Idempotency-Key`; row 104).
//!
//! Not matched (docs/src/rules.md): the fields of a form body against `query:` conditions.
//!
//! A `limit` rule's bucket is carried from one compiled policy to the next (same vault, service,
//! rule name and rate), so a vault write does not refill it.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::proxy::limits::Cell;
use crate::proxy::request::Request;
use crate::spec::{RuleAction, RuleSpec};

/// Headers through which frameworks let a request name another method.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// A service's compiled rules.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    default: RuleAction,
    /// Whether any rule names a path (the path must then normalise unambiguously).
    paths: bool,
    /// Every method a rule names, upper-case, once each (a `_method` body field matters only
    /// when judging the request as one of them would be stricter).
    methods: Vec<String>,
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub spec: RuleSpec,
    /// A `limit` rule's bucket: a burst of `per_minute`, then `per_minute` a minute.
    limit: Option<Arc<Cell>>,
}

/// What the rules decided for a request: the action and the rule that decided it (`None`: the
/// service's default).
#[derive(Clone, Copy, Debug)]
pub struct Verdict<'r> {
    pub action: RuleAction,
    pub rule: Option<&'r Rule>,
}

impl Verdict<'_> {
    /// The verdict of a service without rules.
    pub const ALLOW: Verdict<'static> = Verdict {
        action: RuleAction::Allow,
        rule: None,
    };

    /// The deciding rule's name, for the request log.
    pub fn name(&self) -> Option<&str> {
        self.rule.map(|r| r.spec.name.as_str())
    }
}

/// A path the rules cannot judge without guessing how the upstream reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmbiguousPath;

impl Rules {
    /// Compiles `specs`; `None` when there is nothing to check (no rules, default allow).
    /// `previous` is the same service's rules in the policy being replaced.
    pub fn compile(
        specs: &[RuleSpec],
        default: RuleAction,
        previous: Option<&Rules>,
    ) -> Option<Box<Self>> {
        if specs.is_empty() && default == RuleAction::Allow {
            return None;
        }
        let (agent, general): (Vec<&RuleSpec>, Vec<&RuleSpec>) =
            specs.iter().partition(|s| !s.agents.is_empty());
        let rules = agent
            .into_iter()
            .chain(general)
            .map(|spec| {
                let limit = spec.per_minute.map(|n| {
                    previous
                        .and_then(|p| p.rules.iter().find(|r| r.spec.name == spec.name))
                        .filter(|r| r.spec.per_minute == Some(n))
                        .and_then(|r| r.limit.clone())
                        .unwrap_or_default()
                });
                Rule {
                    spec: spec.clone(),
                    limit,
                }
            })
            .collect::<Vec<_>>();
        let paths = rules.iter().any(|r| r.spec.path.is_some());
        let mut methods: Vec<String> = rules
            .iter()
            .flat_map(|r| r.spec.methods.iter().map(|m| m.to_ascii_uppercase()))
            .collect();
        methods.sort();
        methods.dedup();
        Some(Box::new(Self {
            rules,
            default,
            paths,
            methods,
        }))
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn default_action(&self) -> RuleAction {
        self.default
    }

    /// Whether a `_method` in the body could make `verdict` stricter: judging the request as
    /// some method a rule names is. Only then does the exchange read the body to look.
    pub fn body_method_matters(
        &self,
        agent: Option<&str>,
        req: &Request,
        path: &str,
        query: Option<&str>,
        verdict: Verdict<'_>,
    ) -> bool {
        !self.methods.is_empty()
            && self
                .evaluate_with(agent, req, path, query, &self.methods)
                .is_ok_and(|worst| worst.action.strictness() > verdict.action.strictness())
    }

    /// Judges `req` (whose path and query `inject` split off) for `agent`.
    pub fn evaluate<'r>(
        &'r self,
        agent: Option<&str>,
        req: &Request,
        path: &str,
        query: Option<&str>,
    ) -> Result<Verdict<'r>, AmbiguousPath> {
        self.evaluate_with(agent, req, path, query, &[])
    }

    /// As [`Rules::evaluate`], judging the request also as each of `more` methods (the
    /// `_method` fields of its body).
    pub fn evaluate_with<'r>(
        &'r self,
        agent: Option<&str>,
        req: &Request,
        path: &str,
        query: Option<&str>,
        more: &[String],
    ) -> Result<Verdict<'r>, AmbiguousPath> {
        let path = if self.paths {
            normalise(path)?
        } else {
            Cow::Borrowed(path)
        };
        let facts = Facts {
            agent,
            req,
            path: &path,
            query,
        };
        let mut verdict = self.decide(&facts, req.method());
        for header in req.headers() {
            if METHOD_OVERRIDES.iter().any(|h| same_header(header.name, h)) {
                let other = std::str::from_utf8(header.value).unwrap_or("?");
                verdict = stricter(verdict, self.decide(&facts, other.trim()));
            }
        }
        for value in query_values(query, "_method") {
            verdict = stricter(verdict, self.decide(&facts, &value));
        }
        for method in more {
            verdict = stricter(verdict, self.decide(&facts, method));
        }
        Ok(verdict)
    }

    /// The first rule matching the request as `method`, else the default.
    fn decide(&self, facts: &Facts<'_>, method: &str) -> Verdict<'_> {
        self.rules.iter().find(|r| r.applies(facts, method)).map_or(
            Verdict {
                action: self.default,
                rule: None,
            },
            |r| Verdict {
                action: r.spec.action,
                rule: Some(r),
            },
        )
    }
}

/// The request as the rules see it.
struct Facts<'a> {
    agent: Option<&'a str>,
    req: &'a Request,
    /// Normalised when any rule names a path.
    path: &'a str,
    query: Option<&'a str>,
}

impl Rule {
    fn applies(&self, f: &Facts<'_>, method: &str) -> bool {
        let s = &self.spec;
        (s.agents.is_empty() || f.agent.is_some_and(|a| s.agents.iter().any(|x| x == a)))
            && (s.methods.is_empty() || s.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && s.path.as_ref().is_none_or(|g| g.matches(segments(f.path)))
            && s.query.iter().all(|k| query_has(f.query, k))
            && s.headers
                .iter()
                .all(|h| f.req.headers().any(|x| same_header(x.name, h)))
    }

    /// Takes one request from a `limit` rule's bucket; always true for other rules.
    pub fn take(&self) -> bool {
        let (Some(cell), Some(n)) = (&self.limit, self.spec.per_minute) else {
            return true;
        };
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let now = EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64;
        cell.try_take(now, f64::from(n), f64::from(n) / 60.0)
    }
}

/// The stricter of two verdicts.
fn stricter<'r>(a: Verdict<'r>, b: Verdict<'r>) -> Verdict<'r> {
    if b.action.strictness() > a.action.strictness() {
        b
    } else {
        a
    }
}

/// The segments of a normalised path (none for `/`).
fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').skip(1).filter(|s| !s.is_empty())
}

/// The path as the upstream will act on it (see the module doc), or [`AmbiguousPath`].
pub fn normalise(path: &str) -> Result<Cow<'_, str>, AmbiguousPath> {
    let simple = !path.bytes().any(|b| b == b'%' || b == b';' || b == b'\\')
        && (path.len() == 1 || !path.ends_with('/'));
    if simple {
        return Ok(Cow::Borrowed(path));
    }
    if path.contains('\\') {
        return Err(AmbiguousPath);
    }
    let mut out = String::with_capacity(path.len());
    let mut segs = path.split('/').skip(1).peekable();
    while let Some(seg) = segs.next() {
        let decoded = decode_unreserved(seg.split(';').next().unwrap_or_default())?;
        match decoded.as_str() {
            // A trailing `/` is dropped; any other empty segment is refused.
            "" if segs.peek().is_none() => {}
            "" | "." | ".." => return Err(AmbiguousPath),
            _ => {
                out.push('/');
                out.push_str(&decoded);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Decodes `%XX` escapes of unreserved characters; refuses an encoded `/` or `\`; keeps every
/// other escape as written.
fn decode_unreserved(seg: &str) -> Result<String, AmbiguousPath> {
    let b = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = b.get(i + 1..i + 3).and_then(hex_byte)
        {
            if v == b'/' || v == b'\\' {
                return Err(AmbiguousPath);
            }
            if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                out.push(char::from(v));
            } else {
                out.push_str(&seg[i..i + 3]);
            }
            i += 3;
            continue;
        }
        out.push(char::from(b[i]));
        i += 1;
    }
    Ok(out)
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let s = std::str::from_utf8(two).ok()?;
    u8::from_str_radix(s, 16).ok()
}

/// Percent-decodes a query component (`+` is a space).
pub fn decode_component(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let Some(v) = b.get(i + 1..i + 3).and_then(hex_byte) {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Header names as frameworks read them: any case, `_` the same as `-`.
fn same_header(a: &str, b: &str) -> bool {
    let fold = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// The `key=value` pairs of a query or form body, split where any framework splits them.
fn pairs(query: &str) -> impl Iterator<Item = &str> {
    query.split(['&', ';']).filter(|p| !p.is_empty())
}

/// Whether a decoded query key is what a rule key names: the same, or the same name with an
/// index (`expand[0]`, `expand[]`) when the rule key is bare or ends in `[]`.
fn key_matches(got: &str, rule: &str) -> bool {
    if got == rule {
        return true;
    }
    let base = rule.strip_suffix("[]").unwrap_or(rule);
    !base.contains('[')
        && got
            .strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || (rest.starts_with('[') && rest.ends_with(']')))
}

fn query_has(query: Option<&str>, key: &str) -> bool {
    query.is_some_and(|q| {
        pairs(q).any(|pair| {
            key_matches(
                &decode_component(pair.split('=').next().unwrap_or_default()),
                key,
            )
        })
    })
}

/// The decoded values of `key` in the query.
fn query_values<'q>(query: Option<&'q str>, key: &'q str) -> impl Iterator<Item = String> + 'q {
    query.into_iter().flat_map(pairs).filter_map(move |pair| {
        let (k, v) = pair.split_once('=')?;
        (decode_component(k) == key).then(|| decode_component(v).into_owned())
    })
}

/// A body whose `_method` cannot be read without parsing it as its framework would (multipart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmbiguousBody;

/// The methods a body's `_method` fields name, by its `Content-Type` (row 105): a form
/// (`application/x-www-form-urlencoded`) field (percent-decoded), a JSON object's top-level
/// string (escapes decoded); a JSON `_method` that is not a string, or a multipart body that
/// mentions `method` at all, is [`AmbiguousBody`]. Other bodies name none.
pub fn body_methods(content_type: &[u8], body: &[u8]) -> Result<Vec<String>, AmbiguousBody> {
    let ct = String::from_utf8_lossy(content_type).to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or_default().trim();
    if essence == "application/x-www-form-urlencoded" {
        let text = String::from_utf8_lossy(body);
        return Ok(query_values(Some(&text), "_method").collect());
    }
    if essence == "application/json" || essence.ends_with("+json") {
        return match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(map)) => match map.get("_method") {
                None => Ok(Vec::new()),
                Some(serde_json::Value::String(m)) => Ok(vec![m.clone()]),
                Some(_) => Err(AmbiguousBody),
            },
            _ => Ok(Vec::new()),
        };
    }
    // A part's name may be quoted or encoded in several ways: any mention is refused.
    if essence == "multipart/form-data" && memchr::memmem::find(body, b"method").is_some() {
        return Err(AmbiguousBody);
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules of a service file whose one service has `yaml` as its rules.
    fn specs(yaml: &str) -> Vec<RuleSpec> {
        let rules: String = yaml.lines().map(|l| format!("      {l}\n")).collect();
        let file = format!(
            "services:\n  - name: svc\n    host: a.example\n    auth: {{type: passthrough}}\n    rules:\n{rules}"
        );
        let mut f = crate::spec::ServiceFile::from_yaml(&file).unwrap();
        f.services.remove(0).rules
    }

    fn rules(yaml: &str, default: RuleAction) -> Box<Rules> {
        Rules::compile(&specs(yaml), default, None).unwrap()
    }

    fn judge(
        r: &Rules,
        agent: Option<&str>,
        head: &str,
    ) -> Result<(RuleAction, String), AmbiguousPath> {
        let raw = format!("{head}\r\nHost: a.example\r\n\r\n");
        let req = Request::parse(raw.into_bytes()).unwrap();
        let target = req.target().to_owned();
        let (path, query) = target
            .split_once('?')
            .map_or((target.as_str(), None), |(p, q)| (p, Some(q)));
        let v = r.evaluate(agent, &req, path, query)?;
        Ok((v.action, v.name().unwrap_or("-").to_owned()))
    }

    const STRIPE: &str = r#"
- {name: cleanup-may-delete, agents: [cleanup], methods: [DELETE], action: allow}
- {name: no-deletes, methods: [DELETE], path: "/v1/*", action: deny}
- {name: refunds-need-a-person, methods: [POST], path: "/v1/refunds", action: hold}
- {name: slow-charges, methods: [POST], path: "/v1/charges", action: limit, per_minute: 2}
- {name: expand-needs-key, query: ["expand[]"], headers: [idempotency-key], action: deny}
"#;

    #[test]
    fn first_match_agents_first_then_default() {
        let r = rules(STRIPE, RuleAction::Allow);
        let j = |agent, head| judge(&r, agent, head).unwrap();
        assert_eq!(
            j(None, "DELETE /v1/customers/c1 HTTP/1.1"),
            (RuleAction::Deny, "no-deletes".into())
        );
        assert_eq!(
            j(Some("cleanup"), "DELETE /v1/customers/c1 HTTP/1.1"),
            (RuleAction::Allow, "cleanup-may-delete".into())
        );
        assert_eq!(
            j(Some("bot"), "delete /v1/customers/c1 HTTP/1.1").0,
            RuleAction::Deny,
            "method case"
        );
        assert_eq!(j(None, "POST /v1/refunds HTTP/1.1").0, RuleAction::Hold);
        assert_eq!(j(None, "POST /v1/charges HTTP/1.1").0, RuleAction::Limit);
        assert_eq!(
            j(None, "GET /v1/charges HTTP/1.1"),
            (RuleAction::Allow, "-".into())
        );
        let r2 = rules(STRIPE, RuleAction::Deny);
        assert_eq!(
            judge(&r2, None, "GET /v1/charges HTTP/1.1").unwrap(),
            (RuleAction::Deny, "-".into())
        );
    }

    #[test]
    fn query_and_header_conditions() {
        let r = rules(STRIPE, RuleAction::Allow);
        let raw =
            b"GET /v1/x?expand%5B%5D=a HTTP/1.1\r\nHost: a\r\nIdempotency-Key: 1\r\n\r\n".to_vec();
        let req = Request::parse(raw).unwrap();
        let v = r
            .evaluate(None, &req, "/v1/x", Some("expand%5B%5D=a"))
            .unwrap();
        assert_eq!(v.name(), Some("expand-needs-key"));
        let v = r.evaluate(None, &req, "/v1/x", Some("other=a")).unwrap();
        assert_eq!(v.action, RuleAction::Allow);
    }

    /// Security rows 96, 97: spellings of a denied path or method.
    #[test]
    fn bypass_spellings_are_normalised_or_refused() {
        let r = rules(STRIPE, RuleAction::Allow);
        let j = |head: &str| judge(&r, None, head);
        for same in [
            "POST /v1/%72efunds HTTP/1.1",
            "POST /v1/refunds/ HTTP/1.1",
            "POST /v1/refunds;jsessionid=1 HTTP/1.1",
            "POST /v1/refunds?x=1 HTTP/1.1",
            "post /v1/refunds HTTP/1.1",
            "GET /v1/refunds?_method=POST HTTP/1.1",
        ] {
            let (action, name) = j(same).unwrap();
            assert_eq!(
                (action, name.as_str()),
                (RuleAction::Hold, "refunds-need-a-person"),
                "{same}"
            );
        }
        for ambiguous in [
            "POST /v1%2Frefunds HTTP/1.1",
            "POST /v1/..;/v1/refunds HTTP/1.1",
            "POST /v1\\refunds HTTP/1.1",
            "POST /v1/;x/refunds HTTP/1.1",
            "POST /v1/%5Crefunds HTTP/1.1",
        ] {
            assert_eq!(j(ambiguous), Err(AmbiguousPath), "{ambiguous}");
        }
        // A method override is judged as well; the strictest outcome wins.
        let raw =
            b"POST /v1/customers/c1 HTTP/1.1\r\nHost: a\r\nX-HTTP-Method-Override: delete\r\n\r\n"
                .to_vec();
        let req = Request::parse(raw).unwrap();
        assert_eq!(
            r.evaluate(None, &req, "/v1/customers/c1", None)
                .unwrap()
                .action,
            RuleAction::Deny
        );
        assert_eq!(
            j("GET /v1/customers/c1?_method=DELETE HTTP/1.1").unwrap().0,
            RuleAction::Deny
        );
    }

    /// Row 104: header names with `_` for `-`, `;` query separators and
    /// indexed keys meet the rule written for the usual spelling.
    #[test]
    fn row104_header_and_query_spellings_meet_their_rule() {
        let r = rules(STRIPE, RuleAction::Allow);
        let with = |head: &str, header: &str| {
            let raw = format!("{head}\r\nHost: a.example\r\n{header}\r\n\r\n");
            let req = Request::parse(raw.into_bytes()).unwrap();
            let target = req.target().to_owned();
            let (path, query) = target
                .split_once('?')
                .map_or((target.as_str(), None), |(p, q)| (p, Some(q)));
            r.evaluate(None, &req, path, query).unwrap().action
        };
        for (target, header) in [
            ("GET /v1/x?expand[]=a", "Idempotency-Key: 1"),
            ("GET /v1/x?expand[]=a", "Idempotency_Key: 1"),
            ("GET /v1/x?expand[]=a", "IDEMPOTENCY_key: 1"),
            ("GET /v1/x?expand[0]=a", "Idempotency-Key: 1"),
            ("GET /v1/x?expand%5B1%5D=a", "Idempotency-Key: 1"),
            ("GET /v1/x?expand=a", "Idempotency-Key: 1"),
            ("GET /v1/x?a=1;expand[]=x", "Idempotency-Key: 1"),
            ("POST /v1/customers/c1", "X_HTTP_Method_Override: DELETE"),
        ] {
            let head = format!("{target} HTTP/1.1");
            assert_eq!(with(&head, header), RuleAction::Deny, "{target} {header}");
        }
        for (target, header) in [
            ("GET /v1/x?expanded=a", "Idempotency-Key: 1"),
            ("GET /v1/x?expand[]=a", "Idempotency-Keys: 1"),
            ("GET /v1/x?x_expand[]=a", "Idempotency-Key: 1"),
        ] {
            let head = format!("{target} HTTP/1.1");
            assert_eq!(with(&head, header), RuleAction::Allow, "{target} {header}");
        }
        assert!(
            !key_matches("expand[0]", "expand[a]"),
            "a named index is exact"
        );
        assert!(key_matches("expand[a]", "expand[a]"));
    }

    /// Row 105: a body's `_method`, by content type; and whether it could matter.
    #[test]
    fn row105_body_method_fields() {
        let m = |ct: &str, body: &str| body_methods(ct.as_bytes(), body.as_bytes());
        let form = "application/x-www-form-urlencoded";
        assert_eq!(m(form, "a=1&_method=DELETE"), Ok(vec!["DELETE".to_owned()]));
        assert_eq!(
            m(form, "%5Fmethod=delete;b=2"),
            Ok(vec!["delete".to_owned()])
        );
        assert_eq!(
            m("Application/JSON; charset=utf-8", r#"{"_method":"DELETE"}"#),
            Ok(vec!["DELETE".to_owned()])
        );
        assert_eq!(
            m("application/json", r#"{"\u005fmethod":"DELETE"}"#),
            Ok(vec!["DELETE".to_owned()])
        );
        assert_eq!(
            m("application/vnd.api+json", r#"{"_method":["DELETE"]}"#),
            Err(AmbiguousBody)
        );
        assert_eq!(
            m(
                "multipart/form-data; boundary=x",
                "--x\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE"
            ),
            Err(AmbiguousBody)
        );
        assert_eq!(
            m(
                "multipart/form-data; boundary=x",
                "--x\r\nContent-Disposition: form-data; name=\"file\""
            ),
            Ok(vec![])
        );
        assert_eq!(m("text/plain", "_method=DELETE"), Ok(vec![]));
        assert_eq!(m("application/json", "[1, 2]"), Ok(vec![]));
        let r = rules(STRIPE, RuleAction::Allow);
        let matters = |head: &str| {
            let raw = format!("{head} HTTP/1.1\r\nHost: a.example\r\n\r\n");
            let req = Request::parse(raw.into_bytes()).unwrap();
            let path = req.target().to_owned();
            let v = r.evaluate(None, &req, &path, None).unwrap();
            r.body_method_matters(None, &req, &path, None, v)
        };
        assert!(matters("POST /v1/customers/c1"), "as DELETE it is denied");
        assert!(!matters("POST /other"), "no rule names a method here");
        assert!(!matters("DELETE /v1/customers/c1"), "already the strictest");
        let raw = b"POST /v1/customers/c1 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        let req = Request::parse(raw).unwrap();
        let v = r
            .evaluate_with(None, &req, "/v1/customers/c1", None, &["delete".to_owned()])
            .unwrap();
        assert_eq!(v.action, RuleAction::Deny);
    }

    #[test]
    fn limits_survive_recompilation() {
        let specs = specs(STRIPE);
        let first = Rules::compile(&specs, RuleAction::Allow, None).unwrap();
        let slow = |r: &Rules| {
            r.rules
                .iter()
                .find(|r| r.spec.name == "slow-charges")
                .unwrap()
                .take()
        };
        assert!(slow(&first) && slow(&first));
        assert!(!slow(&first), "a burst of per_minute");
        let second = Rules::compile(&specs, RuleAction::Allow, Some(&first)).unwrap();
        assert!(!slow(&second), "the bucket is carried over");
        assert!(Rules::compile(&[], RuleAction::Allow, None).is_none());
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalise("/a/b").unwrap(), "/a/b");
        assert_eq!(normalise("/").unwrap(), "/");
        assert_eq!(normalise("/a/%7Eb%20c/").unwrap(), "/a/~b%20c");
        assert_eq!(normalise("/a;x/b;y").unwrap(), "/a/b");
        assert!(normalise("/a/%2e%2E").is_err());
        assert!(normalise("/a/%2f").is_err());
        assert_eq!(normalise("/;x").unwrap(), "/");
        assert!(normalise("/;x/a").is_err());
        // Paths are case-sensitive, as most APIs are: another spelling is another path.
        assert_eq!(normalise("/v1/REFUNDS").unwrap(), "/v1/REFUNDS");
    }
}
