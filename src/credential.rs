//! A service's credential as one thing: compiled from its `auth` with the keys opened
//! ([`Credential::compile`]), and asked by the request path at each step what it does there:
//! which of the agent's headers it replaces and which it adds when the head is shaped
//! ([`Credential::replaces`], [`Credential::headers`]), whether the request is signed before it
//! is sent ([`Credential::sigv4`], carried out by `proxy::sigv4`), and whether an upstream 401 may
//! renew it and send the request again ([`Credential::oauth`], by the OAuth refresher). Where
//! placeholders are substituted is the service's, not the credential's (`policy::Substitution`).
//!
//! It holds secrets ([`Secret`]s, zeroized on drop, never in a log or a `Debug` line) and does
//! no I/O.

use crate::secret::Secret;
use crate::spec::{AuthSpec, template_keys};

/// How a service authenticates upstream.
#[derive(Debug)]
pub enum Credential {
    /// `passthrough`: nothing injected; the agent's own headers go through.
    Passthrough,
    /// Headers set on every request (`bearer`, `basic`, `api-key`, `custom`), lowercase names,
    /// replacing any the agent sent; `oauth` when one carries an OAuth access token that the
    /// refresher keeps fresh.
    Headers {
        headers: Vec<(String, Secret)>,
        oauth: Option<OAuthUse>,
    },
    /// AWS Signature Version 4: each request signed as it leaves.
    SigV4(Box<SigV4Keys>),
}

/// A compiled `aws-sigv4` service's keys and scope.
#[derive(Debug)]
pub struct SigV4Keys {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    pub region: String,
    pub service: String,
}

/// A token younger than this many seconds is not renewed because an upstream answered 401 (the
/// 401 goes to the agent): an API that refuses for another reason (a missing scope) must not
/// make every request renew the token.
pub const MIN_AGE_TO_RENEW_ON_401: u64 = 5;

/// Which version of an OAuth credential a compiled service holds: a 401 from upstream asks the
/// refresher for a newer one (`crate::oauth`).
#[derive(Clone, Debug)]
pub struct OAuthUse {
    pub key: String,
    pub version: u64,
    /// Unix seconds; 0 when unknown (1 when only a refresh token was imported).
    pub expires_at: u64,
    /// When the token was obtained or imported (Unix seconds).
    pub obtained_at: u64,
}

impl OAuthUse {
    /// Whether a request must wait for a refresh before it can be sent.
    pub fn stale(&self, now: u64) -> bool {
        self.expires_at != 0 && now >= self.expires_at
    }

    /// Whether an upstream 401 may renew this token ([`MIN_AGE_TO_RENEW_ON_401`]).
    pub fn renewable_on_401(&self, now: u64) -> bool {
        now >= self.obtained_at + MIN_AGE_TO_RENEW_ON_401
    }
}

/// The headers of an AWS SigV4 signature besides `Authorization`: the agent's are dropped and
/// airlock's set when it signs.
pub fn is_signature_header(name: &str) -> bool {
    ["x-amz-date", "x-amz-security-token", "x-amz-content-sha256"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

impl Credential {
    /// `auth` compiled with each key opened by `open`; `scope` is an `aws-sigv4` service's
    /// region and service. `None` for an `aws-sigv4` service without a scope.
    pub fn compile(
        auth: &AuthSpec,
        scope: Option<(String, String)>,
        open: &mut impl FnMut(&str) -> Secret,
    ) -> Option<Self> {
        let join = |parts: &[&[u8]]| Secret::new(parts.concat());
        let header = |name: &str, value| Self::Headers {
            headers: vec![(name.to_owned(), value)],
            oauth: None,
        };
        Some(match auth {
            AuthSpec::Passthrough => Self::Passthrough,
            AuthSpec::Bearer { token } => {
                header("authorization", join(&[b"Bearer ", open(token).expose()]))
            }
            AuthSpec::Basic { username, password } => {
                let user = open(username);
                let pass = open(password);
                let pair = join(&[user.expose(), b":", pass.expose()]);
                let encoded = data_encoding::BASE64.encode(pair.expose());
                header(
                    "authorization",
                    Secret::new(format!("Basic {encoded}").into_bytes()),
                )
            }
            AuthSpec::ApiKey {
                key,
                header: name,
                prefix,
            } => header(
                &name.to_ascii_lowercase(),
                join(&[prefix.as_bytes(), open(key).expose()]),
            ),
            AuthSpec::Custom { headers } => Self::Headers {
                headers: headers
                    .iter()
                    .map(|(name, template)| (name.to_ascii_lowercase(), expand(template, open)))
                    .collect(),
                oauth: None,
            },
            AuthSpec::AwsSigv4 {
                access_key_id,
                secret_access_key,
                session_token,
                ..
            } => {
                let (region, service) = scope?;
                Self::SigV4(Box::new(SigV4Keys {
                    access_key_id: open(access_key_id),
                    secret_access_key: open(secret_access_key),
                    session_token: session_token.as_deref().map(&mut *open),
                    region,
                    service,
                }))
            }
        })
    }

    /// The same credential, renewed by the refresher when `oauth` is set (headers only).
    pub fn with_oauth(self, oauth: Option<OAuthUse>) -> Self {
        match self {
            Self::Headers { headers, .. } => Self::Headers { headers, oauth },
            other => other,
        }
    }

    /// Whether requests carry a credential: the agent's `Authorization` is dropped, bodies come
    /// back uncompressed (for the scrubber), and the request log must be writable.
    pub fn credentialed(&self) -> bool {
        !matches!(self, Self::Passthrough)
    }

    /// Whether the agent's header `name` is dropped for this credential's own.
    pub fn replaces(&self, name: &str) -> bool {
        match self {
            Self::Passthrough => false,
            Self::Headers { headers, .. } => {
                headers.iter().any(|(n, _)| name.eq_ignore_ascii_case(n))
            }
            Self::SigV4(_) => is_signature_header(name),
        }
    }

    /// The headers added to every request.
    pub fn headers(&self) -> &[(String, Secret)] {
        match self {
            Self::Headers { headers, .. } => headers,
            Self::Passthrough | Self::SigV4(_) => &[],
        }
    }

    /// The OAuth credential an upstream 401 may renew.
    pub fn oauth(&self) -> Option<&OAuthUse> {
        match self {
            Self::Headers { oauth, .. } => oauth.as_ref(),
            Self::Passthrough | Self::SigV4(_) => None,
        }
    }

    /// The keys a request is signed with before it is sent.
    pub fn sigv4(&self) -> Option<&SigV4Keys> {
        match self {
            Self::SigV4(keys) => Some(keys),
            Self::Passthrough | Self::Headers { .. } => None,
        }
    }

    /// What responses are masked of beyond the opened keys: each header value, and the value
    /// without its scheme word (the bare base64 of Basic auth).
    pub fn scrub_values(&self) -> Vec<Secret> {
        let mut out = Vec::new();
        for (_, value) in self.headers() {
            out.push(value.clone());
            if let Some(at) = memchr::memchr(b' ', value.expose()) {
                out.push(Secret::new(value.expose()[at + 1..].to_vec()));
            }
        }
        out
    }
}

/// Replaces each `{{ KEY }}` in a validated template with the opened credential.
fn expand(template: &str, open: &mut impl FnMut(&str) -> Secret) -> Secret {
    let keys = template_keys(template).unwrap_or_default();
    let mut out = Vec::with_capacity(template.len() + 64);
    let mut rest = template;
    for key in keys {
        let (Some(start), Some(end)) = (rest.find("{{"), rest.find("}}")) else {
            break;
        };
        out.extend_from_slice(&rest.as_bytes()[..start]);
        out.extend_from_slice(open(key).expose());
        rest = &rest[end + 2..];
    }
    out.extend_from_slice(rest.as_bytes());
    Secret::new(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(auth: AuthSpec) -> Credential {
        let mut open = |k: &str| Secret::new(format!("v-{k}").into_bytes());
        Credential::compile(&auth, Some(("us-east-1".into(), "sqs".into())), &mut open).unwrap()
    }

    /// Each auth type's hooks: what it adds, what of the agent's it replaces, whether it signs or
    /// renews; no I/O, no vault.
    #[test]
    fn each_kind_answers_the_pipeline() {
        let bearer = compile(AuthSpec::Bearer { token: "T".into() });
        assert_eq!(bearer.headers()[0].1.expose(), b"Bearer v-T");
        assert!(bearer.replaces("Authorization") && !bearer.replaces("x-api-key"));
        assert!(bearer.credentialed() && bearer.sigv4().is_none() && bearer.oauth().is_none());
        let key = compile(AuthSpec::ApiKey {
            key: "K".into(),
            header: "X-Api-Key".into(),
            prefix: "Token ".into(),
        });
        assert_eq!(key.headers()[0].0, "x-api-key");
        assert_eq!(
            key.scrub_values()
                .iter()
                .map(|s| s.expose().to_vec())
                .collect::<Vec<_>>(),
            [b"Token v-K".to_vec(), b"v-K".to_vec()]
        );
        let custom = compile(AuthSpec::Custom {
            headers: [("X-Tenant".into(), "t-{{ K }}-x".into())].into(),
        });
        assert_eq!(custom.headers()[0].1.expose(), b"t-v-K-x");
        let aws = compile(AuthSpec::AwsSigv4 {
            access_key_id: "A".into(),
            secret_access_key: "S".into(),
            session_token: None,
            region: None,
            service: None,
        });
        assert!(aws.sigv4().is_some() && aws.headers().is_empty());
        assert!(aws.replaces("X-Amz-Security-Token") && aws.replaces("x-amz-content-sha256"));
        assert!(!aws.replaces("x-amz-meta-a") && !aws.replaces("content-type"));
        let none = compile(AuthSpec::Passthrough);
        assert!(!none.credentialed() && !none.replaces("authorization"));
        let oauth = bearer.with_oauth(Some(OAuthUse {
            key: "T".into(),
            version: 3,
            expires_at: 100,
            obtained_at: 10,
        }));
        let o = oauth.oauth().unwrap();
        assert!(o.stale(100) && !o.stale(99));
        assert!(!o.renewable_on_401(14) && o.renewable_on_401(15));
    }

    #[test]
    fn expand_templates() {
        let mut open = |k: &str| Secret::new(format!("<{k}>").into_bytes());
        assert_eq!(
            expand("Token {{ A }}-{{B}}!", &mut open).expose(),
            b"Token <A>-<B>!"
        );
    }
}
