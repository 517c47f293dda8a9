//! A chaos run on any [`Backend`]: the schedule's steps one after the
//! other (calm with writes, fault with writes, heal), the cluster waited
//! for after each heal and every invariant checked, a timeline as it goes
//! and a [`Report`] at the end.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;

use crate::cluster::Ep;
use crate::history::History;
use crate::invariants::{self, Check, Entry, Table, Violation, node_name};
use crate::report::{Report, StepReport};
use crate::schedule::{Step, describe, schedule};
use crate::{Backend, FaultKind};

/// How long the cluster may take to converge after a heal: a heal that
/// takes longer is a violation.
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(30);

/// The plain gossip network the runner writes on, joined by every host
/// (again after a restart: an agent keeps only the overlay networks it
/// has endpoints on in its data dir).
pub const NETWORK: &str = "chaos";
/// The user table the runner writes.
pub const TABLE: &str = "kv";

/// Time between two writes, and between two looks at the members.
const TICK: Duration = Duration::from_millis(250);

/// A run's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seeds the schedule and the writes.
    pub seed: u64,
    /// About how long the faults run (every kind runs at least once).
    pub duration: Duration,
}

/// One run in progress.
struct Run<'a> {
    backend: &'a mut dyn Backend,
    stop: &'a AtomicBool,
    rng: StdRng,
    history: History,
    start: Instant,
    /// Hosts whose agent cannot answer now (killed or paused).
    down: BTreeSet<usize>,
    next_key: usize,
    report: Report,
}

/// Runs the scenario on `backend`; stops early (an error) once `stop` is
/// set. Violations are in the report, not errors: an error is a run that
/// could not go on.
pub fn run(backend: &mut dyn Backend, config: &Config, stop: &AtomicBool) -> Result<Report> {
    let hosts = backend.hosts();
    ensure!(hosts >= 2, "a chaos run needs 2 hosts or more");
    let steps = schedule(config.seed, hosts, backend.kinds(), config.duration);
    let mut run = Run {
        backend,
        stop,
        rng: StdRng::seed_from_u64(config.seed ^ 0x5eed),
        history: History::default(),
        start: Instant::now(),
        down: BTreeSet::new(),
        next_key: 0,
        report: Report::new(config.seed, hosts, config.duration),
    };
    run.log(&format!("{} steps, seed {}, {hosts} hosts", steps.len(), config.seed));
    for h in 1..=hosts {
        run.cli_ok(h, &["network", "join", NETWORK])?;
    }
    let initial = run.converge()?;
    run.log(&format!("initial state converged in {:.1} s", initial.0.as_secs_f64()));
    ensure!(initial.1.is_empty(), "the cluster is not sound before any fault: {:?}", initial.1);
    for step in &steps {
        run.step(step)?;
    }
    let (puts, deletes) = run.history.counts();
    run.report.puts = puts;
    run.report.deletes = deletes;
    run.report.elapsed = run.start.elapsed();
    Ok(run.report)
}

impl Run<'_> {
    fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn log(&self, line: &str) {
        eprintln!("t={:6.1}s {line}", self.t());
    }

    fn step(&mut self, step: &Step) -> Result<()> {
        self.period(step.calm, Some(false))?;
        if step.fault.kind == FaultKind::Kill {
            // A write no peer received dies with a killed process; the
            // history expects every acknowledged write to live on.
            self.converge()?;
        }
        let what = describe(&step.fault);
        let inject_at = self.t();
        self.log(&format!("inject {what}"));
        self.backend.inject(&step.fault).with_context(|| format!("inject {what}"))?;
        if matches!(step.fault.kind, FaultKind::Kill | FaultKind::Pause) {
            self.down.extend(&step.fault.hosts);
        }
        // Members may be suspected while a fault is in force, except Busy.
        let busy = step.fault.kind == FaultKind::Busy;
        self.period(step.hold, busy.then_some(true))?;
        let effect = self.effect()?;
        self.log(&format!("in force: {effect}"));
        let heal_at = self.t();
        self.backend.heal(&step.fault).with_context(|| format!("heal {what}"))?;
        // A killed agent restarts live: it joins the runner's network again
        // by itself, and the checks below see whether it did.
        self.down.clear();
        self.log(&format!("heal {what}"));
        let (took, mut violations) = self.converge()?;
        let converged = violations.is_empty();
        if converged {
            self.log(&format!("converged in {:.1} s", took.as_secs_f64()));
            violations = self.reach_and_names();
        } else {
            self.log(&format!("NOT converged within {CONVERGENCE_BOUND:?}"));
            violations.push(Violation::new(
                Check::Converged,
                format!("not converged {CONVERGENCE_BOUND:?} after heal of {what}"),
            ));
        }
        self.verdict(&violations);
        self.report.steps.push(StepReport {
            fault: step.fault.clone(),
            what,
            effect,
            inject_at,
            heal_at,
            converged_in: converged.then_some(took),
            violations,
        });
        Ok(())
    }

    /// The checks' outcome on the timeline; the report has every
    /// violation, the timeline the first few.
    fn verdict(&self, violations: &[Violation]) {
        const SHOWN: usize = 8;
        if violations.is_empty() {
            self.log("checks ok");
        }
        for v in violations.iter().take(SHOWN) {
            self.log(&format!("VIOLATION {v}"));
        }
        if violations.len() > SHOWN {
            self.log(&format!(
                "... and {} more violations (see the report)",
                violations.len() - SHOWN
            ));
        }
    }

    /// Writes for `length`; with `suspicion` = Some(busy), the members are
    /// watched too and a non-alive one is a violation.
    fn period(&mut self, length: Duration, suspicion: Option<bool>) -> Result<()> {
        let end = Instant::now() + length;
        while Instant::now() < end {
            if self.stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            let tick = Instant::now() + TICK;
            self.write()?;
            if let Some(busy) = suspicion {
                for v in self.suspicions(busy)? {
                    self.log(&format!("VIOLATION {v}"));
                    if busy {
                        self.report.suspicions_busy += 1;
                    } else {
                        self.report.suspicions_calm += 1;
                    }
                    self.report.calm_violations.push((self.t(), v));
                }
            }
            std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        }
        Ok(())
    }

    /// What the live agents make of the members at the end of a fault,
    /// to show it was in force: `h1: h3 suspect; ...`.
    fn effect(&self) -> Result<String> {
        let mut seen = Vec::new();
        for h in self.live() {
            let others: Vec<String> = self
                .members(h)?
                .into_iter()
                .filter(|(_, state)| state != "alive")
                .map(|(name, state)| format!("{name} {state}"))
                .collect();
            if !others.is_empty() {
                seen.push(format!("h{h}: {}", others.join(", ")));
            }
        }
        Ok(if seen.is_empty() {
            "every member alive as seen by the live hosts".into()
        } else {
            seen.join("; ")
        })
    }

    fn live(&self) -> Vec<usize> {
        (1..=self.backend.hosts()).filter(|h| !self.down.contains(h)).collect()
    }

    /// One write on a random live host: a new key, an overwrite or a
    /// delete of one of its own keys.
    fn write(&mut self) -> Result<()> {
        let live = self.live();
        if live.is_empty() {
            return Ok(());
        }
        let h = live[self.rng.random_range(0..live.len())];
        let own = self.history.present(h);
        let roll = self.rng.random_range(0..4);
        if own.is_empty() || roll < 2 {
            self.next_key += 1;
            let key = format!("{}-k{}", node_name(h), self.next_key);
            self.put(h, &key)
        } else {
            let key = &own[self.rng.random_range(0..own.len())];
            if roll == 2 {
                self.put(h, key)
            } else {
                self.cli_ok(h, &["table", "delete", NETWORK, TABLE, key])?;
                self.history.delete(h, key);
                Ok(())
            }
        }
    }

    fn put(&mut self, h: usize, key: &str) -> Result<()> {
        let value = format!("v{}", self.rng.random_range(0..1_000_000u32));
        self.cli_ok(h, &["table", "put", NETWORK, TABLE, key, &value])?;
        self.history.put(h, key, &value);
        Ok(())
    }

    fn cli_ok(&self, h: usize, args: &[&str]) -> Result<Vec<u8>> {
        let o = self.backend.cli(h, args)?;
        ensure!(
            o.status.success(),
            "netdb {args:?} on h{h}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(o.stdout)
    }

    fn json(&self, h: usize, args: &[&str]) -> Result<Value> {
        let out = self.cli_ok(h, &[args, &["-o", "json"]].concat())?;
        serde_json::from_slice(&out).with_context(|| format!("JSON of netdb {args:?} on h{h}"))
    }

    /// (name, state) of the members host `h` knows.
    fn members(&self, h: usize) -> Result<Vec<(String, String)>> {
        let v = self.json(h, &["members"])?;
        let list = v.as_array().context("members: not a list")?;
        Ok(list.iter().map(|m| (str_of(m, "name"), str_of(m, "state"))).collect())
    }

    fn suspicions(&self, busy: bool) -> Result<Vec<Violation>> {
        let mut out = Vec::new();
        for h in self.live() {
            out.extend(invariants::members(h, &self.members(h)?, busy));
        }
        Ok(out)
    }

    fn table(&self, h: usize) -> Result<Table> {
        let v = self.json(h, &["table", "dump", NETWORK, TABLE])?;
        let list = v.as_array().context("table dump: not a list")?;
        Ok(list
            .iter()
            .map(|e| {
                (str_of(e, "key"), Entry { owner: str_of(e, "owner"), value: str_of(e, "value") })
            })
            .collect())
    }

    fn endpoints(&self, h: usize) -> Result<Vec<Ep>> {
        let v = self.json(h, &["endpoint", "ls"])?;
        let list = v.as_array().context("endpoint ls: not a list")?;
        Ok(list
            .iter()
            .map(|e| (str_of(e, "name"), str_of(e, "host"), str_of(e, "ip"), str_of(e, "mac")))
            .collect())
    }

    /// Every check that converges (members, tables, endpoints, kernel),
    /// once.
    fn checks(&self) -> Result<Vec<Violation>> {
        let hosts = self.backend.hosts();
        let mut out = self.suspicions(false)?;
        let mut tables = Vec::new();
        for h in 1..=hosts {
            match self.table(h) {
                Ok(table) => tables.push((h, table)),
                // A restarted agent is in the runner's network again once
                // it synced with a peer; until then it holds none of it.
                Err(e) => {
                    out.push(Violation::new(Check::Lost, format!("h{h} shows no table: {e:#}")))
                }
            }
        }
        out.extend(invariants::tables(&tables, &self.history));
        let eps = (1..=hosts).map(|h| Ok((h, self.endpoints(h)?))).collect::<Result<Vec<_>>>()?;
        if let Some(c) = self.backend.namespaces().filter(|_| self.backend.dataplane()) {
            out.extend(invariants::endpoints(&eps, hosts));
            let overlay = crate::netns::NETWORK;
            let vni = self.json(1, &["network", "inspect", overlay])?["network"]["vni"]
                .as_u64()
                .context("network inspect: no VNI")?;
            for h in 1..=hosts {
                let actual = (c.fdb(h, vni), c.neigh(h, vni));
                out.extend(invariants::kernel(h, &actual, &c.expected(h, &eps[0].1)));
            }
        } else {
            out.extend(invariants::endpoints(&eps, eps.first().map_or(0, |e| e.1.len())));
        }
        Ok(out)
    }

    /// Waits until every converging check passes, up to
    /// [`CONVERGENCE_BOUND`]; how long it took and what still failed.
    fn converge(&self) -> Result<(Duration, Vec<Violation>)> {
        let start = Instant::now();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            let violations = self.checks()?;
            if violations.is_empty() || start.elapsed() > CONVERGENCE_BOUND {
                return Ok((start.elapsed(), violations));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// (e) and (f) once converged: every container pings every other one,
    /// and resolves the next one's name to its address (a ping or a lookup
    /// gets three tries: the first packet may wait for ARP-less paths to
    /// settle).
    fn reach_and_names(&self) -> Vec<Violation> {
        let Some(c) = self.backend.namespaces().filter(|_| self.backend.dataplane()) else {
            return Vec::new();
        };
        let Ok(eps) = self.endpoints(1) else {
            return vec![Violation::new(Check::Reach, "h1 lists no endpoints")];
        };
        let tries = |f: &dyn Fn() -> bool| (0..3).any(|_| f());
        let mut out = Vec::new();
        for (i, from) in eps.iter().enumerate() {
            for to in eps.iter().filter(|to| to.0 != from.0) {
                if !tries(&|| c.ping(&from.0, &to.2)) {
                    out.push(Violation::new(
                        Check::Reach,
                        format!("{} ({}) does not reach {} at {}", from.0, from.1, to.0, to.2),
                    ));
                }
            }
            let next = &eps[(i + 1) % eps.len()];
            if next.0 != from.0 {
                let want = vec![next.2.clone()];
                if !tries(&|| c.resolve(&from.0, &next.0).as_ref() == Some(&want)) {
                    out.push(Violation::new(
                        Check::Names,
                        format!(
                            "{} resolves {} to {:?}, the table says {}",
                            from.0,
                            next.0,
                            c.resolve(&from.0, &next.0),
                            next.2
                        ),
                    ));
                }
            }
        }
        out
    }
}

/// Field `k` of a JSON object as a string (empty when absent).
fn str_of(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}
