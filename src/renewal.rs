//! The workers' side of OAuth renewal: a [`Refresher`] handle that asks the refresher thread
//! ([`crate::oauth`]) for a credential newer than the one a worker holds and awaits the answer,
//! or nudges it without waiting. It only sends on a channel; the renewing, the vault writes and
//! the policy recompiling happen on that thread, never on a worker.

use std::time::Duration;

use crate::proxy::error::{ErrorKind, ProxyError};
use crate::vault::oauth::FailureCode;

/// How long a worker waits for a refresh it asked for.
const WAIT: Duration = Duration::from_secs(30);

/// Why a credential could not be renewed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: FailureCode,
    pub detail: String,
}

pub(crate) type Answer = Result<(), Failure>;

/// A worker's request for a credential newer than `version`.
#[derive(Debug)]
pub(crate) struct Ask {
    pub(crate) vault: String,
    pub(crate) key: String,
    pub(crate) version: u64,
    pub(crate) reply: Option<flume::Sender<Answer>>,
}

/// The workers' side: asks the refresher thread for a renewal.
#[derive(Debug)]
pub struct Refresher {
    tx: flume::Sender<Ask>,
}

/// The refresher thread's side of the channel, for [`crate::oauth::start`].
#[derive(Debug)]
pub struct Inbox(pub(crate) flume::Receiver<Ask>);

pub fn channel() -> (Refresher, Inbox) {
    let (tx, rx) = flume::unbounded();
    (Refresher { tx }, Inbox(rx))
}

impl Refresher {
    /// Waits until the credential `key` of `vault` is newer than `version` and the policy holds
    /// it, or answers why it cannot be: `502 oauth_refresh_failed`.
    pub async fn renew(&self, vault: &str, key: &str, version: u64) -> Result<(), ProxyError> {
        let (reply, answer) = flume::bounded(1);
        self.send(vault, key, version, Some(reply));
        let failed = |f: Failure| {
            ProxyError::new(ErrorKind::OAuthRefreshFailed, format!(
                    "credential {key}: renewing its OAuth access token failed ({}): {}",
                    f.code.as_str(),
                    f.detail
                ),
            )
            .hint(format!(
                "an operator checks `airlock credential list --vault {vault}` and imports a new token pair with `airlock credential oauth --vault {vault} {key}`"
            ))
        };
        match monoio::time::timeout(WAIT, answer.recv_async()).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(f))) => Err(failed(f)),
            Ok(Err(_)) | Err(_) => Err(failed(Failure {
                code: FailureCode::Unavailable,
                detail: "the refresh did not finish in time".into(),
            })),
        }
    }

    /// Asks for a renewal without waiting (after a 401 that went back to the agent).
    pub fn nudge(&self, vault: &str, key: &str, version: u64) {
        self.send(vault, key, version, None);
    }

    fn send(&self, vault: &str, key: &str, version: u64, reply: Option<flume::Sender<Answer>>) {
        let _ = self.tx.send(Ask {
            vault: vault.to_owned(),
            key: key.to_owned(),
            version,
            reply,
        });
    }
}
