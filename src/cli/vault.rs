//! `airlock vault ...` and `airlock audit list`.

use serde_json::json;

use super::output::{self, rfc3339};
use super::{AuditCmd, CliError, Ctx, VaultCmd};

pub(super) fn run(ctx: &Ctx, cmd: VaultCmd) -> Result<(), CliError> {
    let store = ctx.open_store()?;
    match cmd {
        VaultCmd::Create { name } => {
            store.create_vault(&ctx.actor, &name)?;
            say!("created vault {name}")?;
        }
        VaultCmd::Policy { name, policy } => {
            store.set_policy(&ctx.actor, &name, policy)?;
            say!(
                "vault {name}: unmatched hosts are now {}",
                policy_word(policy)
            )?;
        }
        VaultCmd::Allow { name, hosts } => {
            let list = store.set_allowlist(&ctx.actor, &name, &hosts, &[])?;
            say!("vault {name} allows: {}", list.join(", "))?;
        }
        VaultCmd::Disallow { name, hosts } => {
            let list = store.set_allowlist(&ctx.actor, &name, &[], &hosts)?;
            let list = if list.is_empty() {
                "nothing".to_owned()
            } else {
                list.join(", ")
            };
            say!("vault {name} allows: {list}")?;
        }
        VaultCmd::Export { name } => {
            let file = crate::vault::export::VaultFile::of(&store, &name)?;
            say!(
                "# airlock vault export {name}: services, rules, allowlist and agents; never a secret\n{}",
                file.to_yaml().trim_end()
            )?;
        }
        VaultCmd::List { json } => {
            let vaults = store.vaults()?;
            if json {
                let list: Vec<_> = vaults
                    .iter()
                    .map(|v| json!({"name": v.name, "policy": policy_word(v.policy), "allow": v.allow, "created_at": rfc3339(v.created_at)}))
                    .collect();
                output::json(&json!(list))?;
            } else {
                let rows: Vec<_> = vaults
                    .iter()
                    .map(|v| {
                        vec![
                            v.name.clone(),
                            policy_word(v.policy).into(),
                            v.allow.join(","),
                            rfc3339(v.created_at),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "POLICY", "ALLOW", "CREATED"], &rows);
            }
        }
    }
    Ok(())
}

fn policy_word(p: crate::vault::UnmatchedPolicy) -> &'static str {
    match p {
        crate::vault::UnmatchedPolicy::Deny => "deny",
        crate::vault::UnmatchedPolicy::Tunnel => "tunnel",
    }
}

pub(super) fn audit(ctx: &Ctx, cmd: AuditCmd) -> Result<(), CliError> {
    let AuditCmd::List { limit, json } = cmd;
    let records = ctx.open_store()?.audit_log(limit)?;
    if json {
        let list: Vec<_> = records
            .iter()
            .map(|r| json!({"id": r.id, "at": rfc3339(r.at), "actor": r.actor, "action": r.action, "target": r.target, "detail": r.detail}))
            .collect();
        output::json(&json!(list))?;
    } else {
        let rows: Vec<_> = records
            .iter()
            .map(|r| {
                vec![
                    rfc3339(r.at),
                    r.actor.clone(),
                    r.action.clone(),
                    r.target.clone(),
                    r.detail.clone(),
                ]
            })
            .collect();
        output::table(&["AT", "ACTOR", "ACTION", "TARGET", "DETAIL"], &rows);
    }
    Ok(())
}
