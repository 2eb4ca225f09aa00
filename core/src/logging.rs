//! Logging to stderr for both processes: the level from `$AIRLOCK_LOG`, else the config's
//! `log_level`, else `info`, changeable at run time through [`LogHandle::set`] (SIGHUP reload).
//!
//! Under systemd (`$JOURNAL_STREAM` set) lines carry a `<N>` syslog priority prefix, which
//! journald turns into the entry's priority, and no timestamp or colour (journald adds its own
//! time). Elsewhere lines are the usual `tracing` format, coloured on a terminal. This module
//! only formats; callers decide what is logged and must never pass a secret.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use tracing::Level;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, format};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, reload};

/// A log level as written in the config file or `$AIRLOCK_LOG`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn filter(self) -> LevelFilter {
        LevelFilter::from_level(match self {
            Self::Error => Level::ERROR,
            Self::Warn => Level::WARN,
            Self::Info => Level::INFO,
            Self::Debug => Level::DEBUG,
            Self::Trace => Level::TRACE,
        })
    }

    /// `$AIRLOCK_LOG` when it names a level (it wins over the config, for debugging a unit),
    /// else `configured`, else info.
    fn effective(configured: Option<Self>) -> Self {
        std::env::var("AIRLOCK_LOG")
            .ok()
            .and_then(|l| l.parse().ok())
            .or(configured)
            .unwrap_or(Self::Info)
    }
}

impl FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| format!("{s:?} is not a log level (error, warn, info, debug, trace)"))
    }
}

/// Changes the level of the installed logger.
#[derive(Clone, Debug)]
pub struct LogHandle(Option<reload::Handle<LevelFilter, Registry>>);

impl LogHandle {
    /// Applies a re-read config's level (`$AIRLOCK_LOG` still wins); a no-op when another
    /// logger was installed first, as in tests.
    pub fn set(&self, configured: Option<LogLevel>) {
        if let Some(h) = &self.0
            && let Err(e) = h.reload(LogLevel::effective(configured).filter())
        {
            tracing::warn!("changing the log level failed: {e}");
        }
    }
}

/// Installs the stderr logger at `level` (unless `$AIRLOCK_LOG` overrides it).
pub fn init(configured: Option<LogLevel>) -> LogHandle {
    let (filter, handle) = reload::Layer::new(LogLevel::effective(configured).filter());
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let plain = (!journald).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
    });
    let journal = journald.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(Journald(format().without_time().with_target(false)))
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(plain)
        .with(journal)
        .try_init()
        .is_ok();
    LogHandle(installed.then_some(handle))
}

/// Prefixes each line with its syslog priority (`<3>` error ... `<7>` debug), as sd-daemon(3)
/// describes for services whose stderr goes to journald.
struct Journald<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_case_insensitively_and_name_the_choices() {
        assert_eq!("WARN".parse::<LogLevel>(), Ok(LogLevel::Warn));
        assert_eq!("debug".parse::<LogLevel>(), Ok(LogLevel::Debug));
        let err = "loud".parse::<LogLevel>().unwrap_err();
        assert!(err.contains("error, warn, info, debug, trace"), "{err}");
    }
}
