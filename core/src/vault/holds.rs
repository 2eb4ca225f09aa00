//! Held requests: a request a `hold` rule stopped is stored as a proposal carrying a
//! [`HeldRequest`] and no change, so an operator answers it where every proposal is answered (the
//! admin UI, `airlock proposal approve|reject`, the JSON API) and the webhook announces it. The
//! proposal expires when the hold times out; the serve process holding the request reads its
//! status until then. Held requests survive nothing: a serve that starts rejects what an earlier
//! run of it held ([`Store::reject_held`]).
//!
//! What is stored is what an operator needs to decide: method, host, path, query keys and header
//! names (never their values) and a short body preview with secret-looking fields redacted
//! ([`preview`]). The body itself stays in the data plane's memory.

use super::proposals::{decidable, digest, pending};
use super::records::{HeldRequest, ProposalRecord, ProposalStatus};
use super::store::Store;
use super::{VaultError, now};

/// Requests of one vault waiting for an operator at once; past it, `too_many_holds`.
pub const MAX_PENDING_HOLDS: usize = 20;
/// Characters of a body shown to the operator.
pub const PREVIEW_CHARS: usize = 1024;

impl Store {
    /// Stores a held request of `agent` in `vault`, pending for `ttl` seconds.
    pub fn create_hold(
        &self,
        vault: &str,
        agent: Option<&str>,
        held: HeldRequest,
        ttl: u64,
    ) -> Result<ProposalRecord, VaultError> {
        let what = format!(
            "{} {}{} held by {}",
            held.method,
            held.host,
            held.path,
            held.rule.as_deref().map_or_else(
                || format!("service {}", held.service),
                |r| format!("rule {r}")
            )
        );
        let digest = digest(
            vault,
            &[],
            &[],
            &serde_json::to_string(&held).unwrap_or_default(),
            "",
        );
        self.write(|t| {
            let at = now();
            if pending(t, vault, true, at)? >= MAX_PENDING_HOLDS {
                return Err(VaultError::TooManyPending {
                    vault: vault.to_owned(),
                    max: MAX_PENDING_HOLDS,
                });
            }
            let record = ProposalRecord {
                id: t.next_id()?,
                vault: vault.to_owned(),
                agent: agent.map(str::to_owned),
                status: ProposalStatus::Pending,
                services: Vec::new(),
                credentials: Vec::new(),
                message: what,
                user_message: String::new(),
                digest,
                created_at: at,
                expires_at: at + ttl,
                decided_at: None,
                decided_by: None,
                reason: None,
                applied_generation: None,
                held: Some(held),
            };
            t.put(t.dbs().proposals, &record.id.to_be_bytes(), &record)?;
            let who = agent.map_or_else(|| "agent".to_owned(), |a| format!("agent:{a}"));
            t.audit(
                &who,
                "hold.create",
                &format!("proposal {}", record.id),
                &format!("vault={vault}"),
            )?;
            Ok(record)
        })
    }

    /// Rejects every pending held request whose node is not `node` but was held on this data
    /// dir's earlier runs (`node_prefix`): their connections are gone. Returns how many.
    pub fn reject_held(&self, node_prefix: &str, node: &str) -> Result<usize, VaultError> {
        let at = now();
        let stale: Vec<ProposalRecord> = self
            .proposals(None, Some(ProposalStatus::Pending))?
            .into_iter()
            .filter(|p| {
                p.held
                    .as_ref()
                    .is_some_and(|h| h.node.starts_with(node_prefix) && h.node != node)
            })
            .collect();
        if stale.is_empty() {
            return Ok(0);
        }
        self.write(|t| {
            let mut n = 0;
            for p in &stale {
                let key = p.id.to_be_bytes();
                let Ok(mut p) = decidable(t.get(t.dbs().proposals, "proposals", &key)?, p.id, None)
                else {
                    continue;
                };
                p.status = ProposalStatus::Rejected;
                p.decided_at = Some(at);
                p.decided_by = Some("airlock".to_owned());
                p.reason = Some("airlock restarted; the request was not sent".to_owned());
                t.put(t.dbs().proposals, &key, &p)?;
                n += 1;
            }
            Ok(n)
        })
    }
}

/// The start of a body for the operator: JSON and form fields whose names look secret
/// (`password`, `token`, `secret`, `key`, `authorization`, `card`, `cvc`, `ssn`) redacted,
/// cut at [`PREVIEW_CHARS`], control characters escaped; binary bodies summarised.
pub fn preview(body: &[u8], content_type: &str) -> String {
    if body.is_empty() {
        return String::new();
    }
    let ct = content_type.to_ascii_lowercase();
    let text = if let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(body) {
        redact_json(&mut json);
        json.to_string()
    } else if ct.starts_with("application/x-www-form-urlencoded") {
        String::from_utf8_lossy(body)
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if secret_looking(k) => format!("{k}=[redacted]"),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    } else {
        match std::str::from_utf8(body) {
            Ok(t) => t.to_owned(),
            Err(_) => return format!("({} bytes, not text)", body.len()),
        }
    };
    let mut out: String = text
        .chars()
        .take(PREVIEW_CHARS)
        .flat_map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if text.chars().count() > PREVIEW_CHARS {
        out.push_str(&format!(" … ({} bytes in all)", body.len()));
    }
    super::proposals::inert(&out)
}

fn secret_looking(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "pass", "token", "secret", "key", "auth", "card", "cvc", "cvv", "ssn", "iban",
    ]
    .iter()
    .any(|w| n.contains(w))
}

fn redact_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if secret_looking(k) {
                    *v = serde_json::Value::String("[redacted]".into());
                } else {
                    redact_json(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_redact_and_cut() {
        let p = preview(
            br#"{"amount":500,"card":{"number":"4242"},"api_key":"sk-1","nested":[{"password":"x"}]}"#,
            "application/json",
        );
        assert!(p.contains("\"amount\":500"), "{p}");
        assert!(
            !p.contains("sk-1") && !p.contains("\"x\"") && !p.contains("4242"),
            "{p}"
        );
        let p = preview(
            b"amount=5&client_secret=abc",
            "application/x-www-form-urlencoded",
        );
        assert_eq!(p, "amount=5&client_secret=[redacted]");
        assert_eq!(preview(&[0xff, 0xfe, 0], ""), "(3 bytes, not text)");
        let long = "a".repeat(5000);
        let p = preview(long.as_bytes(), "text/plain");
        assert!(p.len() < 1100 && p.ends_with("(5000 bytes in all)"), "{p}");
        assert_eq!(preview(b"a\x1b[2Jb", "text/plain"), "a\\u{1b}[2Jb");
    }
}
