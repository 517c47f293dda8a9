//! `netdb`: the agent (`netdb agent`) and its command-line client.

mod agent;
mod api;
mod cli;
mod client;
mod config;
mod doctor;
mod duration;
mod endpoint;
mod engine;
mod keyfile;
mod keys;
mod overlay;
mod reconcile;
mod server;
mod state;
mod streams;
mod tls;
mod watch;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
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
