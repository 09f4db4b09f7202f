//! `floodgate-demo`: the bundled demo upstream, a JSON echo server.
//!
//!   floodgate-demo --listen 127.0.0.1:8000 --name demo

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Run the bundled demo upstream (a JSON echo server).
#[derive(Parser, Debug)]
#[command(name = "floodgate-demo", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: String,
    /// Name the server reports in its answers.
    #[arg(long, default_value = "demo")]
    name: String,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let tls = match cli.tls_cert.zip(cli.tls_key) {
        None => None,
        Some((cert, key)) => match floodgate_tools::demo::tls_acceptor(&cert, &key) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("floodgate-demo: {e}");
                return ExitCode::from(1);
            }
        },
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floodgate-demo: {e}");
            return ExitCode::from(1);
        }
    };
    let (listen, name) = (cli.listen, cli.name);
    rt.block_on(async {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("floodgate-demo: cannot listen on {listen}: {e}");
                return ExitCode::from(1);
            }
        };
        tracing::info!("demo upstream {name:?} listening on {listen}");
        floodgate_tools::demo::serve(listener, name, Default::default(), tls).await;
        ExitCode::SUCCESS
    })
}
