//! `netdb-chaos`: a chaos run on a fresh cluster, with a timeline on
//! stderr, a verdict line, and a JSON report (and a PNG plot with
//! gnuplot). Exits non-zero on any violation. Needs root for the
//! namespace backend.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::{Parser, ValueEnum};
use netdb_chaos::Backend;
use netdb_chaos::docker::Docker;
use netdb_chaos::netns::Netns;
use netdb_chaos::scenario::{self, Config};

/// Where the hosts run.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendKind {
    /// Network namespaces on this machine, with the VXLAN data plane
    /// (root).
    Netns,
    /// Docker containers on a user-defined bridge network, table-only
    /// agents from `--image` (a running Docker daemon).
    Docker,
}

/// Command line of `netdb-chaos`.
#[derive(Debug, Parser)]
#[command(
    name = "netdb-chaos",
    about = "Faults on a netdb cluster, invariants checked after each heal"
)]
struct Args {
    /// Hosts in the cluster.
    #[arg(long, default_value_t = 5)]
    hosts: usize,
    /// About how long the faults run, in seconds (every kind of fault
    /// runs once however short).
    #[arg(long, default_value_t = 120)]
    duration: u64,
    /// Seed of the schedule and the writes: the same seed, the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the JSON report (and, beside it, a .png plot).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Where the hosts run.
    #[arg(long, value_enum, default_value_t = BackendKind::Netns)]
    backend: BackendKind,
    /// The `netdb` binary (default: beside this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// The `netdb-netem` binary for delays (default: beside this one).
    #[arg(long)]
    netem: Option<PathBuf>,
    /// The agents' image of the docker backend (agent/dist/docker/build).
    #[arg(long)]
    image: Option<String>,
    /// Namespace prefix of the netns backend.
    #[arg(long, default_value = "ndcs")]
    prefix: String,
    /// Underlay /24 (3 octets) of the netns backend.
    #[arg(long, default_value = "10.222.0")]
    underlay: String,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("netdb-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A binary installed beside this one.
fn beside_me(given: Option<PathBuf>, name: &str) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path);
    }
    let me = std::env::current_exe().context("where is netdb-chaos")?;
    let path = me.with_file_name(name);
    ensure!(path.exists(), "no {} (build it, or give its path)", path.display());
    Ok(path)
}

/// The cluster the run uses; the one place a backend is chosen.
fn backend(args: &Args) -> Result<Box<dyn Backend>> {
    Ok(match args.backend {
        BackendKind::Netns => {
            ensure!(
                is_root(),
                "the netns backend needs root (namespaces, veth, VXLAN, nftables): run it with sudo"
            );
            let bin = beside_me(args.bin.clone(), "netdb")?;
            let netem = beside_me(args.netem.clone(), "netdb-netem")?;
            Box::new(Netns::up(&bin, &netem, &args.prefix, &args.underlay, args.hosts))
        }
        BackendKind::Docker => {
            let image = args.image.as_deref().context(
                "--backend docker needs --image (build one with agent/dist/docker/build)",
            )?;
            Box::new(Docker::up(args.hosts, image, &args.prefix)?)
        }
    })
}

/// Whether we run as root (`id -u` is 0).
fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run() -> Result<bool> {
    let args = Args::parse();
    // Ctrl-C or SIGTERM ends the run at its next tick; the backend's drop
    // then removes the cluster.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("signal handler")?;
    }
    let mut backend = backend(&args)?;
    let config = Config { seed: args.seed, duration: Duration::from_secs(args.duration) };
    let report = scenario::run(backend.as_mut(), &config, &stop)?;
    drop(backend);
    println!("{}", report.verdict());
    if let Some(path) = &args.report {
        write_report(&report, path)?;
    }
    Ok(report.passed())
}

fn write_report(report: &netdb_chaos::report::Report, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(&report.to_json()).context("report as JSON")?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    println!("report: {}", path.display());
    let png = path.with_extension("png");
    if report.plot(&png, scenario::CONVERGENCE_BOUND).context("plot")? {
        println!("plot: {}", png.display());
    } else {
        println!("no plot: gnuplot is not installed (apt-get install gnuplot-nox)");
    }
    Ok(())
}
