//! How an exchange ends, as every step of the request path reports it to the request loop
//! ([`super::client::requests`]).

use super::error::ProxyError;
use super::upstream::UpIo;
use crate::http::HttpError;
use crate::http::io::BufConn;
use crate::scrub::Masker;

/// How an exchange ended.
#[derive(Debug)]
pub enum Outcome {
    /// The client connection may carry another request.
    KeepAlive,
    /// Close the client connection (after a response that said so).
    Close,
    /// The upstream accepted a WebSocket upgrade (101): relay frames both ways from here, those
    /// from upstream with these values masked.
    Upgraded(BufConn<UpIo>, Masker),
}

impl Outcome {
    /// After a response: keep the connection unless the client asked to close.
    pub fn after(client_close: bool) -> Self {
        if client_close {
            Self::Close
        } else {
            Self::KeepAlive
        }
    }
}

/// A failure: answer with an error response, or (once response bytes went out) just close.
#[derive(Debug)]
pub enum ExchangeError {
    Respond(ProxyError),
    Abort,
}

impl From<ProxyError> for ExchangeError {
    fn from(e: ProxyError) -> Self {
        Self::Respond(e)
    }
}

impl From<HttpError> for ExchangeError {
    fn from(e: HttpError) -> Self {
        Self::Respond(e.into())
    }
}
