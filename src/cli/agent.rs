//! `airlock agent ...` and `airlock token mint`.

use serde_json::json;

use super::output::{self, rfc3339};
use super::{AgentCmd, CliError, Ctx, TokenCmd};

pub(super) fn run(ctx: &Ctx, cmd: AgentCmd) -> Result<(), CliError> {
    let store = ctx.open_store()?;
    match cmd {
        AgentCmd::Create { name, vaults } => {
            let minted = store.create_agent(&ctx.actor, &name, &vaults)?;
            say!(
                "created agent {name} (vaults: {}); its token is shown once:",
                vaults.join(", ")
            )?;
            output::token_last_line(&minted.token)?;
        }
        AgentCmd::Rotate { name } => {
            let minted = store.rotate_agent(&ctx.actor, &name)?;
            say!(
                "rotated the token of agent {name}; the old one and the scoped tokens minted with it no longer work. New token:"
            )?;
            output::token_last_line(&minted.token)?;
        }
        AgentCmd::Revoke { name } => {
            store.revoke_agent(&ctx.actor, &name)?;
            say!("revoked agent {name} and its scoped tokens")?;
        }
        AgentCmd::List { json } => {
            let agents = store.agents()?;
            if json {
                let list: Vec<_> = agents
                    .iter()
                    .map(|a| json!({"name": a.name, "vaults": a.vaults, "created_at": rfc3339(a.created_at), "revoked": a.revoked}))
                    .collect();
                output::json(&json!(list))?;
            } else {
                let rows: Vec<_> = agents
                    .iter()
                    .map(|a| {
                        vec![
                            a.name.clone(),
                            a.vaults.join(","),
                            rfc3339(a.created_at),
                            if a.revoked { "revoked" } else { "active" }.into(),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "VAULTS", "CREATED", "STATUS"], &rows);
            }
        }
    }
    Ok(())
}

pub(super) fn token(ctx: &Ctx, cmd: TokenCmd) -> Result<(), CliError> {
    let TokenCmd::Mint { vault, ttl, agent } = cmd;
    let (minted, expires_at) =
        ctx.open_store()?
            .mint_token(&ctx.actor, &vault, ttl, agent.as_deref())?;
    say!(
        "scoped token for vault {vault}, expires {}:",
        rfc3339(expires_at)
    )?;
    output::token_last_line(&minted.token)
}
