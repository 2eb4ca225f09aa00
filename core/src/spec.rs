//! Service definitions: the YAML service file, its validation,
//! and the record form stored in the vault.
//!
//! [`ServiceFile::from_yaml`] rejects unknown fields; [`ServiceSpec::validate`] checks every
//! grammar (names, host matcher, header names, templates, placeholders) and returns
//! [`SpecError`]s that name the service and field. Whether referenced credentials exist is the
//! store's check, since it needs the vault. This module does no matching or injection.

pub mod host;
pub mod rule;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use self::host::{HostName, HostPattern, PathPattern, Scheme};
pub use self::rule::{PathGlob, RuleAction, RuleSpec};
use crate::names;

/// A service file: `services: [...]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub services: Vec<ServiceSpec>,
}

/// One service, as written in a file and as stored.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub host: String,
    pub auth: AuthSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub substitutions: Vec<Substitution>,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    /// Request rules, checked in order after the service matched ([`rule`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSpec>,
    /// What happens to a request no rule matched: `allow` (when unset), `deny` or `hold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_default: Option<RuleAction>,
}

fn enabled_default() -> bool {
    true
}

/// How a service authenticates upstream. Fields name credential keys, never values.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AuthSpec {
    Bearer {
        token: String,
    },
    Basic {
        username: String,
        password: String,
    },
    ApiKey {
        key: String,
        header: String,
        #[serde(default)]
        prefix: String,
    },
    Custom {
        headers: BTreeMap<String, String>,
    },
    /// AWS Signature Version 4: every request is signed as it leaves. `region` and `service`
    /// default to what an `amazonaws.com` host names ([`aws_scope`]).
    AwsSigv4 {
        access_key_id: String,
        secret_access_key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_token: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
    Passthrough,
}

/// The region and signing name an AWS endpoint host names: `s3.us-west-2.amazonaws.com` is
/// (`us-west-2`, `s3`), `bucket.s3.eu-west-1.amazonaws.com` and `s3.dualstack.eu-west-1...` too,
/// `bedrock-runtime.us-east-1.amazonaws.com` is (`us-east-1`, `bedrock`), the global
/// `s3.amazonaws.com` is (`us-east-1`, `s3`). `None` for any other host, or a pattern whose
/// wildcard stands where the region or service would be.
pub fn aws_scope(host: &str) -> Option<(String, String)> {
    let host = host.split(['/', ':']).next()?.trim_start_matches("*.");
    let labels: Vec<&str> = host.strip_suffix(".amazonaws.com")?.split('.').collect();
    let signing = |label: &str| match label {
        "bedrock-runtime" | "bedrock-agent-runtime" | "bedrock-agent" => "bedrock".to_owned(),
        l if l.starts_with("s3") => "s3".to_owned(),
        l => l.to_owned(),
    };
    let Some(at) = labels.iter().rposition(|l| is_aws_region(l)) else {
        return (labels.last() == Some(&"s3")).then(|| ("us-east-1".into(), "s3".into()));
    };
    let service = labels[..at]
        .iter()
        .rev()
        .find(|l| **l != "dualstack" && **l != "fips")?;
    Some((labels[at].to_owned(), signing(service)))
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `ap-southeast-3` and the like.
fn is_aws_region(label: &str) -> bool {
    let parts: Vec<&str> = label.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].parse::<u8>().is_ok()
}

/// A placeholder replaced by a credential in the named request surfaces only (R6).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Substitution {
    pub key: String,
    pub placeholder: String,
    #[serde(rename = "in")]
    pub surfaces: Vec<Surface>,
}

/// Where a placeholder may be substituted.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Surface {
    Path,
    Query,
    Header,
    /// A JSON string value or a form field's value of a request body airlock reads whole
    /// (`Content-Length`, at most 1 MiB).
    Body,
}

/// A service definition that breaks a rule. The message names the service and field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("service file: {0}")]
    Yaml(String),
    #[error("service {service:?}: {field}: {reason}")]
    Field {
        service: String,
        field: &'static str,
        reason: String,
    },
    #[error("services {first:?} and {second:?} both match {pattern}")]
    DuplicateMatcher {
        first: String,
        second: String,
        pattern: String,
    },
    #[error("service {0:?} appears twice in the file")]
    DuplicateName(String),
}

/// Headers airlock owns: a service may not inject them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "expect",
];

impl ServiceFile {
    pub fn from_yaml(text: &str) -> Result<Self, SpecError> {
        let file: Self =
            serde_saphyr::from_str(text).map_err(|e| SpecError::Yaml(e.to_string()))?;
        let mut seen = BTreeSet::new();
        for s in &file.services {
            if !seen.insert(s.name.as_str()) {
                return Err(SpecError::DuplicateName(s.name.clone()));
            }
        }
        Ok(file)
    }
}

impl ServiceSpec {
    /// Checks every grammar and returns the parsed host pattern.
    pub fn validate(&self) -> Result<HostPattern, SpecError> {
        let field = |(field, reason): (&'static str, String)| SpecError::Field {
            service: self.name.clone(),
            field,
            reason,
        };
        names::service(&self.name).map_err(|e| field(("name", e.rule.to_owned())))?;
        let host = HostPattern::parse(&self.host).map_err(|e| field(("host", e.reason)))?;
        self.check_auth().map_err(field)?;
        self.check_rules().map_err(|r| field(("rules", r)))?;
        self.check_substitutions().map_err(field)?;
        Ok(host)
    }

    /// The auth's credential keys, header names and AWS scope; a passthrough substitutes
    /// nothing. An error names the field.
    fn check_auth(&self) -> Result<(), (&'static str, String)> {
        let key =
            |f: &'static str, k: &str| names::credential_key(k).map_err(|e| (f, e.to_string()));
        match &self.auth {
            AuthSpec::Bearer { token } => key("auth.token", token)?,
            AuthSpec::Basic { username, password } => {
                key("auth.username", username)?;
                key("auth.password", password)?;
            }
            AuthSpec::ApiKey {
                key: k,
                header,
                prefix,
            } => {
                key("auth.key", k)?;
                check_header_name(header).map_err(|r| ("auth.header", r))?;
                if !prefix.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                    return Err(("auth.prefix", "must be printable ASCII".into()));
                }
            }
            AuthSpec::Custom { headers } => {
                if headers.is_empty() {
                    return Err(("auth.headers", "at least one header is needed".into()));
                }
                let mut lower = BTreeSet::new();
                for (name, template) in headers {
                    check_header_name(name).map_err(|r| ("auth.headers", r))?;
                    if !lower.insert(name.to_ascii_lowercase()) {
                        return Err(("auth.headers", format!("header {name:?} appears twice")));
                    }
                    for k in template_keys(template)
                        .map_err(|r| ("auth.headers", format!("{name}: {r}")))?
                    {
                        key("auth.headers", k)?;
                    }
                }
            }
            AuthSpec::AwsSigv4 {
                access_key_id,
                secret_access_key,
                session_token,
                region,
                service,
            } => {
                key("auth.access_key_id", access_key_id)?;
                key("auth.secret_access_key", secret_access_key)?;
                if let Some(t) = session_token {
                    key("auth.session_token", t)?;
                }
                let label = |v: &str| {
                    !v.is_empty()
                        && v.len() <= 64
                        && v.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                };
                for (name, v) in [("auth.region", region), ("auth.service", service)] {
                    if v.as_deref().is_some_and(|v| !label(v)) {
                        return Err((name, "must be 1-64 of [a-z0-9-]".into()));
                    }
                }
                self.aws_scope().ok_or_else(|| {
                    (
                        "auth",
                        "the host names no AWS region and service: set auth.region and auth.service"
                            .into(),
                    )
                })?;
            }
            AuthSpec::Passthrough => {
                if !self.substitutions.is_empty() {
                    return Err((
                        "substitutions",
                        "a passthrough service injects nothing".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Each placeholder: its key, its spelling, used once, on surfaces named once (never the body
    /// of a service that signs it). An error names the field.
    fn check_substitutions(&self) -> Result<(), (&'static str, String)> {
        let key =
            |f: &'static str, k: &str| names::credential_key(k).map_err(|e| (f, e.to_string()));
        let mut placeholders = BTreeSet::new();
        for sub in &self.substitutions {
            key("substitutions.key", &sub.key)?;
            let ok_len = (6..=64).contains(&sub.placeholder.len());
            if !ok_len
                || !sub
                    .placeholder
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err((
                    "substitutions.placeholder",
                    format!("{:?} must be 6-64 of [A-Za-z0-9_-]", sub.placeholder),
                ));
            }
            if !placeholders.insert(sub.placeholder.as_str()) {
                return Err((
                    "substitutions.placeholder",
                    format!("{:?} is used twice", sub.placeholder),
                ));
            }
            if sub.surfaces.contains(&Surface::Body)
                && matches!(self.auth, AuthSpec::AwsSigv4 { .. })
            {
                return Err((
                    "substitutions.in",
                    "an aws-sigv4 service signs the body as the agent sent it: no body substitution"
                        .into(),
                ));
            }
            let surfaces: BTreeSet<_> = sub.surfaces.iter().collect();
            if surfaces.is_empty() || surfaces.len() != sub.surfaces.len() {
                return Err((
                    "substitutions.in",
                    "name each of path, query, header, body at most once, and at least one".into(),
                ));
            }
        }
        Ok(())
    }

    /// At most [`rule::MAX_RULES`] rules with distinct names; a default that is not `limit`.
    fn check_rules(&self) -> Result<(), String> {
        if self.rules.len() > rule::MAX_RULES {
            return Err(format!("at most {} rules", rule::MAX_RULES));
        }
        let mut names = BTreeSet::new();
        if let Some(r) = self.rules.iter().find(|r| !names.insert(r.name.as_str())) {
            return Err(format!("rule {:?} appears twice", r.name));
        }
        if self.rules_default == Some(RuleAction::Limit) {
            return Err("rules_default is allow, deny or hold".into());
        }
        Ok(())
    }

    /// What a request no rule matched meets.
    pub fn rules_default(&self) -> RuleAction {
        self.rules_default.unwrap_or(RuleAction::Allow)
    }

    /// Every credential key this service needs, in a stable order.
    pub fn credential_keys(&self) -> BTreeSet<&str> {
        let mut keys = BTreeSet::new();
        match &self.auth {
            AuthSpec::Bearer { token } => {
                keys.insert(token.as_str());
            }
            AuthSpec::Basic { username, password } => {
                keys.extend([username.as_str(), password.as_str()]);
            }
            AuthSpec::ApiKey { key, .. } => {
                keys.insert(key.as_str());
            }
            AuthSpec::Custom { headers } => {
                for t in headers.values() {
                    keys.extend(template_keys(t).unwrap_or_default());
                }
            }
            AuthSpec::AwsSigv4 {
                access_key_id,
                secret_access_key,
                session_token,
                ..
            } => {
                keys.extend([access_key_id.as_str(), secret_access_key.as_str()]);
                keys.extend(session_token.as_deref());
            }
            AuthSpec::Passthrough => {}
        }
        keys.extend(self.substitutions.iter().map(|s| s.key.as_str()));
        keys
    }

    /// Everything the service sends, in one line for a reviewer: host, the injected headers with
    /// the credential keys they carry, every substitution, and whether it is disabled.
    pub fn describe(&self) -> String {
        let auth = match &self.auth {
            AuthSpec::Bearer { token } => format!("Authorization: Bearer <{token}>"),
            AuthSpec::Basic { username, password } => {
                format!("Authorization: Basic <{username}>:<{password}>")
            }
            AuthSpec::ApiKey {
                key,
                header,
                prefix,
            } => format!("{header}: {prefix}<{key}>"),
            AuthSpec::Custom { headers } => headers
                .iter()
                .map(|(n, t)| format!("{n}: {t}"))
                .collect::<Vec<_>>()
                .join("; "),
            AuthSpec::AwsSigv4 {
                access_key_id,
                secret_access_key,
                session_token,
                ..
            } => {
                let (region, service) = self.aws_scope().unwrap_or_default();
                let token = session_token
                    .as_ref()
                    .map(|t| format!(" with session token <{t}>"))
                    .unwrap_or_default();
                format!(
                    "AWS SigV4 signed for {service} in {region} with <{access_key_id}>:<{secret_access_key}>{token}"
                )
            }
            AuthSpec::Passthrough => "no credential (passthrough)".to_owned(),
        };
        let mut out = format!("{} · {} · {auth}", self.host, self.auth_type());
        for sub in &self.substitutions {
            let surfaces: Vec<String> = sub
                .surfaces
                .iter()
                .map(|s| format!("{s:?}").to_lowercase())
                .collect();
            out.push_str(&format!(
                " · substitutes <{}> for {} in {}",
                sub.key,
                sub.placeholder,
                surfaces.join(", ")
            ));
        }
        if !self.rules.is_empty() || self.rules_default.is_some() {
            let rules: Vec<String> = self.rules.iter().map(RuleSpec::describe).collect();
            out.push_str(&format!(" · rules: {}", rules.join("; ")));
            out.push_str(&format!(" · otherwise {}", self.rules_default().as_str()));
        }
        if !self.enabled {
            out.push_str(" · disabled");
        }
        out
    }

    /// The auth type's name, as service files spell it.
    pub fn auth_type(&self) -> &'static str {
        match self.auth {
            AuthSpec::Bearer { .. } => "bearer",
            AuthSpec::Basic { .. } => "basic",
            AuthSpec::ApiKey { .. } => "api-key",
            AuthSpec::Custom { .. } => "custom",
            AuthSpec::AwsSigv4 { .. } => "aws-sigv4",
            AuthSpec::Passthrough => "passthrough",
        }
    }

    /// An `aws-sigv4` service's region and signing name: as configured, else from its host.
    pub fn aws_scope(&self) -> Option<(String, String)> {
        let AuthSpec::AwsSigv4 {
            region, service, ..
        } = &self.auth
        else {
            return None;
        };
        let derived = aws_scope(&self.host);
        let region = region
            .clone()
            .or_else(|| derived.as_ref().map(|d| d.0.clone()))?;
        let service = service.clone().or_else(|| derived.map(|d| d.1))?;
        Some((region, service))
    }
}

/// Checks a set of services as one vault's list: each valid, and no two with the same matcher.
pub fn check_unique_matchers(specs: &[ServiceSpec]) -> Result<(), SpecError> {
    let mut seen: BTreeMap<HostPattern, &str> = BTreeMap::new();
    for s in specs {
        let pattern = s.validate()?;
        if let Some(first) = seen.get(&pattern) {
            return Err(SpecError::DuplicateMatcher {
                first: (*first).to_owned(),
                second: s.name.clone(),
                pattern: pattern.to_string(),
            });
        }
        seen.insert(pattern, &s.name);
    }
    Ok(())
}

/// An RFC 9110 token that airlock does not reserve for itself.
fn check_header_name(name: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-airlock-") {
        return Err(format!("{name:?} is set by airlock and cannot be injected"));
    }
    Ok(())
}

/// The credential keys named in a `{{ KEY }}` template; literal parts must be printable ASCII.
pub fn template_keys(template: &str) -> Result<Vec<&str>, String> {
    let mut keys = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        check_literal(&rest[..start])?;
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unclosed {{")?;
        let k = after[..end].trim();
        names::credential_key(k).map_err(|e| e.to_string())?;
        keys.push(k);
        rest = &after[end + 2..];
    }
    check_literal(rest)?;
    if keys.is_empty() {
        return Err("the template names no credential ({{ KEY }})".into());
    }
    Ok(keys)
}

fn check_literal(s: &str) -> Result<(), String> {
    if s.contains("}}") || !s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err("literal text must be printable ASCII without stray braces".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRODUCT_EXAMPLE: &str = r#"
services:
  - name: stripe                  # [a-z0-9][a-z0-9-]{2,63}, unique in the vault
    host: api.stripe.com          # see "Host matchers"
    auth: {type: bearer, token: STRIPE_KEY}
  - name: jira
    host: "*.atlassian.net"
    auth: {type: basic, username: JIRA_EMAIL, password: JIRA_TOKEN}
  - name: anthropic
    host: api.anthropic.com
    auth: {type: api-key, key: ANTHROPIC_API_KEY, header: x-api-key, prefix: ""}
  - name: acme
    host: api.acme.internal:8443/v2/*
    auth: {type: custom, headers: {X-Api-Key: "{{ ACME_KEY }}", X-Tenant: "{{ ACME_TENANT }}"}}
    substitutions:
      - {key: ACME_ACCOUNT, placeholder: __acme_account__, in: [path, query]}
  - name: telemetry
    host: http://metrics.example.internal:8080
    auth: {type: passthrough}
    enabled: false
"#;

    #[test]
    fn product_example_parses_and_validates() {
        let file = ServiceFile::from_yaml(PRODUCT_EXAMPLE).unwrap();
        assert_eq!(file.services.len(), 5);
        check_unique_matchers(&file.services).unwrap();
        assert!(!file.services[4].enabled);
        assert!(file.services[0].enabled);
        let acme: Vec<_> = file.services[3].credential_keys().into_iter().collect();
        assert_eq!(acme, ["ACME_ACCOUNT", "ACME_KEY", "ACME_TENANT"]);
    }

    #[test]
    fn unknown_fields_rejected() {
        let y = "services:\n  - name: abc\n    host: a.example.com\n    auth: {type: bearer, token: K}\n    colour: red\n";
        let e = ServiceFile::from_yaml(y).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        let y = "services:\n  - name: abc\n    host: a.example.com\n    auth: {type: bearer, token: K, extra: 1}\n";
        assert!(ServiceFile::from_yaml(y).is_err());
        let y = "services:\n  - name: abc\n    host: a.example.com\n    auth: {type: magic}\n";
        assert!(ServiceFile::from_yaml(y).is_err());
    }

    fn spec(auth: AuthSpec) -> ServiceSpec {
        ServiceSpec {
            name: "svc".into(),
            host: "a.example.com".into(),
            auth,
            substitutions: vec![],
            enabled: true,
            rules: vec![],
            rules_default: None,
        }
    }

    #[test]
    fn field_errors_name_the_field() {
        let e = spec(AuthSpec::Bearer {
            token: "lower".into(),
        })
        .validate()
        .unwrap_err();
        assert!(
            e.to_string().starts_with("service \"svc\": auth.token:"),
            "{e}"
        );
        let e = spec(AuthSpec::ApiKey {
            key: "K".into(),
            header: "Host".into(),
            prefix: String::new(),
        })
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("auth.header"), "{e}");
        let e = spec(AuthSpec::Custom {
            headers: [("X-A".into(), "no template".into())].into(),
        })
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("names no credential"), "{e}");
        let mut s = spec(AuthSpec::Passthrough);
        s.substitutions.push(Substitution {
            key: "K".into(),
            placeholder: "__k_k__".into(),
            surfaces: vec![Surface::Path],
        });
        assert!(s.validate().is_err());
        // Body substitution: declared like the others; never on a service that signs the body.
        let mut s = spec(AuthSpec::Bearer { token: "K".into() });
        s.substitutions.push(Substitution {
            key: "K".into(),
            placeholder: "__k_k__".into(),
            surfaces: vec![Surface::Body, Surface::Header],
        });
        s.validate().unwrap();
        s.auth = AuthSpec::AwsSigv4 {
            access_key_id: "A".into(),
            secret_access_key: "S".into(),
            session_token: None,
            region: Some("us-east-1".into()),
            service: Some("sqs".into()),
        };
        s.host = "sqs.us-east-1.amazonaws.com".into();
        let e = s.validate().unwrap_err();
        assert!(e.to_string().contains("no body substitution"), "{e}");
    }

    #[test]
    fn duplicate_matchers_refused() {
        let mut a = spec(AuthSpec::Bearer { token: "K".into() });
        let mut b = a.clone();
        b.name = "other".into();
        b.host = "A.example.com:443".into();
        let e = check_unique_matchers(&[a.clone(), b.clone()]).unwrap_err();
        assert!(matches!(e, SpecError::DuplicateMatcher { .. }), "{e}");
        a.host = "a.example.com/v1/*".into();
        check_unique_matchers(&[a, b]).unwrap();
    }

    #[test]
    fn aws_scopes_from_hosts() {
        let scope = |h: &str| aws_scope(h).map(|(r, s)| format!("{r}/{s}"));
        assert_eq!(scope("s3.us-west-2.amazonaws.com").unwrap(), "us-west-2/s3");
        assert_eq!(
            scope("*.s3.eu-west-1.amazonaws.com").unwrap(),
            "eu-west-1/s3"
        );
        assert_eq!(
            scope("s3.dualstack.eu-west-1.amazonaws.com").unwrap(),
            "eu-west-1/s3"
        );
        assert_eq!(scope("s3.amazonaws.com").unwrap(), "us-east-1/s3");
        assert_eq!(
            scope("bedrock-runtime.us-east-1.amazonaws.com/model/*").unwrap(),
            "us-east-1/bedrock"
        );
        assert_eq!(
            scope("dynamodb.us-gov-west-1.amazonaws.com:443").unwrap(),
            "us-gov-west-1/dynamodb"
        );
        assert_eq!(scope("api.example.com"), None);
        assert_eq!(scope("*.us-east-1.amazonaws.com"), None);
        assert_eq!(scope("amazonaws.com.evil.example"), None);

        let mut s = spec(AuthSpec::AwsSigv4 {
            access_key_id: "AWS_KEY_ID".into(),
            secret_access_key: "AWS_SECRET".into(),
            session_token: None,
            region: None,
            service: None,
        });
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("auth.region and auth.service"), "{e}");
        if let AuthSpec::AwsSigv4 {
            region, service, ..
        } = &mut s.auth
        {
            *region = Some("eu-north-1".into());
            *service = Some("execute-api".into());
        }
        s.validate().unwrap();
        assert_eq!(
            s.aws_scope().unwrap(),
            ("eu-north-1".to_owned(), "execute-api".to_owned())
        );
        let keys: Vec<_> = s.credential_keys().into_iter().collect();
        assert_eq!(keys, ["AWS_KEY_ID", "AWS_SECRET"]);
        let y = "services:\n  - name: aws-s3\n    host: s3.us-east-1.amazonaws.com\n    auth: {type: aws-sigv4, access_key_id: A, secret_access_key: B, session_token: C}\n";
        let f = ServiceFile::from_yaml(y).unwrap();
        f.services[0].validate().unwrap();
        assert_eq!(f.services[0].auth_type(), "aws-sigv4");
    }

    #[test]
    fn templates() {
        assert_eq!(
            template_keys("Bearer {{ A }} and {{B_2}}").unwrap(),
            ["A", "B_2"]
        );
        assert!(template_keys("{{ A ").is_err());
        assert!(template_keys("{{ a }}").is_err());
        assert!(template_keys("x\r\n{{ A }}").is_err());
    }
}
