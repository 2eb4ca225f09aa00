//! Steps 5 and 6 of the pipeline: the request sent on a pooled or new upstream connection (one
//! retry on a fresh one when a pooled connection fails before any response byte and the body is
//! held), its head written and zeroized, its body streamed with the proxy's own framing, and the
//! response handed to [`crate::proxy::response`].

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use zeroize::{Zeroize, Zeroizing};

use super::Call;
use crate::http::body::{self, RelayError};
use crate::http::head::Framing;
use crate::http::io::BufConn;
use crate::proxy::body_substitution;
use crate::proxy::error::{ErrorKind, ProxyError};
use crate::proxy::outcome::{ExchangeError, Outcome};
use crate::proxy::response::{self, COALESCE_MAX, Head};
use crate::proxy::upstream::{self, Upstream};

/// How an attempt failed: before any response byte arrived (the request may be sent again when
/// its body is held), with a 401 that was not relayed (an OAuth service's token to renew), or
/// after the response started.
#[derive(Debug)]
pub(super) enum AttemptError {
    BeforeResponse(ProxyError),
    Unauthorized,
    After(ExchangeError),
}

impl AttemptError {
    pub(super) fn into_exchange(self) -> ExchangeError {
        match self {
            Self::BeforeResponse(e) => ExchangeError::Respond(e),
            Self::Unauthorized => ExchangeError::Respond(ProxyError::new(
                ErrorKind::OAuthRefreshFailed,
                "the upstream refused the renewed OAuth token",
            )),
            Self::After(e) => e,
        }
    }
}

impl From<ExchangeError> for AttemptError {
    fn from(e: ExchangeError) -> Self {
        Self::After(e)
    }
}

impl From<ProxyError> for AttemptError {
    fn from(e: ProxyError) -> Self {
        Self::After(ExchangeError::Respond(e))
    }
}

impl<'a, C: AsyncReadRent + AsyncWriteRent> Call<'a, C> {
    /// Sends the request on a pooled or new connection. A pooled connection may fail under the
    /// request (the upstream closed it as it was sent): a request whose body is held whole is
    /// sent again, once, on a fresh connection, provided no response byte arrived. A body that
    /// must stream cannot be sent twice. `held` is the body when the caller already read it.
    pub(super) async fn send(&mut self, held: Option<&[u8]>) -> Result<Outcome, AttemptError> {
        let early = self.early.take();
        let held = held.or(early.as_deref());
        // The credential goes into the body here, so a resend after renewal carries the new one.
        let substituted = match (self.body_kind, held) {
            (Some(kind), Some(body)) => {
                body_substitution::substitute(self.prepared.service, kind, body)
            }
            _ => None,
        };
        if let Some(body) = &substituted {
            body_substitution::set_length(&mut self.prepared.head, body.len());
        }
        let held = substituted.as_deref().map(Vec::as_slice).or(held);
        let (dialer, stats) = (&self.shared.dialer, &self.shared.stats);
        let up = upstream::get(
            dialer,
            stats,
            &self.route.vault.name,
            &self.key,
            self.limits.pool_idle,
        )
        .await?;
        if !up.reused {
            return self.attempt(up, held).await;
        }
        let read_here = match held {
            Some(_) => None,
            None => self.hold_if_small().await?,
        };
        let held = held.or(read_here.as_deref());
        match self.attempt(up, held).await {
            Err(AttemptError::BeforeResponse(_)) if held.is_some() => {
                stats.retried();
                stats.upstream(false);
                let up = upstream::dial_new(dialer, &self.route.vault.name, &self.key.1).await?;
                self.attempt(up, held).await
            }
            other => other,
        }
    }

    /// Sends the request on `up` and relays the response. `held` is the whole body when it was
    /// read before the attempt (see [`Call::hold_body`]).
    async fn attempt(
        &mut self,
        mut up: Upstream,
        held: Option<&[u8]>,
    ) -> Result<Outcome, AttemptError> {
        self.send_request(&mut up, held).await?;
        let read = response::read_final(&self.limits, &mut up.conn, &self.prepared, self.retry_401);
        let head = match read.await {
            Ok(head) => head,
            Err(e) if e.nothing_arrived && e.error.kind().retry_on_fresh_connection() => {
                return Err(AttemptError::BeforeResponse(e.error));
            }
            Err(e) => return Err(e.error.into()),
        };
        let f = match head {
            Head::Final(f) => f,
            Head::Unauthorized => return Err(AttemptError::Unauthorized),
            Head::Upgrade(out) => {
                self.row.status = 101;
                let abort = |_| ExchangeError::Abort;
                self.client.write_all(out).await.map_err(abort)?;
                self.client.flush().await.map_err(abort)?;
                return Ok(Outcome::Upgraded(up.conn, self.prepared.scrub.clone()));
            }
        };
        self.row.status = f.status;
        let (limits, scrub) = (&self.limits, self.prepared.scrub);
        Ok(response::relay(limits, self.client, up, &self.key, f, scrub, self.row).await?)
    }

    /// Writes the head (then zeroizes it) and the body: held, small enough to go in the head's
    /// write, or streamed from the client.
    async fn send_request(
        &mut self,
        up: &mut Upstream,
        held: Option<&[u8]>,
    ) -> Result<(), AttemptError> {
        let unreachable = |what: &str, e: std::io::Error| {
            ProxyError::new(ErrorKind::UpstreamUnreachable, format!("{what}: {e}"))
        };
        let mut framing = self.prepared.framing;
        let mut first = self.prepared.head.clone();
        if let Some(body) = held {
            first.extend_from_slice(body);
            framing = Framing::Empty;
        } else if let Framing::Length(n) = framing
            && n <= COALESCE_MAX
            && n as usize <= self.client.buffered().len()
        {
            // A small body that arrived with the head goes upstream in the same write.
            first.extend_from_slice(&self.client.buffered()[..n as usize]);
            self.client.consume(n as usize);
            framing = Framing::Empty;
        }
        write_secret(&mut up.conn, first)
            .await
            .map_err(|e| AttemptError::BeforeResponse(unreachable("writing to the upstream", e)))?;
        if self.prepared.expect_continue && framing != Framing::Empty {
            self.continue_100().await?;
        }
        let opts = body::Opts {
            output: body::output_for(framing),
            cap: self.limits.body_cap,
            read_timeout: self.limits.idle_timeout,
        };
        match body::relay(self.client, &mut up.conn, framing, opts, None).await {
            Ok(_) => {}
            Err(RelayError::Framing(e)) => return Err(ProxyError::from(e).into()),
            Err(RelayError::Write(e)) => return Err(unreachable("sending the body", e).into()),
            Err(RelayError::Read(_) | RelayError::Truncated) => {
                return Err(ExchangeError::Abort.into());
            }
        }
        up.conn
            .flush()
            .await
            .map_err(|e| AttemptError::BeforeResponse(unreachable("flushing", e)))
    }
}

/// Writes a head that may hold injected values, then zeroizes the buffer.
async fn write_secret<S: AsyncWriteRent>(
    conn: &mut BufConn<S>,
    mut head: Zeroizing<Vec<u8>>,
) -> std::io::Result<()> {
    let (res, mut buf) = conn.io.write_all(std::mem::take(&mut *head)).await;
    buf.zeroize();
    res.map(|_| ())
}
