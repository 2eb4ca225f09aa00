//! One builder for the curl commands of the tests: through airlock as an agent (its proxy URL,
//! trusting its CA), or straight to an address whatever the proxy variables say; the status
//! code appended, a bearer or a JSON body added; run and collected as a [`Run`].

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::{Run, output};

/// A curl command being built.
pub(crate) struct Curl(Command);

impl Curl {
    /// `curl -sS --max-time 30`.
    pub(crate) fn new() -> Self {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "30"]);
        Self(c)
    }

    /// Through the proxy at `proxy_url` (`http://TOKEN:VAULT@ADDR`), trusting the CA in `ca`.
    pub(crate) fn via(proxy_url: &str, ca: &Path) -> Self {
        Self::new().through(proxy_url, ca)
    }

    /// As [`Curl::via`], on a command already started.
    pub(crate) fn through(self, proxy_url: &str, ca: &Path) -> Self {
        self.args(["--proxy", proxy_url]).arg("--cacert").arg(ca)
    }

    /// Straight to the URL's address (`--noproxy '*'`).
    pub(crate) fn direct() -> Self {
        Self::new().args(["--noproxy", "*"])
    }

    /// The whole run may take `secs` seconds (the last `--max-time` given wins).
    pub(crate) fn max_time(self, secs: u32) -> Self {
        self.arg("--max-time").arg(secs.to_string())
    }

    /// stdout ends with a space and the status code.
    pub(crate) fn status(self) -> Self {
        self.args(["-w", " %{http_code}"])
    }

    /// `Authorization: Bearer TOKEN`.
    pub(crate) fn bearer(self, token: &str) -> Self {
        self.arg("-H").arg(format!("Authorization: Bearer {token}"))
    }

    /// `body` as the request's JSON body (which makes it a POST unless `-X` says otherwise).
    pub(crate) fn json(self, body: &Value) -> Self {
        self.args(["-H", "content-type: application/json", "--data-binary"])
            .arg(body.to_string())
    }

    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.0.arg(arg);
        self
    }

    pub(crate) fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.0.args(args);
        self
    }

    /// The command, for a caller that runs it another way (with stdin, as another user).
    pub(crate) fn command(self) -> Command {
        self.0
    }

    /// Runs it to completion.
    pub(crate) fn run(self) -> Run {
        output(self.0, None)
    }
}
