//! `airlock logs`: the request log, as a table or JSON lines, optionally followed; with
//! `--hosts`, the hosts agents tried that have no service.

use super::output::rfc3339;
use super::{CliError, Ctx};
use crate::requestlog::{self, Row};

fn read(ctx: &Ctx, vault: &str, after: u64) -> Result<Vec<(u64, Row)>, CliError> {
    requestlog::read(&ctx.data_dir, Some(vault), after).map_err(|e| CliError::Io {
        what: "request log".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// `--hosts`: refused hosts of `vault`, most recently tried first, and how to add one.
pub(super) fn hosts(ctx: &Ctx, vault: &str, json: bool) -> Result<(), CliError> {
    ctx.open_store()?.vault(vault)?;
    let tried = requestlog::hosts_tried(&read(ctx, vault, 0)?);
    if json {
        for t in &tried {
            println!("{}", serde_json::to_string(t).unwrap_or_default());
        }
        return Ok(());
    }
    println!(
        "{:<40} {:>6}  {:<20}  AGENTS",
        "HOST", "TRIES", "LAST TRIED"
    );
    for t in &tried {
        println!(
            "{:<40} {:>6}  {:<20}  {}",
            t.host,
            t.tries,
            rfc3339(t.last_ms / 1000),
            t.agents.join(", ")
        );
    }
    if let Some(t) = tried.first() {
        println!(
            "\nTo serve one, add it with its credential, e.g.:\n  printf 'services:\\n  - name: NAME\\n    host: {}\\n    auth: {{type: bearer, token: KEY}}\\n' | airlock service set --vault {vault} -f -\nor let the agent propose it (POST /v1/proposals).",
            t.host
        );
    }
    Ok(())
}

pub(super) fn run(ctx: &Ctx, vault: &str, follow: bool, json: bool) -> Result<(), CliError> {
    ctx.open_store()?.vault(vault)?;
    let read = |after| read(ctx, vault, after);
    if !json {
        println!(
            "{:<20}  {:<7} {:<28} {:<32} {:>6} {:>9} {:>8}  {:<12} {:<12} ERROR",
            "TIME", "METHOD", "HOST", "PATH", "STATUS", "BYTES", "MS", "SERVICE", "AGENT"
        );
    }
    let mut last = 0;
    loop {
        for (seq, row) in read(last)? {
            last = seq;
            print_row(&row, json);
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn print_row(r: &Row, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    println!(
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
    );
}
