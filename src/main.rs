//! The `floodgate` binary: CLI → config → server → run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use floodgate::config;
use floodgate::logging::{self, LogFormat};
use floodgate::server::{self, RunOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An edge gateway that protects APIs from overload.
#[derive(Parser, Debug)]
#[command(name = "floodgate", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Config file to run with.
    #[arg(short, long, value_name = "PATH", default_value = config::DEFAULT_PATH)]
    conf: PathBuf,
    /// Validate config files, print every error with its key path and line,
    /// exit 1 on any error.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    check: Option<Vec<PathBuf>>,
    /// Take over the listeners of a running instance (binary upgrade).
    #[arg(short, long)]
    upgrade: bool,
    /// Run in the background.
    #[arg(short, long)]
    daemon: bool,
    /// Log line format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Exit 0 when the instance whose admin endpoint is ADDR is ready.
    Health {
        /// Admin address, `host:port`.
        #[arg(long, default_value = "127.0.0.1:9091")]
        admin: String,
    },
    /// Print the admin REST API's OpenAPI 3.1 description (what
    /// `GET /api/v1/openapi.json` serves and `docs/admin-api.json` holds).
    Openapi,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, cli.daemon);
    match cli.command {
        Some(Command::Health { admin }) => return health(&admin),
        Some(Command::Openapi) => {
            print!("{}", floodgate::admin::rest::openapi::document());
            return ExitCode::SUCCESS;
        }
        None => {}
    }
    if let Some(files) = cli.check {
        return check(&files);
    }
    // Read before the config is: a change in between makes the watcher
    // reload (the same content again, at worst), never miss it.
    let config_version = floodgate::services::watcher::file_version(&cli.conf);
    let config = match config::load(&cli.conf) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(1);
        }
    };
    let opts = RunOptions {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        config_version,
    };
    let prepared = match server::prepare(config, &cli.conf, &opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("floodgate: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(conf = %cli.conf.display(), "floodgate starting");
    prepared.server.run_forever()
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for f in files {
        match config::load(f) {
            Ok(_) => println!("{}: ok", f.display()),
            Err(e) => {
                failed = true;
                print!("{e}");
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// A dependency-free readiness probe for container health checks (a
/// blocking CLI command: no runtime, no async).
#[allow(clippy::disallowed_methods)]
fn health(admin: &str) -> ExitCode {
    use std::io::{Read, Write};
    use std::time::Duration;
    let attempt = || -> std::io::Result<bool> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(admin)?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "GET /ready HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf.starts_with("HTTP/1.1 200"))
    };
    match attempt() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("floodgate at {admin} is not ready");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("floodgate at {admin}: {e}");
            ExitCode::from(1)
        }
    }
}
