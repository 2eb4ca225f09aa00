//! The service catalog: built-in templates for the providers agents use most, each with its
//! host, how it authenticates, the header its official SDK sends, and the credential key(s) it
//! needs. A template turns into an ordinary [`ServiceSpec`] (`airlock service add --template`,
//! the admin UI, a proposal's `{"template": NAME}`), so everything after that (validation,
//! review, matching) is what it is for any service. Agents read the list at `/v1/catalog`.
//!
//! This module holds data and the expansion; it reads and writes nothing.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::spec::{AuthSpec, ServiceSpec};

/// How a template authenticates; the credential keys are filled in at expansion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    Bearer,
    /// One header carrying `prefix` + the key.
    Header {
        name: &'static str,
        prefix: &'static str,
    },
    /// Several headers, one key each.
    Headers(&'static [&'static str]),
    /// AWS Signature Version 4 with an access key id and a secret access key; the region and
    /// service come from the host.
    AwsSigv4,
}

/// One provider.
#[derive(Clone, Copy, Debug)]
pub struct Template {
    pub name: &'static str,
    pub title: &'static str,
    /// A host matcher (`host[/path*]`).
    pub host: &'static str,
    pub auth: Auth,
    /// Default credential key names, one per key the auth needs.
    pub keys: &'static [&'static str],
    /// What the official SDK or CLI sends, for whoever configures the agent.
    pub sdk: &'static str,
    /// Where an operator gets the key.
    pub obtain: &'static str,
}

/// The built-in templates, by name.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "bedrock",
        title: "Amazon Bedrock runtime (us-east-1; another region: the same service with its host)",
        host: "bedrock-runtime.us-east-1.amazonaws.com",
        auth: Auth::AwsSigv4,
        keys: &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        sdk: "AWS SigV4 signed by the SDK with any dummy keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY); airlock re-signs",
        obtain: "https://console.aws.amazon.com/iam/home#/users (an access key of a user or role allowed bedrock:InvokeModel*)",
    },
    Template {
        name: "vertex",
        title: "Google Vertex AI (global endpoint; a region: the same service with REGION-aiplatform.googleapis.com)",
        host: "aiplatform.googleapis.com",
        auth: Auth::Bearer,
        keys: &["GOOGLE_SERVICE_ACCOUNT"],
        sdk: "Authorization: Bearer with an access token; import the service account's JSON key with `airlock credential oauth GOOGLE_SERVICE_ACCOUNT --from key.json` and airlock mints the tokens",
        obtain: "https://console.cloud.google.com/iam-admin/serviceaccounts (Keys, Add key, JSON; a role such as Vertex AI User)",
    },
    Template {
        name: "aws-s3",
        title: "Amazon S3 (us-east-1, path-style; another region: the same service with its host)",
        host: "s3.us-east-1.amazonaws.com",
        auth: Auth::AwsSigv4,
        keys: &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        sdk: "AWS SigV4 signed by the SDK with any dummy keys; configure path-style addressing (or add a *.s3.REGION.amazonaws.com service for virtual-hosted buckets)",
        obtain: "https://console.aws.amazon.com/iam/home#/users (an access key allowed the bucket's s3:* actions)",
    },
    Template {
        name: "anthropic",
        title: "Anthropic API",
        host: "api.anthropic.com",
        auth: Auth::Header {
            name: "x-api-key",
            prefix: "",
        },
        keys: &["ANTHROPIC_API_KEY"],
        sdk: "x-api-key with an API key (ANTHROPIC_API_KEY); Authorization: Bearer with an auth token (ANTHROPIC_AUTH_TOKEN); either is replaced",
        obtain: "https://console.anthropic.com/settings/keys",
    },
    Template {
        name: "openai",
        title: "OpenAI API",
        host: "api.openai.com",
        auth: Auth::Bearer,
        keys: &["OPENAI_API_KEY"],
        sdk: "Authorization: Bearer (OPENAI_API_KEY)",
        obtain: "https://platform.openai.com/api-keys",
    },
    Template {
        name: "openrouter",
        title: "OpenRouter",
        host: "openrouter.ai/api/*",
        auth: Auth::Bearer,
        keys: &["OPENROUTER_API_KEY"],
        sdk: "Authorization: Bearer (OPENROUTER_API_KEY)",
        obtain: "https://openrouter.ai/settings/keys",
    },
    Template {
        name: "gemini",
        title: "Google Gemini API",
        host: "generativelanguage.googleapis.com",
        auth: Auth::Header {
            name: "x-goog-api-key",
            prefix: "",
        },
        keys: &["GEMINI_API_KEY"],
        sdk: "x-goog-api-key (GEMINI_API_KEY or GOOGLE_API_KEY)",
        obtain: "https://aistudio.google.com/apikey",
    },
    Template {
        name: "mistral",
        title: "Mistral AI",
        host: "api.mistral.ai",
        auth: Auth::Bearer,
        keys: &["MISTRAL_API_KEY"],
        sdk: "Authorization: Bearer (MISTRAL_API_KEY)",
        obtain: "https://console.mistral.ai/api-keys",
    },
    Template {
        name: "groq",
        title: "Groq",
        host: "api.groq.com",
        auth: Auth::Bearer,
        keys: &["GROQ_API_KEY"],
        sdk: "Authorization: Bearer (GROQ_API_KEY)",
        obtain: "https://console.groq.com/keys",
    },
    Template {
        name: "deepseek",
        title: "DeepSeek",
        host: "api.deepseek.com",
        auth: Auth::Bearer,
        keys: &["DEEPSEEK_API_KEY"],
        sdk: "Authorization: Bearer (DEEPSEEK_API_KEY)",
        obtain: "https://platform.deepseek.com/api_keys",
    },
    Template {
        name: "xai",
        title: "xAI (Grok)",
        host: "api.x.ai",
        auth: Auth::Bearer,
        keys: &["XAI_API_KEY"],
        sdk: "Authorization: Bearer (XAI_API_KEY)",
        obtain: "https://console.x.ai",
    },
    Template {
        name: "github",
        title: "GitHub REST and GraphQL API",
        host: "api.github.com",
        auth: Auth::Bearer,
        keys: &["GITHUB_TOKEN"],
        sdk: "Authorization: Bearer (gh, Octokit: GITHUB_TOKEN or GH_TOKEN)",
        obtain: "https://github.com/settings/personal-access-tokens",
    },
    Template {
        name: "gitlab",
        title: "GitLab API",
        host: "gitlab.com/api/*",
        auth: Auth::Header {
            name: "PRIVATE-TOKEN",
            prefix: "",
        },
        keys: &["GITLAB_TOKEN"],
        sdk: "PRIVATE-TOKEN (glab, python-gitlab: GITLAB_TOKEN)",
        obtain: "https://gitlab.com/-/user_settings/personal_access_tokens",
    },
    Template {
        name: "slack",
        title: "Slack Web API",
        host: "slack.com/api/*",
        auth: Auth::Bearer,
        keys: &["SLACK_BOT_TOKEN"],
        sdk: "Authorization: Bearer (a bot token, xoxb-...)",
        obtain: "https://api.slack.com/apps",
    },
    Template {
        name: "stripe",
        title: "Stripe API",
        host: "api.stripe.com",
        auth: Auth::Bearer,
        keys: &["STRIPE_SECRET_KEY"],
        sdk: "Authorization: Bearer (a secret or restricted key, sk_... or rk_...)",
        obtain: "https://dashboard.stripe.com/apikeys",
    },
    Template {
        name: "linear",
        title: "Linear API",
        host: "api.linear.app",
        auth: Auth::Header {
            name: "Authorization",
            prefix: "",
        },
        keys: &["LINEAR_API_KEY"],
        sdk: "Authorization: <personal API key> (no scheme word)",
        obtain: "https://linear.app/settings/account/security",
    },
    Template {
        name: "notion",
        title: "Notion API",
        host: "api.notion.com",
        auth: Auth::Bearer,
        keys: &["NOTION_TOKEN"],
        sdk: "Authorization: Bearer (an integration secret, ntn_...)",
        obtain: "https://www.notion.so/profile/integrations",
    },
    Template {
        name: "sentry",
        title: "Sentry API",
        host: "sentry.io/api/*",
        auth: Auth::Bearer,
        keys: &["SENTRY_AUTH_TOKEN"],
        sdk: "Authorization: Bearer (sentry-cli: SENTRY_AUTH_TOKEN)",
        obtain: "https://sentry.io/settings/account/api/auth-tokens/",
    },
    Template {
        name: "datadog",
        title: "Datadog API (US1)",
        host: "api.datadoghq.com",
        auth: Auth::Headers(&["DD-API-KEY", "DD-APPLICATION-KEY"]),
        keys: &["DD_API_KEY", "DD_APP_KEY"],
        sdk: "DD-API-KEY and DD-APPLICATION-KEY",
        obtain: "https://app.datadoghq.com/organization-settings/api-keys",
    },
    Template {
        name: "cloudflare",
        title: "Cloudflare API",
        host: "api.cloudflare.com",
        auth: Auth::Bearer,
        keys: &["CLOUDFLARE_API_TOKEN"],
        sdk: "Authorization: Bearer (wrangler: CLOUDFLARE_API_TOKEN)",
        obtain: "https://dash.cloudflare.com/profile/api-tokens",
    },
    Template {
        name: "npm",
        title: "npm registry",
        host: "registry.npmjs.org",
        auth: Auth::Bearer,
        keys: &["NPM_TOKEN"],
        sdk: "Authorization: Bearer (npm: _authToken in .npmrc)",
        obtain: "https://www.npmjs.com/settings/~/tokens",
    },
];

/// Why a template could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("no template {0:?} in the catalog (see `airlock service catalog`)")]
    Unknown(String),
    #[error("template {name:?} takes {want} credential key(s) ({keys}); {got} given")]
    Keys {
        name: &'static str,
        want: usize,
        got: usize,
        keys: String,
    },
}

/// The template called `name`.
pub fn find(name: &str) -> Result<&'static Template, CatalogError> {
    TEMPLATES
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| CatalogError::Unknown(name.to_owned()))
}

/// A service definition to start from for `host`, a host agents tried (`airlock logs --hosts`,
/// the admin UI's Hosts tried page): the catalog's template when one serves exactly that host
/// (so Anthropic gets its `x-api-key` header, not a bearer), else a bearer credential with a name
/// and key made from the host, to edit. YAML, as `airlock service set -f` and the admin UI's
/// service form read it.
pub fn draft(host: &str) -> String {
    let template = TEMPLATES
        .iter()
        .find(|t| t.host == host)
        .and_then(|t| t.service(None, &[]).ok());
    let spec = template.unwrap_or_else(|| {
        let name: String = host
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(60)
            .collect();
        ServiceSpec {
            name,
            host: host.to_owned(),
            auth: AuthSpec::Bearer {
                token: "KEY".to_owned(),
            },
            substitutions: Vec::new(),
            enabled: true,
            rules: vec![],
            rules_default: None,
        }
    });
    let file = crate::spec::ServiceFile {
        services: vec![spec],
    };
    serde_saphyr::to_string(&file).unwrap_or_default()
}

impl Template {
    /// The service for this template, named `service` (the template's name when `None`), with
    /// `keys` as its credential keys in the template's order (its defaults when empty).
    pub fn service(
        &self,
        service: Option<&str>,
        keys: &[String],
    ) -> Result<ServiceSpec, CatalogError> {
        let keys: Vec<String> = if keys.is_empty() {
            self.keys.iter().map(|k| (*k).to_owned()).collect()
        } else {
            keys.to_vec()
        };
        if keys.len() != self.keys.len() {
            return Err(CatalogError::Keys {
                name: self.name,
                want: self.keys.len(),
                got: keys.len(),
                keys: self.keys.join(", "),
            });
        }
        let auth = match self.auth {
            Auth::Bearer => AuthSpec::Bearer {
                token: keys[0].clone(),
            },
            Auth::Header { name, prefix } => AuthSpec::ApiKey {
                key: keys[0].clone(),
                header: name.to_owned(),
                prefix: prefix.to_owned(),
            },
            Auth::Headers(names) => AuthSpec::Custom {
                headers: names
                    .iter()
                    .zip(&keys)
                    .map(|(n, k)| ((*n).to_owned(), format!("{{{{ {k} }}}}")))
                    .collect::<BTreeMap<_, _>>(),
            },
            Auth::AwsSigv4 => AuthSpec::AwsSigv4 {
                access_key_id: keys[0].clone(),
                secret_access_key: keys[1].clone(),
                session_token: None,
                region: None,
                service: None,
            },
        };
        Ok(ServiceSpec {
            name: service.unwrap_or(self.name).to_owned(),
            host: self.host.to_owned(),
            auth,
            substitutions: Vec::new(),
            enabled: true,
            rules: vec![],
            rules_default: None,
        })
    }

    /// The catalog entry as agents and the admin UI read it.
    pub fn describe(&self) -> CatalogEntry {
        CatalogEntry {
            template: self.name,
            title: self.title,
            host: self.host,
            auth: self
                .service(None, &[])
                .map_or_else(|_| String::new(), |s| s.auth_type().to_owned()),
            credentials: self.keys,
            sdk_sends: self.sdk,
            obtain: self.obtain,
        }
    }
}

/// The wire form of a template (`GET /v1/catalog`).
#[derive(Debug, Serialize)]
pub struct CatalogEntry {
    pub template: &'static str,
    pub title: &'static str,
    pub host: &'static str,
    pub auth: String,
    pub credentials: &'static [&'static str],
    pub sdk_sends: &'static str,
    pub obtain: &'static str,
}

#[cfg(test)]
mod tests {
    /// A draft for a catalog host is the template's service (its header, its key names); any
    /// other host gets a bearer draft named after it. Both read back as a service file.
    #[test]
    fn drafts_use_the_catalog_when_it_has_the_host() {
        let anthropic = draft("api.anthropic.com");
        let parsed: crate::spec::ServiceFile = serde_saphyr::from_str(&anthropic).unwrap();
        let spec = &parsed.services[0];
        assert_eq!(
            (spec.name.as_str(), spec.host.as_str()),
            ("anthropic", "api.anthropic.com")
        );
        assert!(
            matches!(&spec.auth, AuthSpec::ApiKey { header, key, .. } if header == "x-api-key" && key == "ANTHROPIC_API_KEY"),
            "{anthropic}"
        );
        let other = draft("api.newvendor.example");
        let parsed: crate::spec::ServiceFile = serde_saphyr::from_str(&other).unwrap();
        let spec = &parsed.services[0];
        assert_eq!(spec.name, "api-newvendor-example");
        assert!(
            matches!(&spec.auth, AuthSpec::Bearer { token } if token == "KEY"),
            "{other}"
        );
    }

    use super::*;

    /// Every template expands to a service that passes validation, under its own name and keys.
    #[test]
    fn every_template_is_a_valid_service() {
        let mut names = std::collections::BTreeSet::new();
        for t in TEMPLATES {
            assert!(names.insert(t.name), "{} twice", t.name);
            let s = t.service(None, &[]).unwrap();
            s.validate().unwrap_or_else(|e| panic!("{}: {e}", t.name));
            let keys: Vec<&str> = s.credential_keys().into_iter().collect();
            let mut want = t.keys.to_vec();
            want.sort_unstable();
            assert_eq!(keys, want, "{}", t.name);
            assert!(t.obtain.starts_with("https://"), "{}", t.name);
        }
        assert!(TEMPLATES.len() >= 21);
    }

    #[test]
    fn keys_and_names_can_be_chosen() {
        let s = find("anthropic")
            .unwrap()
            .service(Some("claude"), &["MY_KEY".into()])
            .unwrap();
        assert_eq!(s.name, "claude");
        assert_eq!(
            s.describe(),
            "api.anthropic.com · api-key · x-api-key: <MY_KEY>"
        );
        let dd = find("datadog").unwrap();
        assert_eq!(
            dd.service(None, &["A".into()]).unwrap_err(),
            CatalogError::Keys {
                name: "datadog",
                want: 2,
                got: 1,
                keys: "DD_API_KEY, DD_APP_KEY".into()
            }
        );
        assert_eq!(
            find("nope").unwrap_err(),
            CatalogError::Unknown("nope".into())
        );
    }
}
