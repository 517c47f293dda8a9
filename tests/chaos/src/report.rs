//! What a run found: per fault its times and violations, the suspicions
//! seen while calm or busy, figures; as JSON, a verdict line and a plot.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::invariants::Violation;
use crate::{Fault, FaultKind};

/// One fault of the run.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// The fault.
    pub fault: Fault,
    /// It, in words.
    pub what: String,
    /// The members' states the live hosts saw at the end of it.
    pub effect: String,
    /// Seconds into the run when it was injected.
    pub inject_at: f64,
    /// Seconds into the run when it was healed.
    pub heal_at: f64,
    /// How long after the heal every converging check passed; none if
    /// they did not within the bound.
    pub converged_in: Option<Duration>,
    /// What the checks after its heal found.
    pub violations: Vec<Violation>,
}

/// A whole run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The schedule's seed.
    pub seed: u64,
    /// Hosts in the cluster.
    pub hosts: usize,
    /// The duration asked for.
    pub duration: Duration,
    /// How long the run took.
    pub elapsed: Duration,
    /// Faults in order.
    pub steps: Vec<StepReport>,
    /// Violations seen outside the checks after a heal (suspicions while
    /// calm or busy), with their time.
    pub calm_violations: Vec<(f64, Violation)>,
    /// Suspect or failed members seen with no fault in force.
    pub suspicions_calm: usize,
    /// Suspect or failed members seen while both cores were busy.
    pub suspicions_busy: usize,
    /// Writes the runner made.
    pub puts: usize,
    /// Deletes the runner made.
    pub deletes: usize,
}

impl Report {
    /// An empty report of a run starting.
    pub fn new(seed: u64, hosts: usize, duration: Duration) -> Report {
        Report {
            seed,
            hosts,
            duration,
            elapsed: Duration::ZERO,
            steps: Vec::new(),
            calm_violations: Vec::new(),
            suspicions_calm: 0,
            suspicions_busy: 0,
            puts: 0,
            deletes: 0,
        }
    }

    /// Every violation, in the order found.
    pub fn violations(&self) -> Vec<&Violation> {
        let after_heals = self.steps.iter().flat_map(|s| &s.violations);
        self.calm_violations.iter().map(|(_, v)| v).chain(after_heals).collect()
    }

    /// Whether no invariant was broken.
    pub fn passed(&self) -> bool {
        self.violations().is_empty()
    }

    /// Convergence times after the heals that converged, sorted.
    fn convergences(&self) -> Vec<f64> {
        let mut v: Vec<f64> =
            self.steps.iter().filter_map(|s| s.converged_in).map(|d| d.as_secs_f64()).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// (median, worst) convergence time in seconds.
    pub fn convergence_figures(&self) -> (Option<f64>, Option<f64>) {
        let v = self.convergences();
        (v.get(v.len() / 2).copied(), v.last().copied())
    }

    /// The verdict line.
    pub fn verdict(&self) -> String {
        let (median, worst) = self.convergence_figures();
        let secs = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.1} s"));
        format!(
            "{}: {} faults, {} violations, {} puts and {} deletes, convergence median {} worst {}, \
             false suspicions {} calm / {} busy, seed {}, {:.0} s",
            if self.passed() { "PASS" } else { "FAIL" },
            self.steps.len(),
            self.violations().len(),
            self.puts,
            self.deletes,
            secs(median),
            secs(worst),
            self.suspicions_calm,
            self.suspicions_busy,
            self.seed,
            self.elapsed.as_secs_f64(),
        )
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let violation = |v: &Violation| json!({ "check": v.check.name(), "detail": v.detail });
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                json!({
                    "kind": format!("{:?}", s.fault.kind),
                    "fault": s.what,
                    "effect": s.effect,
                    "inject_at_s": s.inject_at,
                    "heal_at_s": s.heal_at,
                    "converged_in_s": s.converged_in.map(|d| d.as_secs_f64()),
                    "checks": if s.violations.is_empty() { "passed" } else { "failed" },
                    "violations": s.violations.iter().map(violation).collect::<Vec<_>>(),
                })
            })
            .collect();
        let (median, worst) = self.convergence_figures();
        let failed = self.steps.iter().filter(|s| !s.violations.is_empty()).count();
        json!({
            "seed": self.seed,
            "hosts": self.hosts,
            "duration_s": self.duration.as_secs_f64(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "passed": self.passed(),
            "faults": steps,
            "checks": { "passed": self.steps.len() - failed, "failed": failed },
            "calm_violations": self.calm_violations.iter()
                .map(|(t, v)| json!({ "at_s": t, "check": v.check.name(), "detail": v.detail }))
                .collect::<Vec<_>>(),
            "false_suspicions": { "calm": self.suspicions_calm, "busy": self.suspicions_busy },
            "convergence_s": { "median": median, "worst": worst },
            "writes": { "puts": self.puts, "deletes": self.deletes },
        })
    }

    /// Plots the convergence time after each heal to `png` with gnuplot
    /// (a heal that did not converge is a bar at `bound`), a colour per
    /// kind of fault; `Ok(false)` when gnuplot is not installed.
    pub fn plot(&self, png: &Path, bound: Duration) -> Result<bool> {
        // Each bar names its fault while the names stay readable; past
        // that, bars are numbered and the report names them.
        let named = self.steps.len() <= NAMED_BARS;
        let mut data = String::new();
        for (i, s) in self.steps.iter().enumerate() {
            let took = s.converged_in.unwrap_or(bound).as_secs_f64();
            let colour = FaultKind::ALL.iter().position(|k| *k == s.fault.kind).unwrap_or(0) + 1;
            data += &format!("{} {took:.3} {colour} \"{}\"\n", i + 1, s.what.replace('"', "'"));
        }
        let kinds: Vec<String> = FaultKind::ALL.iter().map(|k| k.name()).collect();
        let (xlabel, axis, using) = if named {
            ("fault", "set bmargin 9\nset xtics rotate by -35\n", "1:2:3:xtic(4)")
        } else {
            ("heal (the report names each fault)", "", "1:2:3")
        };
        let script = format!(
            "set terminal png size 1000,500\nset output '{}'\n\
             set title 'netdb chaos: convergence after each heal (seed {}, {} hosts; {} s: not converged)'\n\
             set ylabel 'seconds'\nset xlabel '{xlabel}'\nset style fill solid 0.6\n\
             set boxwidth 0.7\nset key outside right\n{axis}set xrange [0:{}]\nset yrange [0:*]\n\
             plot '-' using {using} with boxes lc variable notitle, \
             for [i=1:{}] NaN with boxes lc i title word('{}', i)\n{data}e\n",
            png.display(),
            self.seed,
            self.hosts,
            bound.as_secs(),
            self.steps.len() + 1,
            kinds.len(),
            kinds.join(" "),
        );
        let child = Command::new("gnuplot").stdin(Stdio::piped()).stderr(Stdio::piped()).spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).context("run gnuplot"),
        };
        child
            .stdin
            .take()
            .context("gnuplot's stdin")?
            .write_all(script.as_bytes())
            .context("write to gnuplot")?;
        let o = child.wait_with_output().context("wait for gnuplot")?;
        ensure!(o.status.success(), "gnuplot: {}", String::from_utf8_lossy(&o.stderr));
        Ok(true)
    }
}

/// Bars beyond this many are numbered, not named.
const NAMED_BARS: usize = 30;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::Check;

    fn step(took: Option<u64>, violations: Vec<Violation>) -> StepReport {
        StepReport {
            fault: Fault {
                kind: FaultKind::Busy,
                hosts: vec![],
                groups: vec![],
                percent: 0,
                delay: Duration::ZERO,
                jitter: Duration::ZERO,
                kbit: 0,
            },
            what: "busy".into(),
            effect: String::new(),
            inject_at: 1.0,
            heal_at: 2.0,
            converged_in: took.map(Duration::from_secs),
            violations,
        }
    }

    #[test]
    fn a_violation_anywhere_fails_the_run_and_figures_skip_unconverged_heals() {
        let mut r = Report::new(1, 3, Duration::from_secs(10));
        r.steps = vec![step(Some(3), vec![]), step(Some(1), vec![]), step(None, vec![])];
        assert!(r.passed());
        assert_eq!(r.convergence_figures(), (Some(3.0), Some(3.0)));
        r.steps[2].violations.push(Violation::new(Check::Converged, "not converged"));
        assert!(!r.passed() && r.verdict().starts_with("FAIL"), "{}", r.verdict());
        let j = r.to_json();
        assert_eq!(j["checks"]["failed"], 1);
        assert_eq!(j["faults"][2]["converged_in_s"], Value::Null);

        let mut calm = Report::new(1, 3, Duration::from_secs(10));
        calm.calm_violations.push((0.5, Violation::new(Check::Suspicion, "h2 suspect")));
        assert!(!calm.passed());
    }

    #[test]
    fn the_plot_renders_few_heals_by_name_and_many_by_number() {
        if Command::new("gnuplot").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "CI installs gnuplot-nox for this test");
            eprintln!("SKIP: no gnuplot");
            return;
        }
        let dir = std::env::temp_dir().join(format!("netdb-chaos-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in [3, NAMED_BARS + 20] {
            let mut r = Report::new(1, 3, Duration::from_secs(10));
            r.steps = (0..n).map(|i| step((i % 4 != 3).then_some(i as u64 % 5), vec![])).collect();
            for (i, s) in r.steps.iter_mut().enumerate() {
                s.fault.kind = FaultKind::ALL[i % FaultKind::ALL.len()];
            }
            let png = dir.join(format!("{n}.png"));
            assert!(r.plot(&png, Duration::from_secs(30)).unwrap(), "gnuplot ran");
            let bytes = std::fs::read(&png).unwrap();
            assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 5000, "{n} heals: a real PNG");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
