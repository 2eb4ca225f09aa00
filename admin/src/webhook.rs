//! The optional webhook: when a proposal arrives, POST Slack-compatible JSON
//! (`{"text": ...}`) with who asks for which hosts and the approval link. Never a secret: the
//! message names hosts, keys and the agent's capped message only.
//!
//! A watcher thread polls the vault for proposals newer than the last one seen. Each delivery
//! has a timeout and up to three attempts with backoff. HTTPS uses rustls with ring (the only
//! crypto provider) and the system roots; plain `http://` is accepted for loopback URLs only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::vault::records::{ProposalRecord, ServiceChange};

use crate::AppState;

const ATTEMPTS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where to send, parsed from the config's `webhook_url`.
#[derive(Clone, Debug)]
pub(crate) struct Webhook {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

impl Webhook {
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = match url.split_once("://") {
            Some(("https", r)) => (true, r),
            Some(("http", r)) => (false, r),
            _ => return Err(format!("webhook_url {url:?} must be https://")),
        };
        let (authority, path) = rest
            .find('/')
            .map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .map_err(|_| format!("webhook_url {url:?}: bad port"))?,
            ),
            None => (authority, if tls { 443 } else { 80 }),
        };
        if !tls && !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
            return Err(format!(
                "webhook_url {url:?}: plain http is allowed for loopback only"
            ));
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// The message for one proposal.
/// Slack's three control characters in message text.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub(crate) fn message(p: &ProposalRecord, approval_url: Option<&str>) -> serde_json::Value {
    let hosts: Vec<&str> = p
        .services
        .iter()
        .filter_map(|c| match c {
            ServiceChange::Set(s) => Some(s.host.as_str()),
            ServiceChange::Delete { .. } => None,
        })
        .collect();
    let keys: Vec<&str> = p.credentials.iter().map(|c| c.key.as_str()).collect();
    // Agent text goes out inert (row 67): Slack markup (`<!channel>`, `<url|label>`) escaped,
    // bidi and zero-width characters shown as escapes.
    let said: String = p.user_message.chars().take(200).collect();
    let said = slack_escape(&airlock_core::text::inert(&said));
    let link = approval_url.map_or_else(
        || format!("run `airlock proposal show {}`", p.id),
        |u| format!("review: {u}"),
    );
    if let Some(h) = &p.held {
        let text = format!(
            "airlock: {} has a request waiting in vault {} (proposal {}): {}. Answer before {}; {}",
            p.agent.as_deref().unwrap_or("an agent"),
            p.vault,
            p.id,
            slack_escape(&h.summary()),
            airlock_core::vault::rfc3339(p.expires_at),
            link,
        );
        return serde_json::json!({ "text": text });
    }
    let text = format!(
        "airlock: {} asks for access in vault {} (proposal {}): hosts {}; credentials {}. {}{}",
        p.agent.as_deref().unwrap_or("an agent"),
        p.vault,
        p.id,
        if hosts.is_empty() {
            "-".into()
        } else {
            hosts.join(", ")
        },
        if keys.is_empty() {
            "-".into()
        } else {
            keys.join(", ")
        },
        if said.is_empty() {
            String::new()
        } else {
            format!("\u{201c}{said}\u{201d} ")
        },
        link,
    );
    serde_json::json!({ "text": text })
}

fn post_once(hook: &Webhook, body: &[u8]) -> Result<u16, String> {
    let addr = format!("{}:{}", hook.host, hook.port);
    let sock = TcpStream::connect(&addr).map_err(|e| format!("{addr}: {e}"))?;
    sock.set_read_timeout(Some(TIMEOUT))
        .and_then(|()| sock.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nuser-agent: airlock-admin\r\n\r\n",
        hook.path,
        hook.host,
        body.len()
    );
    let mut reply = Vec::new();
    if hook.tls {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name =
            rustls_pki_types::ServerName::try_from(hook.host.clone()).map_err(|e| e.to_string())?;
        let conn =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(head.as_bytes())
            .and_then(|()| tls.write_all(body))
            .map_err(|e| e.to_string())?;
        let _ = tls.read_to_end(&mut reply);
    } else {
        let mut sock = sock;
        sock.write_all(head.as_bytes())
            .and_then(|()| sock.write_all(body))
            .map_err(|e| e.to_string())?;
        let _ = sock.read_to_end(&mut reply);
    }
    let status = String::from_utf8_lossy(&reply)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(status)
}

/// Sends with retries; logs the outcome (never the body's secrets: it has none).
pub(crate) fn deliver(hook: &Webhook, body: &serde_json::Value) {
    let bytes = body.to_string().into_bytes();
    for attempt in 1..=ATTEMPTS {
        match post_once(hook, &bytes) {
            Ok(s) if (200..300).contains(&s) => return,
            Ok(s) => tracing::warn!(attempt, "webhook answered {s}"),
            Err(e) => tracing::warn!(attempt, "webhook failed: {e}"),
        }
        std::thread::sleep(Duration::from_secs(u64::from(attempt)));
    }
}

/// Watches for new proposals and notifies each once.
pub(crate) fn watch(state: Arc<AppState>, hook: Webhook, approval_base: Option<String>) {
    let mut seen = state
        .store
        .proposals(None, None)
        .ok()
        .and_then(|l| l.iter().map(|p| p.id).max())
        .unwrap_or(0);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let Ok(mut list) = state.store.proposals(None, None) else {
            continue;
        };
        list.retain(|p| p.id > seen);
        list.sort_by_key(|p| p.id);
        for p in list {
            seen = seen.max(p.id);
            let url = approval_base
                .as_ref()
                .map(|b| format!("{b}/proposals/{}", p.id));
            deliver(&hook, &message(&p, url.as_deref()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row 67: Slack markup in agent text is escaped; no mention or disguised link
    /// survives.
    #[test]
    fn row67_slack_markup_escaped() {
        let p: ProposalRecord = serde_json::from_value(serde_json::json!({
            "id": 3, "vault": "default", "agent": "bot", "status": "pending",
            "services": [], "credentials": [], "message": "",
            "user_message": "<!channel> urgent <https://attacker.example/login|review> & \u{202e}moc.live",
            "digest": "d", "created_at": 0, "expires_at": 1, "decided_at": null,
            "decided_by": null, "reason": null, "applied_generation": null
        }))
        .unwrap();
        let text = message(&p, Some("http://127.0.0.1:7481/proposals/3"))["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            text.contains("&lt;!channel&gt; urgent &lt;https://attacker.example/login|review&gt; &amp; \\u{202e}moc.live"),
            "{text}"
        );
        assert!(!text.contains("<!channel>") && !text.contains('\u{202e}'));
        assert!(
            text.ends_with("review: http://127.0.0.1:7481/proposals/3"),
            "{text}"
        );
    }

    #[test]
    fn urls() {
        assert!(Webhook::parse("https://hooks.slack.com/services/T/B/X").is_ok());
        assert!(Webhook::parse("http://127.0.0.1:9/hook").is_ok());
        assert!(Webhook::parse("http://hooks.example.com/x").is_err());
        assert!(Webhook::parse("ftp://x").is_err());
    }
}
