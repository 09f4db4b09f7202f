//! `floodgate-load`: load-test Floodgate or any HTTP/1.1 endpoint.
//!
//!   floodgate-load http://127.0.0.1:8080/ --connections 64 --duration 10s
//!   floodgate-load http://127.0.0.1:8080/ --rate 2000 --clients 1000 --tokens 10-500 --json

use std::process::ExitCode;

use clap::Parser;
use floodgate_tools::load::{self, LoadSpec, Pace};

/// Load-test an HTTP endpoint: closed loop (N connections as fast as they
/// go) or open loop (--rate, latency from each request's intended send time).
#[derive(Parser, Debug)]
#[command(name = "floodgate-load", version)]
struct Cli {
    /// Target URL (http://host:port/path).
    url: String,
    /// Connections (closed loop), or the most requests in flight (open loop).
    #[arg(short, long, default_value_t = 64)]
    connections: usize,
    /// Requests per second: an open loop at this rate.
    #[arg(short, long)]
    rate: Option<f64>,
    /// How long to run ("10s", "1m").
    #[arg(short, long, default_value = "10s")]
    duration: String,
    /// Distinct client ids to spread requests over (0: send none).
    #[arg(long, default_value_t = 0)]
    clients: u64,
    /// Header carrying the client id.
    #[arg(long, default_value = "x-client-id")]
    client_header: String,
    /// Token estimates, a range "MIN-MAX" or one number.
    #[arg(long)]
    tokens: Option<String>,
    /// Extra header, "Name: value" (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s")]
    timeout: String,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dur = |s: &str| floodgate_tools::parse_duration(s);
    let (duration, timeout) = match (dur(&cli.duration), dur(&cli.timeout)) {
        (Ok(d), Ok(t)) => (d, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("floodgate-load: {e}");
            return ExitCode::from(2);
        }
    };
    let tokens = match cli.tokens.as_deref().map(|t| match t.split_once('-') {
        Some((a, b)) => a.parse().ok().zip(b.parse().ok()),
        None => t.parse().ok().map(|n| (n, n)),
    }) {
        None => None,
        Some(Some(r)) => Some(r),
        Some(None) => {
            eprintln!("floodgate-load: --tokens takes MIN-MAX or N");
            return ExitCode::from(2);
        }
    };
    let pace = match cli.rate {
        Some(rate) => Pace::Open {
            rate,
            connections: cli.connections,
        },
        None => Pace::Closed {
            connections: cli.connections,
        },
    };
    let mut spec = LoadSpec::new(&cli.url, pace, duration);
    spec.clients = cli.clients;
    spec.client_header = cli.client_header;
    spec.tokens = tokens;
    spec.timeout = timeout;
    spec.progress = !cli.quiet && !cli.json;
    for h in &cli.headers {
        match h.split_once(':') {
            Some((k, v)) => spec
                .headers
                .push((k.trim().to_string(), v.trim().to_string())),
            None => {
                eprintln!("floodgate-load: --header takes \"Name: value\"");
                return ExitCode::from(2);
            }
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floodgate-load: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(load::run(spec)) {
        Ok(r) if cli.json => {
            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(r) => {
            print!("{}", r.table());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("floodgate-load: {e}");
            ExitCode::from(1)
        }
    }
}
