//! `airlock service ...` and `airlock credential ...`.

use std::io::Read;

use serde_json::json;

use super::ctx::read_stdin_value;
use super::output::{self, rfc3339};
use super::{CliError, CredentialCmd, Ctx, ServiceCmd};
use crate::spec::ServiceFile;
use crate::vault::Store;
use crate::vault::oauth::{Import, Settings};

pub(super) fn run(ctx: &Ctx, cmd: ServiceCmd) -> Result<(), CliError> {
    if let ServiceCmd::Catalog { json } = cmd {
        return catalog(json);
    }
    let store = ctx.open_store()?;
    match cmd {
        ServiceCmd::Catalog { .. } => {}
        ServiceCmd::Add {
            vault,
            template,
            name,
            credentials,
        } => {
            let spec = crate::catalog::find(&template)
                .and_then(|t| t.service(name.as_deref(), &credentials))
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let summary = spec.describe();
            let service = spec.name.clone();
            store.set_services(&ctx.actor, &vault, vec![spec], false)?;
            say!("vault {vault}: service {service}: {summary}")?;
        }
        ServiceCmd::Set {
            vault,
            file,
            replace,
        } => {
            let text = read_file_or_stdin(&file)?;
            let parsed = ServiceFile::from_yaml(&text)
                .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
            let change = store.set_services(&ctx.actor, &vault, parsed.services, replace)?;
            say!(
                "vault {vault}: {} added, {} updated, {} removed",
                change.added.len(),
                change.updated.len(),
                change.removed.len()
            )?;
        }
        ServiceCmd::Remove { vault, name } => {
            store.remove_service(&ctx.actor, &vault, &name)?;
            say!("removed service {name} from vault {vault}")?;
        }
        ServiceCmd::List { vault, json } => {
            let services = store.services(&vault)?;
            if json {
                let list: Vec<_> = services
                    .iter()
                    .map(|s| {
                        json!({"name": s.spec.name, "host": s.spec.host, "auth": s.spec.auth, "enabled": s.spec.enabled,
                               "substitutions": s.spec.substitutions, "updated_at": rfc3339(s.updated_at)})
                    })
                    .collect();
                output::json(&json!(list))?;
            } else {
                let rows: Vec<_> = services
                    .iter()
                    .map(|s| {
                        let keys: Vec<_> = s.spec.credential_keys().into_iter().collect();
                        vec![
                            s.spec.name.clone(),
                            s.spec.host.clone(),
                            s.spec.auth_type().into(),
                            keys.join(","),
                            if s.spec.enabled { "yes" } else { "no" }.into(),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "HOST", "AUTH", "CREDENTIALS", "ENABLED"], &rows);
            }
        }
    }
    Ok(())
}

/// The text of `file`, or of stdin for `-`.
fn read_file_or_stdin(file: &std::path::Path) -> Result<String, CliError> {
    if file.as_os_str() != "-" {
        return std::fs::read_to_string(file).map_err(|source| CliError::Io {
            what: file.display().to_string(),
            source,
        });
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|source| CliError::Io {
            what: "stdin".into(),
            source,
        })?;
    Ok(s)
}

/// `airlock service catalog`.
fn catalog(json: bool) -> Result<(), CliError> {
    let entries: Vec<_> = crate::catalog::TEMPLATES
        .iter()
        .map(|t| t.describe())
        .collect();
    if json {
        return output::json(&json!(entries));
    }
    let rows: Vec<_> = entries
        .iter()
        .map(|e| {
            vec![
                e.template.to_owned(),
                e.host.to_owned(),
                e.auth.clone(),
                e.credentials.join(","),
                e.sdk_sends.to_owned(),
            ]
        })
        .collect();
    output::table(
        &["TEMPLATE", "HOST", "AUTH", "CREDENTIALS", "THE SDK SENDS"],
        &rows,
    );
    Ok(())
}

pub(super) fn credential(ctx: &Ctx, cmd: CredentialCmd) -> Result<(), CliError> {
    let store = ctx.open_store()?;
    match cmd {
        CredentialCmd::Set { vault, key } => {
            crate::names::credential_key(&key).map_err(|e| CliError::Usage(e.to_string()))?;
            let value = read_stdin_value(&key)?;
            let created = store.set_credential(&ctx.actor, &vault, &key, &value)?;
            say!(
                "{} credential {key} in vault {vault}",
                if created { "stored" } else { "replaced" }
            )?;
        }
        CredentialCmd::Delete { vault, key } => {
            store.delete_credential(&ctx.actor, &vault, &key)?;
            say!("deleted credential {key} from vault {vault}")?;
        }
        CredentialCmd::List { vault, json } => list_credentials(&store, &vault, json)?,
        CredentialCmd::Oauth {
            vault,
            key,
            token_endpoint,
            client_id,
            scope,
            request,
            from,
            client_secret_file,
        } => {
            crate::names::credential_key(&key).map_err(|e| CliError::Usage(e.to_string()))?;
            let raw = match &from {
                Some(path) => read_small_file(path)?,
                None => super::ctx::read_stdin(MAX_TOKEN_FILE)?,
            };
            if raw.len() as u64 > MAX_TOKEN_FILE {
                return Err(CliError::Usage(
                    "the token file is larger than 64 KiB".into(),
                ));
            }
            let mut import = Import::parse(raw.expose()).map_err(CliError::Usage)?;
            if let Some(path) = &client_secret_file {
                let secret =
                    crate::secret::value_from_stdin(read_small_file(path)?.expose().to_vec())
                        .map_err(|e| CliError::Usage(format!("the client secret: {e}")))?;
                import.tokens.client_secret = Some(secret);
            }
            let preset = import.preset;
            let settings = Settings::resolve(&import, token_endpoint, client_id, scope, request)
                .map_err(CliError::Usage)?;
            let created =
                store.set_oauth_credential(&ctx.actor, &vault, &key, &settings, &import)?;
            let expiry = match import.expires_at {
                0 => "expiry unknown: renewed when the upstream answers 401".to_owned(),
                _ if import.tokens.access.is_empty() => {
                    "no access token yet: serve fetches one now".to_owned()
                }
                at => format!("access token expires {}", rfc3339(at)),
            };
            say!(
                "{} OAuth credential {key} in vault {vault} ({}token endpoint {}; {expiry})",
                if created { "stored" } else { "replaced" },
                preset.map_or(String::new(), |p| format!("{} login, ", p.program)),
                settings.token_endpoint,
            )?;
            eprintln!(
                "airlock: serve now renews these tokens; delete the agent's own copy of them so only airlock holds the refresh token"
            );
        }
    }
    Ok(())
}

/// `airlock credential list`: names, kinds and dates, and an OAuth credential's state; never a
/// value.
fn list_credentials(store: &Store, vault: &str, json: bool) -> Result<(), CliError> {
    let creds = store.credentials(vault)?;
    if json {
        let list: Vec<_> = creds
            .iter()
            .map(|(k, r)| {
                let mut v = json!({"key": k, "kind": kind(r), "created_at": rfc3339(r.created_at), "updated_at": rfc3339(r.updated_at)});
                if let Some(m) = &r.oauth {
                    v["oauth"] = json!({
                        "token_endpoint": m.token_endpoint,
                        "client_id": m.client_id,
                        "expires_at": (m.expires_at > 1).then(|| rfc3339(m.expires_at)),
                        "status": m.status(),
                        "failure": m.failure.as_ref().map(|f| json!({
                            "code": f.code.as_str(),
                            "detail": f.detail,
                            "at": rfc3339(f.at),
                            "attempts": f.attempts,
                        })),
                    });
                }
                v
            })
            .collect();
        output::json(&json!(list))?;
    } else {
        let rows: Vec<_> = creds
            .iter()
            .map(|(k, r)| {
                vec![
                    k.clone(),
                    kind(r).to_owned(),
                    rfc3339(r.created_at),
                    rfc3339(r.updated_at),
                    r.oauth.as_ref().map_or_else(String::new, |m| m.status()),
                ]
            })
            .collect();
        output::table(&["KEY", "KIND", "CREATED", "UPDATED", "STATUS"], &rows);
    }
    Ok(())
}

/// Largest token file read.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

fn read_small_file(path: &std::path::Path) -> Result<crate::secret::Secret, CliError> {
    let io = |source| CliError::Io {
        what: path.display().to_string(),
        source,
    };
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_TOKEN_FILE + 1)
        .read_to_end(&mut raw)
        .map_err(io)?;
    Ok(crate::secret::Secret::new(raw))
}

fn kind(r: &crate::vault::records::CredentialRecord) -> &'static str {
    if r.oauth.is_some() { "oauth" } else { "static" }
}
