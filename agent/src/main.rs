//! `netdb`: the agent (`netdb agent`) and its command-line client.

fn main() -> std::process::ExitCode {
    netdb_agent::run_cli()
}
