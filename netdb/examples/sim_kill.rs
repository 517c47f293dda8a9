//! How long a crash takes to be known everywhere, over many seeds: a
//! cluster formed long ago runs 5 s calm, one member crashes, and each
//! other member's time to hold it failed is recorded. Prints, over the
//! seeds, the time until the first and the last member hold it failed
//! (median, p90, p99, max), how many seeds took longer than the target,
//! and the stragglers (the last member more than a second after the
//! first). Issue 15's target at 30 agents: ≤ 2.5 s in every run.
//!
//! `cargo run --release -p netdb --features sim --example sim_kill -- [N [SEEDS]] [--loss P] [--random-probes] [--no-heard-probes]`
//! (30 nodes, 400 seeds and no loss unless given; `--loss` loses that
//! share of datagrams, which makes members miss the Down news; the flags
//! turn off the probes along the address ring and the probes of heard
//! suspects, for comparison).

use std::time::{Duration, Instant};

use netdb::sim::{NetConfig, Sim, config_from_args};
use netdb::{Config, MemberState};

const TARGET: Duration = Duration::from_millis(2500);
const STEP: Duration = Duration::from_millis(10);

fn main() {
    let (cfg, mut args) = config_from_args(std::env::args().skip(1));
    let mut net = NetConfig::default();
    if let Some(i) = args.iter().position(|a| a == "--loss") {
        net.loss = args.get(i + 1).and_then(|p| p.parse().ok()).unwrap_or(0.1);
        args.drain(i..(i + 2).min(args.len()));
    }
    let nums: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let n = nums.first().copied().unwrap_or(30) as usize;
    let seeds = nums.get(1).copied().unwrap_or(400);
    let (ring, heard) = (cfg.ring_probes, cfg.probe_heard_suspects);
    let wall = Instant::now();
    let (mut first, mut last) = (Vec::new(), Vec::new());
    let mut stragglers = Vec::new();
    for seed in 0..seeds {
        let (f, l) = kill(seed, n, cfg.clone(), net.clone());
        if l.saturating_sub(f) > Duration::from_secs(1) {
            stragglers.push((seed, f, l));
        }
        first.push(f);
        last.push(l);
    }
    let late = last.iter().filter(|&&t| t > TARGET).count();
    let on = |b: bool| if b { "on" } else { "off" };
    println!(
        "{n} nodes, {seeds} seeds, loss {:.0} %, ring probes {}, heard suspects probed {}",
        net.loss * 100.0,
        on(ring),
        on(heard)
    );
    println!("{:>22} {:>8} {:>8} {:>8} {:>8}", "", "median", "p90", "p99", "max");
    for (what, v) in [("first holds it failed", &mut first), ("all hold it failed", &mut last)] {
        v.sort();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64();
        println!(
            "{what:>22} {:>7.2}s {:>7.2}s {:>7.2}s {:>7.2}s",
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0)
        );
    }
    println!(
        "above {:.1} s: {late} of {seeds} ({:.2} %); stragglers (last > first + 1 s): {}",
        TARGET.as_secs_f64(),
        100.0 * late as f64 / seeds as f64,
        stragglers.len()
    );
    for (seed, f, l) in stragglers {
        println!("  seed {seed}: first {:.2} s, last {:.2} s", f.as_secs_f64(), l.as_secs_f64());
    }
    println!("wall {:.1} s", wall.elapsed().as_secs_f64());
}

/// One crash: the times from it until the first and the last other
/// member hold the victim failed.
fn kill(seed: u64, n: usize, cfg: Config, net: NetConfig) -> (Duration, Duration) {
    let mut sim = Sim::new(seed, cfg, net);
    for _ in 0..n {
        sim.add_node();
    }
    sim.form_converged(&[]);
    sim.run_for(Duration::from_secs(5));
    let victim = (seed as usize * 7 + 3) % n;
    let name = sim.name(victim).to_string();
    sim.crash(victim);
    let start = sim.now();
    let mut seen: Vec<Option<Duration>> = vec![None; n];
    seen[victim] = Some(Duration::ZERO);
    while seen.iter().any(Option::is_none) {
        assert!(sim.now() - start < Duration::from_secs(60), "seed {seed}: not found in 60 s");
        sim.run_for(STEP);
        let now = sim.now() - start;
        for (i, at) in seen.iter_mut().enumerate().filter(|(_, at)| at.is_none()) {
            let failed = sim.node(i).is_some_and(|x| {
                x.members().iter().any(|m| m.name == name && m.state == MemberState::Failed)
            });
            if failed {
                *at = Some(now);
            }
        }
    }
    let times = seen.iter().enumerate().filter(|&(i, _)| i != victim).filter_map(|(_, t)| *t);
    let first = times.clone().min().unwrap_or_default();
    (first, times.max().unwrap_or_default())
}
