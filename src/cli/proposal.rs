//! `airlock proposal list|show|approve|reject`: the operator's side of proposals on the CLI.
//! Agent-written text is printed with control and bidirectional-override characters escaped
//! (row 50), and credential values are read from stdin, never from arguments.

use serde_json::json;

use super::output::{self, rfc3339};
use super::{CliError, Ctx, ProposalCmd};
use crate::secret::{self, Secret};
use crate::text::inert;
use crate::vault::proposals::{Confirmed, review_json};
use crate::vault::records::{ProposalRecord, ProposalStatus, ServiceChange, SlotAction};
use crate::vault::review::{Review, ServiceDiff};

pub(super) fn run(ctx: &Ctx, cmd: ProposalCmd) -> Result<(), CliError> {
    let store = ctx.open_store()?;
    match cmd {
        ProposalCmd::List {
            vault,
            status,
            json,
        } => {
            let list = store.proposals(vault.as_deref(), status)?;
            let now = crate::vault::now();
            if json {
                let v = list
                    .iter()
                    .map(|p| review_json(&store, p))
                    .collect::<Result<Vec<_>, _>>()?;
                output::json(&json!(v))?;
            } else {
                let rows: Vec<_> = list
                    .iter()
                    .map(|p| {
                        vec![
                            p.id.to_string(),
                            format!("{:?}", p.status_at(now)).to_lowercase(),
                            p.vault.clone(),
                            p.agent.clone().unwrap_or_else(|| "-".into()),
                            hosts(p),
                            rfc3339(p.created_at),
                        ]
                    })
                    .collect();
                output::table(
                    &["ID", "STATUS", "VAULT", "AGENT", "HOSTS", "CREATED"],
                    &rows,
                );
            }
        }
        ProposalCmd::Show { id, json } => {
            let p = store.proposal(id)?;
            if json {
                output::json(&review_json(&store, &p)?)?;
            } else {
                let pending = p.status_at(crate::vault::now()) == ProposalStatus::Pending;
                let review = pending.then(|| store.review_proposal(&p)).transpose()?;
                show(&p, review.as_ref())?;
            }
        }
        ProposalCmd::Approve {
            id,
            credentials,
            digest,
            allow_credential_reuse,
            allow_rule_removal,
        } => {
            let values = read_values(&credentials)?;
            let confirmed = Confirmed {
                credential_reuse: allow_credential_reuse,
                rule_removal: allow_rule_removal,
            };
            let p = store.approve_proposal(&ctx.actor, id, digest.as_deref(), values, confirmed)?;
            say!(
                "approved proposal {id}: vault {} now has {}",
                p.vault,
                hosts(&p)
            )?;
        }
        ProposalCmd::Reject { id, reason, digest } => {
            store.reject_proposal(
                &ctx.actor,
                id,
                reason.as_deref().unwrap_or(""),
                digest.as_deref(),
            )?;
            say!("rejected proposal {id}")?;
        }
    }
    Ok(())
}

/// One value per line on stdin, in the order of the `--credential` flags.
fn read_values(keys: &[String]) -> Result<Vec<(String, Secret)>, CliError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let raw = super::ctx::read_stdin(1 << 20)?;
    let text = raw.expose().strip_suffix(b"\n").unwrap_or(raw.expose());
    let lines: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    if lines.len() != keys.len() {
        return Err(CliError::Usage(format!(
            "expected {} value(s) on stdin, one per line, for {}; got {}",
            keys.len(),
            keys.join(", "),
            lines.len()
        )));
    }
    keys.iter()
        .zip(lines)
        .map(|(k, v)| {
            secret::check_value(v).map_err(|e| CliError::Usage(format!("{k}: {e}")))?;
            Ok((k.clone(), Secret::new(v.to_vec())))
        })
        .collect()
}

fn hosts(p: &ProposalRecord) -> String {
    let list = p.hosts();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(",")
    }
}

/// The review on a terminal: for a pending proposal the diff against the vault as it is, with
/// every reused credential called out first; for a decided one what it asked for.
fn show(p: &ProposalRecord, review: Option<&Review>) -> Result<(), CliError> {
    say!(
        "proposal {} ({:?}) for vault {} from {}",
        p.id,
        p.status_at(crate::vault::now()),
        p.vault,
        p.agent.as_deref().unwrap_or("an agent")
    )?;
    say!(
        "created {}, expires {}; digest {}",
        rfc3339(p.created_at),
        rfc3339(p.expires_at),
        p.digest
    )?;
    if let Some(r) = review {
        for w in r.reuse_warnings() {
            say!("\nWARNING: {w} (approve needs --allow-credential-reuse)")?;
        }
        for w in &r.weakened {
            say!("\nWARNING: {w} (approve needs --allow-rule-removal)")?;
        }
    }
    if let Some(h) = &p.held {
        say!("\nHeld request (approve to send it, reject to refuse it):")?;
        for (name, value) in h.lines() {
            say!("  {name}: {value}")?;
        }
        if !h.body_preview.is_empty() {
            say!("  body preview: {}", h.body_preview.replace('\n', "\n    "))?;
        }
    }
    if !p.user_message.is_empty() {
        say!(
            "\nThe agent says:\n  {}",
            inert(&p.user_message).replace('\n', "\n  ")
        )?;
    }
    show_services(p, review)?;
    for h in review.map_or(&p.allow, |r| &r.allow) {
        say!(
            "\nadds {h} to vault {}'s egress allowlist (an opaque tunnel, no credential)",
            p.vault
        )?;
    }
    show_credentials(p, review)?;
    if !p.message.is_empty() {
        say!("\nNote for developers: {}", inert(&p.message))?;
    }
    Ok(())
}

/// The services a proposal changes: as a diff against the vault when there is a review.
fn show_services(p: &ProposalRecord, review: Option<&Review>) -> Result<(), CliError> {
    match review {
        Some(r) => {
            for d in &r.services {
                match d {
                    ServiceDiff::Add(s) => say!("\nadds service {}: {}", s.name, s.describe())?,
                    ServiceDiff::Replace { old, new } => say!(
                        "\nREPLACES service {}:\n  was: {}\n  now: {}",
                        new.name,
                        old.describe(),
                        new.describe()
                    )?,
                    ServiceDiff::Same(s) => {
                        say!("\nservice {} unchanged: {}", s.name, s.describe())?
                    }
                    ServiceDiff::Remove(s) => {
                        say!("\nremoves service {}: {}", s.name, s.describe())?
                    }
                    ServiceDiff::RemoveMissing(name) => {
                        say!("\nremoves service {name} (the vault has none)")?
                    }
                }
            }
        }
        None => {
            for c in &p.services {
                match c {
                    ServiceChange::Set(s) => say!("\nservice {}: {}", s.name, s.describe())?,
                    ServiceChange::Delete { name } => say!("\ndelete service {name}")?,
                }
            }
        }
    }
    Ok(())
}

/// The credentials a proposal sets or deletes, and for each the operator provides what the
/// agent says about it (made inert).
fn show_credentials(p: &ProposalRecord, review: Option<&Review>) -> Result<(), CliError> {
    for c in &p.credentials {
        let replaces = review.is_some_and(|r| {
            r.credentials
                .iter()
                .any(|d| d.key == c.key && d.replaces_stored)
        });
        let replaces = if replaces {
            " (REPLACES the stored value)"
        } else {
            ""
        };
        match (c.action, c.sealed.is_some()) {
            (SlotAction::Delete, _) => say!("\ndelete credential {}", c.key)?,
            (SlotAction::Set, true) => say!(
                "\ncredential {}: value supplied by the agent (sealed){replaces}",
                c.key
            )?,
            (SlotAction::Set, false) => {
                say!(
                    "\ncredential {}: you provide it (--credential {}){replaces}",
                    c.key,
                    c.key
                )?;
                if !c.description.is_empty() {
                    say!("  {}", inert(&c.description))?;
                }
                if !c.obtain.is_empty() {
                    say!("  get it at {}", inert(&c.obtain))?;
                }
                if !c.obtain_instructions.is_empty() {
                    say!("  {}", inert(&c.obtain_instructions))?;
                }
            }
        }
    }
    Ok(())
}
