//! The client side of a connection: reading request heads (with the slowloris and size limits),
//! the one request loop that plain-HTTP, agent-API and intercepted connections share
//! ([`requests`]), and the replies airlock writes itself (errors, `200 Connection established`).
//! What a request means is up to the step the loop hands it to. An error airlock itself is to
//! blame for is also told to the operator, in the service's log ([`warn_operator`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};

use super::Shared;
use super::error::{Blame, ErrorKind, ProxyError};
use super::outcome::{ExchangeError, Outcome};
use super::request::Request;
use super::response;
use crate::http::HttpError;
use crate::http::head::{self, MAX_HEAD};
use crate::http::io::BufConn;

/// Waits for a complete head and takes it out of the buffer: `Ok(None)` on a clean close, when
/// nothing arrived within `idle`, or when a started head is not complete within `header`
/// (slowloris, row 35). Parsing is the caller's, where a failure is answered.
pub(super) async fn read_head<S: AsyncReadRent>(
    conn: &mut BufConn<S>,
    idle: Duration,
    header: Duration,
) -> Result<Option<Vec<u8>>, ProxyError> {
    let started = Instant::now();
    loop {
        if let Some(n) = head::find_end(conn.buffered()) {
            if n > MAX_HEAD {
                return Err(HttpError::HeadersTooLarge(MAX_HEAD).into());
            }
            let raw = conn.buffered()[..n].to_vec();
            conn.consume(n);
            return Ok(Some(raw));
        }
        if conn.buffered().len() > MAX_HEAD {
            return Err(HttpError::HeadersTooLarge(MAX_HEAD).into());
        }
        let limit = if conn.buffered().is_empty() {
            idle
        } else {
            header
        };
        let left = limit.saturating_sub(started.elapsed());
        match monoio::time::timeout(left, conn.fill()).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Ok(None),
            Ok(Ok(_)) => {}
        }
    }
}

/// Longest a connection or tunnel may wait before its first request head starts.
pub(super) const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(10);

/// How long a connection may wait between requests once it has sent one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Between {
    /// An intercepted tunnel, whose agent authenticated: `idle_timeout`.
    Idle,
    /// A connection no CONNECT authenticated (the agent API, plain proxying): the first-request
    /// wait every time, so idle keep-alive connections cannot hold the connection cap for long.
    Short,
}

/// What the step given a request wants the loop to do next.
#[derive(Debug)]
pub(super) enum Next {
    /// The exchange ended; read the next request unless it said to close.
    Done(Result<Outcome, ExchangeError>),
    /// The connection leaves the loop with this request (a CONNECT on a plain connection).
    HandOff(Request),
}

/// Serves requests on `conn` until it closes: each head is handed to `step` while counted in
/// flight; an error is answered and closes the connection; a WebSocket upgrade becomes a relay.
/// Returns the connection and the request of a [`Next::HandOff`].
pub(super) async fn requests<S, F>(
    shared: &Shared,
    mut conn: BufConn<S>,
    between: Between,
    mut step: F,
) -> Option<(BufConn<S>, Request)>
where
    S: Split + AsyncReadRent + AsyncWriteRent,
    F: AsyncFnMut(&mut BufConn<S>, Vec<u8>) -> Next,
{
    // A connection (or tunnel) that has sent no request yet waits less than one between
    // requests: idle tunnels opened for nothing go soon (row 111).
    let limits = shared.limits();
    let mut wait = FIRST_REQUEST_WAIT
        .min(limits.header_timeout)
        .min(limits.idle_timeout);
    loop {
        let header_timeout = shared.limits().header_timeout;
        let raw = match read_head(&mut conn, wait, header_timeout).await {
            Ok(Some(raw)) => raw,
            Ok(None) => return None,
            Err(e) => {
                reply_and_close(&mut conn, &e).await;
                return None;
            }
        };
        if shared.shutting_down() {
            return None;
        }
        if let Between::Idle = between {
            wait = shared.limits().idle_timeout;
        }
        let in_flight = shared.stats.in_flight();
        // Boxed: an idle connection's task then holds no room for an exchange in progress
        // (several KiB), only while one runs.
        let result = match Box::pin(step(&mut conn, raw)).await {
            Next::Done(result) => result,
            Next::HandOff(raw) => return Some((conn, raw)),
        };
        drop(in_flight);
        match result {
            Ok(Outcome::KeepAlive) => {}
            Ok(Outcome::Upgraded(up, secrets)) => {
                Box::pin(response::upgraded(conn, up, &secrets)).await;
                return None;
            }
            Ok(Outcome::Close) | Err(ExchangeError::Abort) => return None,
            Err(ExchangeError::Respond(e)) => {
                reply_and_close(&mut conn, &e).await;
                return None;
            }
        }
    }
}

/// Answers with an error and closes. The close lingers: what the client is still sending is
/// read and dropped for a moment, because closing with unread data makes the kernel send a
/// reset that can destroy the response before the client reads it (a 431 to a client still
/// writing its oversized head, say).
pub(super) async fn reply_and_close<S: AsyncReadRent + AsyncWriteRent>(
    conn: &mut BufConn<S>,
    e: &ProxyError,
) {
    const LINGER: Duration = Duration::from_millis(500);
    const DRAIN: usize = 1024 * 1024;
    warn_operator(e);
    let _ = conn.write_all(e.response(true)).await;
    let _ = conn.flush().await;
    let _ = conn.io.shutdown().await;
    let until = Instant::now() + LINGER;
    let mut drained = conn.buffered().len();
    conn.consume(drained);
    while drained < DRAIN {
        let left = until.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, conn.fill()).await {
            Ok(Ok(n)) if n > 0 => {
                drained += n;
                let all = conn.buffered().len();
                conn.consume(all);
            }
            _ => return,
        }
    }
}

/// Shortest time between two log lines about the same kind of error from one worker.
const WARN_EVERY: Duration = Duration::from_secs(10);

thread_local! {
    /// Per kind of event: when this worker last logged one, and how many happened since
    /// without a line.
    static WARNED: RefCell<HashMap<&'static str, (Instant, u64)>> = RefCell::new(HashMap::new());
}

/// Whether this worker may log an event of kind `key` now: at most once every [`WARN_EVERY`].
/// `Some(n)`: log it, saying `n` like it went unlogged since the last line; `None`: counted.
pub(super) fn may_warn(key: &'static str) -> Option<u64> {
    let now = Instant::now();
    WARNED.with_borrow_mut(|warned| match warned.get_mut(key) {
        Some((last, quiet)) if now.duration_since(*last) < WARN_EVERY => {
            *quiet += 1;
            None
        }
        Some((last, quiet)) => {
            *last = now;
            Some(std::mem::take(quiet))
        }
        None => {
            warned.insert(key, (now, 0));
            Some(0)
        }
    })
}

/// Logs an error that airlock itself is to blame for ([`Blame::Airlock`]: a credential that
/// cannot be opened, the request log or the store unwritable, the connection cap, a stale fleet
/// node, the corporate proxy refusing airlock), and a failed upstream TLS handshake: the agent's
/// answer says what happened, the operator reads it here. Errors of the agent or the upstream
/// are the request log's. At most one line per kind per worker every [`WARN_EVERY`], counting
/// those answered in between.
fn warn_operator(e: &ProxyError) {
    // A failed upstream handshake is the upstream's, but usually fixed by the operator (a
    // private CA to trust): it is told too.
    if e.kind().blame() != Blame::Airlock && e.kind() != ErrorKind::UpstreamTlsError {
        return;
    }
    if let Some(suppressed) = may_warn(e.code()) {
        tracing::warn!(
            code = e.code(),
            suppressed,
            "answered {}: {}",
            e.status(),
            e.message()
        );
    }
}

/// Answers a CONNECT with 200; false when the client is gone.
pub(super) async fn established<S: AsyncWriteRent>(client: &mut BufConn<S>) -> bool {
    const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";
    client.write_all(ESTABLISHED).await.is_ok()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use super::*;

    /// Reads one head from what `write` sends on the other end of a socket pair; the head (as
    /// text) or the error's code, and what stayed buffered after it.
    fn head_from(
        write: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (Result<Option<String>, &'static str>, Vec<u8>) {
        let (a, b) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || write(b));
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let mut conn = BufConn::new(monoio::net::UnixStream::from_std(a).unwrap());
            let wait = Duration::from_millis(300);
            let got = read_head(&mut conn, wait, wait).await;
            let got = got.map(|h| h.map(|h| String::from_utf8(h).unwrap()));
            (got.map_err(|e| e.code()), conn.buffered().to_vec())
        });
        writer.join().unwrap();
        got
    }

    /// A head is taken whole, what follows it (a body, a pipelined request) stays buffered; a
    /// close, a silent connection and a head dribbled slower than the timeout (row 35) end
    /// without one; a head over the cap is 431's error, whether or not it ever ends.
    #[test]
    fn heads_are_read_whole_within_their_time_and_size() {
        let head = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (got, rest) = head_from(move |mut b| {
            b.write_all(format!("{head}body").as_bytes()).unwrap();
        });
        assert_eq!((got, rest), (Ok(Some(head.to_owned())), b"body".to_vec()));
        assert_eq!(head_from(drop).0, Ok(None));
        let silent = head_from(|b| {
            std::thread::sleep(Duration::from_millis(500));
            drop(b);
        });
        assert_eq!(silent.0, Ok(None));
        let dribbled = head_from(|mut b| {
            for byte in b"GET / HTTP/1.1\r\nHost: slow\r\n" {
                if b.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        assert_eq!(
            dribbled.0,
            Ok(None),
            "a slow head is dropped at the header timeout"
        );
        let endless = head_from(|mut b| {
            let _ = b.write_all(b"GET / HTTP/1.1\r\nX: ");
            let _ = b.write_all(&vec![b'a'; MAX_HEAD + 1]);
        });
        assert_eq!(endless.0, Err("headers_too_large"));
    }
}
