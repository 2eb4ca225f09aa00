//! `airlock operator add|list|remove|passwd`: the people who log in to the admin UI.
//! Passwords come from stdin, or a prompt on a terminal; never from arguments.

use std::io::IsTerminal;

use serde_json::json;

use super::ctx::read_stdin_value;
use super::output::{self, rfc3339};
use super::{CliError, Ctx, OperatorCmd};
use crate::secret::Secret;

pub(super) fn run(ctx: &Ctx, cmd: OperatorCmd) -> Result<(), CliError> {
    let store = ctx.open_store()?;
    match cmd {
        OperatorCmd::Add { name } => {
            let password = password(&name)?;
            store.add_operator(&ctx.actor, &name, &password)?;
            say!("added operator {name}")?;
        }
        OperatorCmd::Passwd { name } => {
            let password = password(&name)?;
            store.set_operator_password(&ctx.actor, &name, &password)?;
            say!("changed the password of operator {name}")?;
        }
        OperatorCmd::Remove { name } => {
            store.remove_operator(&ctx.actor, &name)?;
            say!("removed operator {name}")?;
        }
        OperatorCmd::List { json } => {
            let list = store.operators()?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|o| json!({"name": o.name, "created_at": rfc3339(o.created_at)}))
                    .collect();
                output::json(&json!(v))?;
            } else {
                let rows: Vec<_> = list
                    .iter()
                    .map(|o| vec![o.name.clone(), rfc3339(o.created_at)])
                    .collect();
                output::table(&["NAME", "CREATED"], &rows);
            }
        }
    }
    Ok(())
}

fn password(name: &str) -> Result<Secret, CliError> {
    if !std::io::stdin().is_terminal() {
        return read_stdin_value("password");
    }
    let first = rpassword::prompt_password(format!("password for {name}: ")).map_err(|source| {
        CliError::Io {
            what: "prompt".into(),
            source,
        }
    })?;
    let again = rpassword::prompt_password("again: ").map_err(|source| CliError::Io {
        what: "prompt".into(),
        source,
    })?;
    if first != again {
        return Err(CliError::Usage("the passwords differ".into()));
    }
    Ok(Secret::new(first.into_bytes()))
}
