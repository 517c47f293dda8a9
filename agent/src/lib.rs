//! The agent (`netdb agent`) and its command-line client, as a library so
//! that the `netdb` binary is one call to [`run_cli`] and fuzz targets can
//! reach the pure parts (behind the `fuzzing` feature).

mod accept;
mod agent;
mod alarm;
mod api;
mod cli;
mod client;
mod config;
mod dns;
mod docker;
mod doctor;
mod duration;
mod endpoint;
mod engine;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod keyfile;
mod keys;
mod life;
mod logging;
mod metrics;
mod output;
mod overlay;
mod reconcile;
mod reflection;
mod server;
mod state;
mod status;
mod streams;
mod tls;
mod watch;

use std::process::ExitCode;

use clap::Parser;

/// Parses the command line and runs what it asks for: the agent, a client
/// command, or generated completions and man page. The `netdb` binary's
/// whole `main`.
pub fn run_cli() -> ExitCode {
    let cli = cli::Cli::parse();
    // Generated from the CLI definition itself, so they never go stale.
    let generated = match cli.command {
        cli::Command::Completions { shell } => {
            let mut cmd = <cli::Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "netdb", &mut out);
            Some(Ok(out))
        }
        cli::Command::Man => {
            let cmd = <cli::Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            Some(clap_mangen::Man::new(cmd).render(&mut out).map(|()| out))
        }
        _ => None,
    };
    if let Some(text) = generated {
        // A reader that stops early (`| head`) is not an error.
        return match text.and_then(|t| std::io::Write::write_all(&mut std::io::stdout(), &t)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("netdb: cannot write: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // One thread: the core loop is single-threaded by design and the API is
    // light; more workers would only add memory and wake-ups.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netdb: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            cli::Command::Agent(args) => agent::run(*args, cli.api).await,
            cli::Command::Doctor { agent, client } => doctor::run(*agent, cli.api, &client).await,
            cmd => client::run(cli.api, cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netdb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
