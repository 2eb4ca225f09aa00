//! Request rules of a service (`rules:` in a service file): what an agent may do with a service,
//! not only which service it may reach. Each rule has a name, optional conditions (the agents it
//! is for, methods, a path glob, query keys and header names that must be present) and an action:
//! `allow`, `deny`, `limit` (a rate per rule) or `hold` (an operator approves each request).
//!
//! A rule is checked as it is deserialised ([`RuleSpec`] is built through `TryFrom<RawRule>`), so
//! a malformed rule is refused by the YAML or JSON parser with its line, and a stored rule is
//! always valid. Names are normalised on the way in: methods upper case, header names lower case.
//! This module matches nothing against requests; the data plane's `rules` module does, using
//! [`PathGlob::matches`].

use serde::{Deserialize, Serialize};

use crate::names;

/// At most this many rules per service.
pub const MAX_RULES: usize = 200;

/// One rule, valid and normalised.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(try_from = "RawRule")]
pub struct RuleSpec {
    pub name: String,
    /// The agents the rule is for; empty: every agent. Rules naming the requesting agent are
    /// checked before the others (a per-agent override).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// Upper case; empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathGlob>,
    /// Query keys that must all be present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<String>,
    /// Header names (lower case) that must all be present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    pub action: RuleAction,
    /// A `limit` rule's rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u32>,
    /// What the agent is told when the rule refuses or holds it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

/// What a rule does with a request it matches.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Serialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Allow,
    Deny,
    Limit,
    Hold,
}

impl RuleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Limit => "limit",
            Self::Hold => "hold",
        }
    }

    /// How strict the action is: deny, then hold, then limit, then allow.
    pub fn strictness(self) -> u8 {
        match self {
            Self::Deny => 3,
            Self::Hold => 2,
            Self::Limit => 1,
            Self::Allow => 0,
        }
    }
}

/// A rule as written, before it is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    agents: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    query: Vec<String>,
    #[serde(default)]
    headers: Vec<String>,
    action: RuleAction,
    #[serde(default)]
    per_minute: Option<u32>,
    #[serde(default)]
    hint: String,
}

impl TryFrom<RawRule> for RuleSpec {
    type Error = String;

    fn try_from(r: RawRule) -> Result<Self, String> {
        let at = |field: &str, reason: String| format!("rule {:?}: {field}: {reason}", r.name);
        names::service(&r.name).map_err(|e| format!("rule {:?}: name {}", r.name, e.rule))?;
        for a in &r.agents {
            names::agent(a).map_err(|e| at("agents", format!("{a:?} {}", e.rule)))?;
        }
        let mut methods = Vec::with_capacity(r.methods.len());
        for m in &r.methods {
            let ok = (1..=20).contains(&m.len()) && m.bytes().all(|b| b.is_ascii_alphabetic());
            if !ok {
                return Err(at("methods", format!("{m:?} is not a method name")));
            }
            methods.push(m.to_ascii_uppercase());
        }
        let path = r
            .path
            .as_deref()
            .map(PathGlob::parse)
            .transpose()
            .map_err(|e| at("path", e))?;
        for q in &r.query {
            let ok = (1..=128).contains(&q.len())
                && q.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"=&#%+".contains(&b));
            if !ok {
                return Err(at("query", format!("{q:?} is not a query key")));
            }
        }
        let mut headers = Vec::with_capacity(r.headers.len());
        for h in &r.headers {
            let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if h.is_empty() || h.len() > 128 || !h.bytes().all(tchar) {
                return Err(at("headers", format!("{h:?} is not a header name")));
            }
            headers.push(h.to_ascii_lowercase());
        }
        match (r.action, r.per_minute) {
            (RuleAction::Limit, Some(n)) if n > 0 => {}
            (RuleAction::Limit, _) => {
                return Err(at(
                    "per_minute",
                    "a limit rule needs per_minute of 1 or more".into(),
                ));
            }
            (_, Some(_)) => {
                return Err(at("per_minute", "only a limit rule has a rate".into()));
            }
            (_, None) => {}
        }
        if r.hint.chars().count() > 300 || r.hint.chars().any(char::is_control) {
            return Err(at(
                "hint",
                "at most 300 characters, no control characters".into(),
            ));
        }
        Ok(Self {
            name: r.name,
            agents: r.agents,
            methods,
            path,
            query: r.query,
            headers,
            action: r.action,
            per_minute: r.per_minute,
            hint: r.hint,
        })
    }
}

impl RuleSpec {
    /// The rule in one line for a reviewer: `name: action [per minute] conditions`.
    pub fn describe(&self) -> String {
        let action = match self.per_minute {
            Some(n) => format!("limit {n}/min"),
            None => self.action.as_str().to_owned(),
        };
        format!("{}: {action} {}", self.name, self.conditions())
    }

    /// The conditions in words: `DELETE /v1/*`, or `every request`.
    pub fn conditions(&self) -> String {
        let mut when = Vec::new();
        if !self.agents.is_empty() {
            when.push(format!("agent {}", self.agents.join("|")));
        }
        if !self.methods.is_empty() {
            when.push(self.methods.join("|"));
        }
        if let Some(p) = &self.path {
            when.push(p.as_str().to_owned());
        }
        if !self.query.is_empty() {
            when.push(format!("query has {}", self.query.join(", ")));
        }
        if !self.headers.is_empty() {
            when.push(format!("header {}", self.headers.join(", ")));
        }
        if when.is_empty() {
            "every request".to_owned()
        } else {
            when.join(" ")
        }
    }
}

/// A path glob: `/` separated segments, where `*` matches any run of characters within one
/// segment (`/v1/charges/*/capture`) and a final segment that is only `*` matches the path
/// before it and everything below (`/v1/*` covers `/v1`, `/v1/a` and `/v1/a/b`). Literal
/// characters are matched exactly (paths are case-sensitive); `**`, `%`, `?` and `#` are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PathGlob {
    text: String,
    /// The segments to match, without a final `*`.
    segments: Vec<String>,
    /// Whether a final `*` segment matches everything below.
    below: bool,
}

impl PathGlob {
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') || text.len() > 512 {
            return Err(format!(
                "{text:?} must start with / (at most 512 characters)"
            ));
        }
        if text.contains("**") || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("{text:?}: printable ASCII, and * but not **"));
        }
        if text.bytes().any(|b| b"%?#\\;".contains(&b)) {
            return Err(format!(
                "{text:?}: %, ?, #, ; and \\ are not allowed in a path glob"
            ));
        }
        let trimmed = text
            .strip_suffix('/')
            .filter(|t| !t.is_empty())
            .unwrap_or(text);
        let mut segments: Vec<String> = trimmed[1..].split('/').map(str::to_owned).collect();
        if segments
            .iter()
            .any(|s| s.is_empty() || s == "." || s == "..")
            && trimmed != "/"
        {
            return Err(format!("{text:?}: empty or dot segments are not allowed"));
        }
        if trimmed == "/" {
            segments.clear();
        }
        let below = segments.last().is_some_and(|s| s == "*");
        if below {
            segments.pop();
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
            below,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a normalised path, given as its segments (no leading empty one), matches.
    pub fn matches<'a>(&self, path: impl Iterator<Item = &'a str>) -> bool {
        let mut pattern = self.segments.iter();
        let mut path = path;
        loop {
            match (pattern.next(), path.next()) {
                (Some(p), Some(s)) if segment_matches(p.as_bytes(), s.as_bytes()) => {}
                (Some(_), _) => return false,
                (None, None) => return true,
                (None, Some(_)) => return self.below,
            }
        }
    }
}

impl TryFrom<String> for PathGlob {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<PathGlob> for String {
    fn from(g: PathGlob) -> Self {
        g.text
    }
}

/// `*` matches any run of bytes of one segment; linear in practice (one backtrack point).
fn segment_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(s: &str) -> PathGlob {
        PathGlob::parse(s).unwrap()
    }

    fn m(g: &str, path: &str) -> bool {
        glob(g).matches(path[1..].split('/').filter(|s| !s.is_empty()))
    }

    #[test]
    fn globs() {
        assert!(m("/v1/*", "/v1"));
        assert!(m("/v1/*", "/v1/refunds"));
        assert!(m("/v1/*", "/v1/a/b/c"));
        assert!(!m("/v1/*", "/v10/a"));
        assert!(!m("/v1/*", "/"));
        assert!(m("/v1/refunds", "/v1/refunds"));
        assert!(!m("/v1/refunds", "/v1/refunds/re_1"));
        assert!(m("/v1/charges/*/capture", "/v1/charges/ch_1/capture"));
        assert!(!m("/v1/charges/*/capture", "/v1/charges/a/b/capture"));
        assert!(m("/files/*.txt", "/files/a.b.txt"));
        assert!(!m("/files/*.txt", "/files/a.txt.gz"));
        assert!(m("/*", "/"));
        assert!(m("/*", "/anything/at/all"));
        assert!(m("/", "/"));
        assert!(!m("/", "/x"));
        assert!(m("/v1/refunds/", "/v1/refunds"));
        for bad in [
            "v1", "/v1/**", "/v1/%72", "/a?b", "/a//b", "/a/../b", "/a;b", "/a\\b", "/é",
        ] {
            assert!(PathGlob::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_are_checked_and_normalised_with_their_line() {
        let y = "- {name: no-deletes, methods: [delete], path: \"/v1/*\", action: deny}\n- {name: slow, headers: [X-Idempotency-Key], action: limit, per_minute: 10}\n";
        let rules: Vec<RuleSpec> = serde_saphyr::from_str(y).unwrap();
        assert_eq!(rules[0].methods, ["DELETE"]);
        assert_eq!(rules[1].headers, ["x-idempotency-key"]);
        assert_eq!(rules[0].describe(), "no-deletes: deny DELETE /v1/*");
        assert_eq!(
            rules[1].describe(),
            "slow: limit 10/min header x-idempotency-key"
        );
        let bad = [
            ("- {name: ok-rule, action: limit}\n", "per_minute"),
            (
                "- {name: ok-rule, action: deny, per_minute: 3}\n",
                "only a limit",
            ),
            (
                "- {name: ok-rule, methods: [\"GE T\"], action: deny}\n",
                "not a method",
            ),
            ("- {name: ok-rule, path: \"/a/**\", action: deny}\n", "**"),
            ("- {name: ok-rule, action: maybe}\n", "maybe"),
            ("- {name: ok-rule, action: deny, colour: red}\n", "colour"),
            ("- {name: X, action: deny}\n", "name"),
        ];
        for (y, want) in bad {
            let text = format!("# a comment line\n{y}");
            let e = serde_saphyr::from_str::<Vec<RuleSpec>>(&text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{y}: {e}");
            assert!(e.contains("line 2"), "{y}: no line in {e}");
        }
        // Stored as JSON and read back, a rule stays the same.
        let json = serde_json::to_string(&rules).unwrap();
        let back: Vec<RuleSpec> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rules);
    }
}
