//! HTTP/1.1 plumbing shared by both legs of the proxy.
//!
//! - [`head`]: strict validation and zero-copy parsing of request and response heads (httparse
//!   over the read buffer), and framing decisions (R2).
//! - [`io`]: [`io::BufConn`], a buffered connection over monoio's owned-buffer I/O.
//! - [`body`]: streaming body relay that re-frames what it forwards (no client framing leaks).
//!
//! Nothing here knows about vaults, tokens or credentials.

pub mod body;
pub mod head;
pub mod io;
pub mod ws;

/// An HTTP-level failure with the status and stable code airlock answers with.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("bad_header: {0}")]
    BadHeader(&'static str),
    #[error("bad_framing: {0}")]
    BadFraming(&'static str),
    #[error("bad_request: {0}")]
    BadRequest(&'static str),
    #[error("headers_too_large: the request head exceeds {0} bytes or 100 headers")]
    HeadersTooLarge(usize),
    #[error("body_too_large: the body exceeds {0} bytes")]
    BodyTooLarge(u64),
}

impl HttpError {
    pub fn status(self) -> u16 {
        match self {
            Self::HeadersTooLarge(_) => 431,
            Self::BodyTooLarge(_) => 413,
            _ => 400,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::BadHeader(_) => "bad_header",
            Self::BadFraming(_) => "bad_framing",
            Self::BadRequest(_) => "bad_request",
            Self::HeadersTooLarge(_) => "headers_too_large",
            Self::BodyTooLarge(_) => "body_too_large",
        }
    }
}
