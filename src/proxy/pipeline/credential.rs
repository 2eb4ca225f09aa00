//! Step 4 of the pipeline: what the service's credential needs around the send. A service that
//! substitutes in bodies has the body read first ([`crate::proxy::body_substitution`]); an
//! `aws-sigv4` service's request is signed once its payload hash is known
//! ([`crate::proxy::sigv4`]), a body the signature covers read whole first; an OAuth service
//! waits for the refresher when its access token has expired, and when the upstream answers 401
//! and the body is held, the token is renewed and the request sent once more with the new one
//! (the 401 never reaches the agent). A 401 to a streamed body goes back to the agent and starts
//! a renewal. A token younger than [`crate::credential::MIN_AGE_TO_RENEW_ON_401`] is not renewed
//! on a 401: the 401 goes to the agent. Static headers need nothing here: [`crate::proxy::inject`]
//! put them in the head.

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::send::AttemptError;
use super::{Call, Route};
use crate::credential::{OAuthUse, SigV4Keys};
use crate::http::body::WHOLE_BODY_MAX;
use crate::http::head::Framing;
use crate::proxy::body_substitution;
use crate::proxy::error::{ErrorKind, ProxyError};
use crate::proxy::outcome::{ExchangeError, Outcome};
use crate::proxy::sigv4::{self, Payload};

impl<'a, C: AsyncReadRent + AsyncWriteRent> Call<'a, C> {
    /// Sends the request as its credential needs (steps 4 to 6).
    pub(super) async fn credential(mut self) -> Result<Outcome, ExchangeError> {
        self.hold_for_substitution().await?;
        let credential = &self.prepared.service.credential;
        if let Some(oauth) = credential.oauth().cloned() {
            return self.with_oauth(oauth).await;
        }
        let held = match credential.sigv4() {
            Some(keys) => self.sign(keys).await?,
            None => None,
        };
        let sent = self.send(held.as_deref()).await;
        sent.map_err(AttemptError::into_exchange)
    }

    /// The OAuth branch of [`Call::credential`]: renew first when the token expired; renew and send
    /// again after a 401 when the body is held.
    async fn with_oauth(mut self, oauth: OAuthUse) -> Result<Outcome, ExchangeError> {
        let (shared, vault, now) = (self.shared, &self.route.vault.name, crate::vault::now());
        let renew = || shared.oauth.renew(vault, &oauth.key, oauth.version);
        if oauth.stale(now) {
            renew().await?;
            let early = self.early.take();
            return self.resend(early).await;
        }
        let held = self.hold_if_small().await?;
        self.retry_401 = held.is_some() && oauth.renewable_on_401(now);
        match self.send(held.as_deref()).await {
            Err(AttemptError::Unauthorized) => {
                renew().await?;
                self.resend(held).await
            }
            other => {
                if self.row.status == 401 && oauth.renewable_on_401(now) {
                    shared.oauth.nudge(vault, &oauth.key, oauth.version);
                }
                other.map_err(AttemptError::into_exchange)
            }
        }
    }

    /// Sends the request once more, prepared again with the token the current policy holds (no
    /// second renewal). It was judged by the rules already: this is the same request.
    async fn resend(self, held: Option<Vec<u8>>) -> Result<Outcome, ExchangeError> {
        let Call {
            shared,
            client,
            row,
            req,
            route,
            ..
        } = self;
        let policy = shared.policy();
        let vault = policy.vault(&route.vault.name).ok_or_else(|| {
            ProxyError::new(ErrorKind::VaultMismatch, "the vault no longer exists")
        })?;
        let route = Route {
            vault,
            agent: None,
            ..route
        };
        let prepared = super::prepare(shared, req, route)?;
        let mut call = Call::new(shared, shared.limits(), client, prepared, route, req, row);
        let sent = call.send(held.as_deref()).await;
        sent.map_err(AttemptError::into_exchange)
    }

    /// Signs an `aws-sigv4` request, reading its body first when the signature covers it;
    /// returns the body so read.
    async fn sign(&mut self, keys: &SigV4Keys) -> Result<Option<Vec<u8>>, ExchangeError> {
        let declared = self.req.one("x-amz-content-sha256").ok().flatten();
        let (hash, held) = match sigv4::payload(keys, self.prepared.framing, declared)? {
            Payload::Hash => {
                let body = match self.prepared.framing {
                    Framing::Length(n) => self.hold_body(n).await?,
                    _ => Vec::new(),
                };
                (sigv4::hash(&body), Some(body))
            }
            Payload::Declared(d) => (d.to_owned(), None),
        };
        sigv4::sign(keys, &mut self.prepared.head, &hash, crate::vault::now());
        Ok(held)
    }

    /// Reads the body first when the service substitutes in it ([`body_substitution`]); a body
    /// it cannot hold is refused, never sent with its placeholders.
    async fn hold_for_substitution(&mut self) -> Result<(), ExchangeError> {
        let service = self.prepared.service;
        if self.early.is_some() || body_substitution::declared(service).next().is_none() {
            return Ok(());
        }
        match self.prepared.framing {
            Framing::Empty => {}
            Framing::Length(n) if n <= WHOLE_BODY_MAX => {
                let body = self.hold_body(n).await?;
                self.early = Some(body);
            }
            _ => return Err(body_substitution::too_large(&service.name).into()),
        }
        Ok(())
    }
}
