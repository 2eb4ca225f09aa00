//! The agent API on the proxy port (origin-form requests): `/healthz` and `/v1/ca.pem` need no
//! token; the proposal endpoints come with the proposals work. Unknown paths get a JSON 404.

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::Shared;
use super::error::ProxyError;
use super::forward::{ExchangeError, Outcome};
use crate::http::head::{self, Framing};
use crate::http::io::BufConn;

pub async fn handle<C: AsyncReadRent + AsyncWriteRent>(
    shared: &Shared,
    client: &mut BufConn<C>,
    n: usize,
) -> Result<Outcome, ExchangeError> {
    let (method, path, framing, close) = {
        let req = head::parse_request(&client.buffered()[..n])?;
        let path = req.target.split('?').next().unwrap_or_default().to_owned();
        (
            req.method.to_owned(),
            path,
            head::request_framing(&req)?,
            head::wants_close(req.version, &req.headers),
        )
    };
    client.consume(n);
    if framing != Framing::Empty {
        return Err(
            ProxyError::new(404, "not_found", "no agent API endpoint takes a body yet").into(),
        );
    }
    let (content_type, body) = match (method.as_str(), path.as_str()) {
        ("GET", "/healthz") => ("application/json", br#"{"status":"ok"}"#.to_vec()),
        ("GET", "/v1/ca.pem") => ("application/x-pem-file", shared.ca_pem.as_bytes().to_vec()),
        _ => {
            return Err(ProxyError::new(
                404,
                "not_found",
                format!("no agent API endpoint {method} {path}"),
            )
            .into());
        }
    };
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
        body.len()
    )
    .into_bytes();
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    client
        .write_all(out)
        .await
        .map_err(|_| ExchangeError::Abort)?;
    client.flush().await.map_err(|_| ExchangeError::Abort)?;
    Ok(if close {
        Outcome::Close
    } else {
        Outcome::KeepAlive
    })
}
