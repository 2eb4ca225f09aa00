//! `airlock logs`: the request log, as a table or JSON lines, optionally followed.

use super::output::rfc3339;
use super::{CliError, Ctx};
use crate::requestlog::{self, Row};

pub fn run(ctx: &Ctx, vault: &str, follow: bool, json: bool) -> Result<(), CliError> {
    ctx.open_store()?.vault(vault)?;
    let read = |after| {
        requestlog::read(&ctx.data_dir, Some(vault), after).map_err(|e| CliError::Io {
            what: "request log".into(),
            source: std::io::Error::other(e.to_string()),
        })
    };
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
        "{:<20}  {:<7} {:<28} {:<32} {:>6} {:>9} {:>8.1}  {:<12} {:<12} {}",
        rfc3339(r.at_ms / 1000),
        r.method,
        r.host,
        r.path,
        r.status,
        r.bytes,
        r.latency_us as f64 / 1000.0,
        r.service.as_deref().unwrap_or("-"),
        r.agent.as_deref().unwrap_or("-"),
        r.error.as_deref().unwrap_or("")
    );
}
