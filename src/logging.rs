//! Process logging: `RUST_LOG` sets the level, `--log-format` the format.
//! The access log (one line per request, target `access`) is written by
//! `proxy::log`.
//!
//! Lines are formatted where they happen and written by a thread of their
//! own, through a bounded queue: a request never waits on stderr. When the
//! queue is full (a reader that cannot keep up), lines are dropped and
//! counted (`floodgate_log_lines_dropped_total`) rather than slowing the
//! gateway down. In daemon mode (`--daemon`, where the process forks after
//! this runs and the thread would not survive) lines are written directly.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Output format of every log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Lines the queue holds before new ones are dropped.
const QUEUE_LINES: usize = 64 * 1024;

/// The writer thread's guard (flushes on exit) and its drop counter.
static WRITER: OnceLock<(WorkerGuard, ErrorCounter)> = OnceLock::new();

/// Lines dropped because the writer fell behind, since start.
pub fn dropped_lines() -> u64 {
    WRITER.get().map_or(0, |(_, c)| c.dropped_lines() as u64)
}

/// Installs the global subscriber. `RUST_LOG` sets the level (default
/// `info`). Pingora logs through the `log` crate; those lines are bridged.
/// `direct`: write on the calling thread (daemon mode).
pub fn init(format: LogFormat, direct: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if direct {
        let builder = builder.with_writer(std::io::stderr);
        let _ = match format {
            LogFormat::Text => builder.with_target(true).try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        };
        return;
    }
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("floodgate-log")
        .finish(std::io::stderr());
    let _ = WRITER.set((guard, writer.error_counter()));
    let builder = builder.with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.with_target(true).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
