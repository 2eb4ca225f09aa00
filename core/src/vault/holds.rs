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
/// Characters of a body shown to the operator (each value is cut first, at [`VALUE_CHARS`]).
pub const PREVIEW_CHARS: usize = 2048;

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
                allow: Vec::new(),
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

/// A body for the operator (row 109): every field name shown; the values of fields whose
/// names look secret (`password`, `token`, `secret`, `key`, `auth`, `card`, ...) replaced by a
/// loud [`REDACTED`] and listed first by name, so a chosen field name cannot hide a value the
/// operator would want to see without saying so; each value cut on its own at [`VALUE_CHARS`], so
/// one long field cannot push the others out; the whole cut at [`PREVIEW_CHARS`] with the
/// top-level field names still listed; control, bidi and zero-width characters escaped; binary
/// bodies summarised. Compressed bodies never get here (the data plane refuses to hold them).
pub fn preview(body: &[u8], content_type: &str) -> String {
    if body.is_empty() {
        return String::new();
    }
    let ct = content_type.to_ascii_lowercase();
    let mut redacted = Vec::new();
    let mut fields = Vec::new();
    let text = if let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(body) {
        if let serde_json::Value::Object(map) = &json {
            fields = map.keys().cloned().collect();
        }
        shorten_json(&mut json, &mut redacted);
        json.to_string()
    } else if ct.starts_with("application/x-www-form-urlencoded") {
        String::from_utf8_lossy(body)
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if secret_looking(k) => {
                    redacted.push(k.to_owned());
                    format!("{k}={REDACTED}")
                }
                Some((k, v)) => {
                    fields.push(k.to_owned());
                    format!("{k}={}", cut(v))
                }
                None => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    } else {
        match std::str::from_utf8(body) {
            Ok(t) => t.to_owned(),
            Err(_) => return format!("({} bytes, not text)", body.len()),
        }
    };
    let mut out = String::new();
    if !redacted.is_empty() {
        redacted.dedup();
        out.push_str(&format!(
            "REDACTED by airlock (names look secret; values not shown): {}\n",
            redacted.join(", ")
        ));
    }
    out.extend(text.chars().take(PREVIEW_CHARS).flat_map(|c| {
        if c.is_control() && c != '\n' {
            c.escape_default().collect::<Vec<_>>()
        } else {
            vec![c]
        }
    }));
    if text.chars().count() > PREVIEW_CHARS {
        out.push_str(&format!(" … (cut; {} bytes in all)", body.len()));
        if !fields.is_empty() {
            out.push_str(&format!("\nall top-level fields: {}", fields.join(", ")));
        }
    }
    crate::text::inert(&out)
}

/// What a redacted value is shown as.
pub const REDACTED: &str = "[REDACTED BY AIRLOCK]";
/// Characters of one value shown before it is cut.
pub const VALUE_CHARS: usize = 120;

/// `v` cut at [`VALUE_CHARS`], saying how much was left out.
fn cut(v: &str) -> String {
    let n = v.chars().count();
    if n <= VALUE_CHARS {
        return v.to_owned();
    }
    let head: String = v.chars().take(VALUE_CHARS).collect();
    format!("{head}…(+{} chars)", n - VALUE_CHARS)
}

fn secret_looking(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "pass", "token", "secret", "key", "auth", "card", "cvc", "cvv", "ssn", "iban",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// Redacts secret-looking fields (noting their names) and cuts long strings, at every depth.
fn shorten_json(v: &mut serde_json::Value, redacted: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if secret_looking(k) {
                    redacted.push(k.clone());
                    *v = serde_json::Value::String(REDACTED.into());
                } else {
                    shorten_json(v, redacted);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| shorten_json(i, redacted)),
        serde_json::Value::String(s) => *s = cut(s),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review #84: held requests have their own cap per vault; a vault full of holds still takes
    /// an agent's proposal.
    #[test]
    fn holds_have_their_own_cap() {
        let dir = tempfile::tempdir().unwrap();
        super::super::setup::init(dir.path(), &Default::default(), Default::default(), "t")
            .unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let held = || HeldRequest {
            service: "s".into(),
            rule: Some("r".into()),
            method: "POST".into(),
            host: "a.example".into(),
            path: "/x".into(),
            query_keys: Vec::new(),
            header_names: Vec::new(),
            body_bytes: 0,
            body_preview: String::new(),
            node: "n".into(),
        };
        for _ in 0..MAX_PENDING_HOLDS {
            store.create_hold("default", Some("a"), held(), 60).unwrap();
        }
        let over = store.create_hold("default", Some("b"), held(), 60);
        assert_eq!(over.unwrap_err().code(), "too_many_pending");
        let proposal: super::super::proposals::NewProposal = serde_json::from_value(
            serde_json::json!({"credentials": [{"key": "NEW_KEY"}], "user_message": "need it"}),
        )
        .unwrap();
        store
            .create_proposal("default", Some("b"), proposal)
            .unwrap();
    }

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
        assert_eq!(
            p,
            "REDACTED by airlock (names look secret; values not shown): client_secret\namount=5&client_secret=[REDACTED BY AIRLOCK]"
        );
        assert_eq!(preview(&[0xff, 0xfe, 0], ""), "(3 bytes, not text)");
        let long = "a".repeat(5000);
        let p = preview(long.as_bytes(), "text/plain");
        assert!(
            p.len() < 2100 && p.ends_with("(cut; 5000 bytes in all)"),
            "{p}"
        );
        assert_eq!(preview(b"a\x1b[2Jb", "text/plain"), "a\\u{1b}[2Jb");
    }

    /// Row 109: a padding field that sorts first cannot hide the fields after it,
    /// a redacted field is named loudly, and bidi characters are escaped.
    #[test]
    fn row109_previews_show_every_field_and_say_what_they_hide() {
        let body = serde_json::json!({
            "aaa": "x".repeat(5000),
            "amount": 100,
            "destination_card": "acct_ATTACKER",
            "note": "pay \u{202e}moc.live",
        })
        .to_string();
        let p = preview(body.as_bytes(), "application/json");
        assert!(
            p.starts_with(
                "REDACTED by airlock (names look secret; values not shown): destination_card\n"
            ),
            "{p}"
        );
        assert!(
            p.contains("\"amount\":100")
                && p.contains("\"destination_card\":\"[REDACTED BY AIRLOCK]\""),
            "{p}"
        );
        assert!(p.contains("…(+4880 chars)") && p.len() < 600, "{p}");
        assert!(p.contains("\\u{202e}") && !p.contains('\u{202e}'), "{p}");
        // Many fields: cut, but every top-level name is listed.
        let many: serde_json::Map<String, serde_json::Value> = (0..100)
            .map(|i| {
                (
                    format!("f{i:03}"),
                    serde_json::Value::String("v".repeat(100)),
                )
            })
            .collect();
        let p = preview(
            serde_json::Value::Object(many).to_string().as_bytes(),
            "application/json",
        );
        assert!(
            p.contains("(cut; ")
                && p.contains("all top-level fields: f000, f001")
                && p.contains("f099"),
            "{p}"
        );
    }
}
