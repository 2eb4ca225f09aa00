//! `airlock service ...` and `airlock credential ...`.

use std::io::Read;

use serde_json::json;

use super::ctx::read_stdin_value;
use super::output::{self, rfc3339};
use super::{CliError, CredentialCmd, Ctx, ServiceCmd};
use crate::spec::ServiceFile;

pub fn run(ctx: &Ctx, cmd: ServiceCmd) -> Result<(), CliError> {
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
            println!("vault {vault}: service {service}: {summary}");
        }
        ServiceCmd::Set {
            vault,
            file,
            replace,
        } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|source| CliError::Io {
                        what: "stdin".into(),
                        source,
                    })?;
                s
            } else {
                std::fs::read_to_string(&file).map_err(|source| CliError::Io {
                    what: file.display().to_string(),
                    source,
                })?
            };
            let parsed = ServiceFile::from_yaml(&text)
                .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
            let change = store.set_services(&ctx.actor, &vault, parsed.services, replace)?;
            println!(
                "vault {vault}: {} added, {} updated, {} removed",
                change.added.len(),
                change.updated.len(),
                change.removed.len()
            );
        }
        ServiceCmd::Remove { vault, name } => {
            store.remove_service(&ctx.actor, &vault, &name)?;
            println!("removed service {name} from vault {vault}");
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

pub fn credential(ctx: &Ctx, cmd: CredentialCmd) -> Result<(), CliError> {
    let store = ctx.open_store()?;
    match cmd {
        CredentialCmd::Set { vault, key } => {
            crate::names::credential_key(&key).map_err(|e| CliError::Usage(e.to_string()))?;
            let value = read_stdin_value(&key)?;
            let created = store.set_credential(&ctx.actor, &vault, &key, &value)?;
            println!(
                "{} credential {key} in vault {vault}",
                if created { "stored" } else { "replaced" }
            );
        }
        CredentialCmd::Delete { vault, key } => {
            store.delete_credential(&ctx.actor, &vault, &key)?;
            println!("deleted credential {key} from vault {vault}");
        }
        CredentialCmd::List { vault, json } => {
            let creds = store.credentials(&vault)?;
            if json {
                let list: Vec<_> = creds
                    .iter()
                    .map(|(k, r)| json!({"key": k, "created_at": rfc3339(r.created_at), "updated_at": rfc3339(r.updated_at)}))
                    .collect();
                output::json(&json!(list))?;
            } else {
                let rows: Vec<_> = creds
                    .iter()
                    .map(|(k, r)| vec![k.clone(), rfc3339(r.created_at), rfc3339(r.updated_at)])
                    .collect();
                output::table(&["KEY", "CREATED", "UPDATED"], &rows);
            }
        }
    }
    Ok(())
}
