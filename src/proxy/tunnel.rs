//! The opaque tunnel, for a CONNECT to a host without a service when the vault allows it (its
//! policy is `tunnel`, or the host is on its egress allowlist): a vetted address (the same
//! resolve and SSRF guard as every upstream, R4), no TLS interception, never any injection;
//! closed within a second of the token's revocation. Each tunnel is one request-log row when it
//! ends: `CONNECT`, the host, the bytes sent to the agent and how long it was open.

use std::sync::Arc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};

use super::Shared;
use super::auth::{self, Identity};
use super::client::{established, reply_and_close};
use super::log::Entry;
use super::outcome::Outcome;
use super::upstream::Target;
use crate::http::io::{BufConn, pipe};

/// Splices the client to `target` until either side closes or the token is revoked.
pub(super) async fn serve<S: Split + AsyncReadRent + AsyncWriteRent>(
    shared: Arc<Shared>,
    mut client: BufConn<S>,
    target: Target,
    id: Identity,
    from: std::net::IpAddr,
) {
    let up = match shared.dialer.connect_tcp(&id.vault, &target).await {
        Ok(up) => up,
        Err(e) => return reply_and_close(&mut client, &e).await,
    };
    if !established(&mut client).await {
        return;
    }
    let _open = shared.stats.tunnel();
    let mut entry = Entry::new(&id, &target.host, from);
    entry.row.method = "CONNECT".to_owned();
    entry.row.status = 200;
    let to_agent = std::cell::Cell::new(0);
    let store = &shared.store;
    let revoked = async {
        loop {
            monoio::time::sleep(Duration::from_millis(500)).await;
            if auth::recheck(store, &id).is_err() {
                return;
            }
        }
    };
    monoio::select! {
        _ = pipe(client, BufConn::new(up), &to_agent) => {},
        _ = revoked => {},
    }
    entry.row.bytes = to_agent.get();
    entry.finish(&shared.log, &Ok(Outcome::Close));
}
