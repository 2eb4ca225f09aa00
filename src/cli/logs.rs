//! `airlock logs`: the request log, newest first, filtered by time, agent, service, status and
//! error, as a table or JSON lines, optionally followed; with `--hosts`, the hosts agents tried
//! that have no service.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::output::rfc3339;
use super::{CliError, Ctx};
use crate::requestlog::{self, Filter, Row};

/// `airlock logs`'s flags.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    #[arg(long, default_value = "default")]
    pub vault: String,
    /// Only requests at or after this time: RFC 3339 (`2026-12-08T09:00:00Z`) or an age (`90s`,
    /// `30m`, `2h`, `7d`)
    #[arg(long, value_name = "WHEN")]
    since: Option<When>,
    /// Only requests before this time (as `--since`)
    #[arg(long, value_name = "WHEN")]
    until: Option<When>,
    /// At most this many requests (0: all); with `--follow`, how many to show before following
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Only this agent's requests (or, for scoped tokens of no agent, who minted the token)
    #[arg(long)]
    agent: Option<String>,
    /// Only requests served by this service
    #[arg(long)]
    service: Option<String>,
    /// Only this status (`404`) or class (`5xx`); `0` for requests that got none
    #[arg(long)]
    status: Option<Status>,
    /// Only requests that failed with this error code (`no_service`, `rule_denied`, ...)
    #[arg(long)]
    error: Option<String>,
    /// Keep printing new requests as they are logged (oldest first)
    #[arg(long)]
    follow: bool,
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
    /// The hosts agents tried that have no service, with counts and when last tried
    #[arg(long, conflicts_with = "follow")]
    pub hosts: bool,
}

/// A point in time on the command line: RFC 3339, or an age before now.
#[derive(Clone, Copy, Debug)]
struct When(SystemTime);

impl FromStr for When {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(at) = humantime::parse_rfc3339_weak(s) {
            return Ok(Self(at));
        }
        let age = humantime::parse_duration(s).map_err(|_| {
            format!(
                "{s:?} is neither an RFC 3339 time (2026-12-08T09:00:00Z) nor an age (30m, 2h, 7d)"
            )
        })?;
        // An age past the epoch means all of it (no panic on `--since 1000000years`).
        Ok(Self(
            SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH),
        ))
    }
}

impl When {
    fn ms(self) -> u64 {
        let since_epoch = self.0.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
    }
}

/// `--status`: one status, or a class.
#[derive(Clone, Copy, Debug)]
enum Status {
    Exactly(u16),
    Class(u16),
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a status (404), a class (4xx) or 0");
        match s.as_bytes() {
            [c, b'x' | b'X', b'x' | b'X'] if (b'1'..=b'5').contains(c) => {
                Ok(Self::Class(u16::from(c - b'0')))
            }
            _ => match s.parse::<u16>() {
                Ok(n) if n == 0 || (100..600).contains(&n) => Ok(Self::Exactly(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl LogsArgs {
    fn filter(&self) -> Filter {
        Filter {
            vault: Some(self.vault.clone()),
            service: self.service.clone(),
            agent: self.agent.clone(),
            class: match self.status {
                Some(Status::Class(c)) => Some(c),
                _ => None,
            },
            status: match self.status {
                Some(Status::Exactly(n)) => Some(n),
                _ => None,
            },
            error: self.error.clone(),
            since_ms: self.since.map(When::ms),
            until_ms: self.until.map(When::ms),
        }
    }
}

fn log_error(e: requestlog::LogError) -> CliError {
    CliError::Io {
        what: "request log".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn read(ctx: &Ctx, vault: &str, after: u64) -> Result<Vec<(u64, Row)>, CliError> {
    requestlog::read(&ctx.data_dir, Some(vault), after).map_err(log_error)
}

/// `--hosts`: refused hosts of `vault` it still has no service for, most recently tried first,
/// and a service to start from for the newest (the catalog's template when it has the host).
pub(super) fn hosts(ctx: &Ctx, vault: &str, json: bool) -> Result<(), CliError> {
    let store = ctx.open_store()?;
    store.vault(vault)?;
    let served = store.service_hosts(vault)?;
    let mut tried = requestlog::hosts_tried(&read(ctx, vault, 0)?);
    tried.retain(|t| !served.iter().any(|h| h.covers(&t.host)));
    if json {
        for t in &tried {
            say!("{}", serde_json::to_string(t).unwrap_or_default())?;
        }
        return Ok(());
    }
    say!(
        "{:<40} {:>6}  {:<20}  AGENTS",
        "HOST",
        "TRIES",
        "LAST TRIED"
    )?;
    for t in &tried {
        say!(
            "{:<40} {:>6}  {:<20}  {}",
            t.host,
            t.tries,
            rfc3339(t.last_ms / 1000),
            t.agents.join(", ")
        )?;
    }
    if let Some(t) = tried.first() {
        say!(
            "\nTo serve {}, save this (edit the credential key) and run\n  airlock service set --vault {vault} -f FILE\nthen set the credential, or let the agent propose it (POST /v1/proposals):\n\n{}",
            t.host,
            crate::catalog::draft(&t.host).trim_end()
        )?;
    }
    Ok(())
}

/// The newest `--limit` requests the flags admit, newest first; with `--follow`, those oldest
/// first and then each new one as it is logged.
pub(super) fn run(ctx: &Ctx, args: &LogsArgs) -> Result<(), CliError> {
    ctx.open_store()?.vault(&args.vault)?;
    let filter = args.filter();
    let mut rows = requestlog::newest(&ctx.data_dir, &filter, args.limit).map_err(log_error)?;
    if !args.json {
        say!(
            "{:<20}  {:<7} {:<28} {:<32} {:>6} {:>9} {:>8}  {:<12} {:<12} ERROR",
            "TIME",
            "METHOD",
            "HOST",
            "PATH",
            "STATUS",
            "BYTES",
            "MS",
            "SERVICE",
            "AGENT"
        )?;
    }
    if !args.follow {
        return rows
            .iter()
            .try_for_each(|(_, row)| print_row(row, args.json));
    }
    rows.reverse();
    let mut last = rows.last().map_or(0, |(seq, _)| *seq);
    rows.iter()
        .try_for_each(|(_, row)| print_row(row, args.json))?;
    if last == 0 {
        last = requestlog::newest(&ctx.data_dir, &Filter::default(), 1)
            .map_err(log_error)?
            .first()
            .map_or(0, |(seq, _)| *seq);
    }
    loop {
        std::thread::sleep(Duration::from_millis(500));
        for (seq, row) in read(ctx, &args.vault, last)? {
            last = seq;
            if filter.admits(&row) {
                print_row(&row, args.json)?;
            }
        }
    }
}

fn print_row(r: &Row, json: bool) -> Result<(), CliError> {
    if json {
        return say!("{}", serde_json::to_string(r).unwrap_or_default());
    }
    say!(
        "{:<20}  {:<7} {:<28} {:<32} {:>6} {:>9} {:>8.1}  {:<12} {:<12} {}{}",
        rfc3339(r.at_ms / 1000),
        r.method,
        r.host,
        // The agent chose the path: bidi and control characters escaped (row 110).
        crate::text::inert(&r.path),
        r.status,
        r.bytes,
        r.latency_us as f64 / 1000.0,
        r.service.as_deref().unwrap_or("-"),
        r.agent.as_deref().unwrap_or("-"),
        r.error.as_deref().unwrap_or(""),
        r.rule
            .as_deref()
            .map(|n| format!(" rule={n}"))
            .unwrap_or_default()
    )
}
