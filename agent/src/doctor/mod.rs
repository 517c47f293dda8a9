//! `netdb doctor`: checks what this host needs to run the agent with the
//! given settings (resolved exactly as `netdb agent` resolves them), each
//! reported as pass, warn, fail or skip, with the fix for what fails. It
//! changes nothing on the host: kernel features are tried in a throwaway
//! network namespace, ports are bound for an instant, files only read.

mod dns;
mod files;
mod ports;
mod skew;
mod system;
pub(crate) mod underlay;

use std::time::Duration;

use anyhow::anyhow;
use netdb_api::netdb_client::NetdbClient;
use serde::Serialize;
use tonic::transport::Channel;

use crate::cli::{AgentArgs, ClientOpts, Output};
use crate::config::{self, Settings};
use crate::endpoint::{self, Endpoint};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Finding {
    Pass,
    /// Works today, but worth a look.
    Warn,
    /// The agent would not run, or not as configured: the fix says what
    /// to do.
    Fail,
    /// Does not apply to these settings (or could not be tried).
    Skip,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    pub check: &'static str,
    pub status: Finding,
    pub detail: String,
    /// A command or setting that fixes a failure or a warning.
    pub fix: Option<String>,
}

impl Check {
    pub(crate) fn new(check: &'static str, status: Finding, detail: impl Into<String>) -> Check {
        Check { check, status, detail: detail.into(), fix: None }
    }

    pub(crate) fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// How long the running agent gets to answer a quick question.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs every check, prints them, and fails when any check failed.
pub(crate) async fn run(
    args: AgentArgs,
    api: Option<Endpoint>,
    client: &ClientOpts,
) -> anyhow::Result<()> {
    let no_dataplane = args.no_dataplane;
    let mut checks = Vec::new();
    let settings =
        match config::resolve(args, api) {
            Ok(s) => {
                checks.push(Check::new(
                    "settings",
                    Finding::Pass,
                    format!(
                        "name {}, bind {}, advertise {}, API {}",
                        s.name, s.bind, s.advertise, s.api
                    ),
                ));
                Some(s)
            }
            Err(e) => {
                checks.push(Check::new("settings", Finding::Fail, format!("{e:#}")).fix(
                    "correct the setting named above (flag, NETDB_* variable or --config file)",
                ));
                None
            }
        };
    let dataplane = settings.as_ref().map_or(!no_dataplane, |s| s.dataplane);
    checks.push(system::privilege(dataplane));
    let tunnel = settings.as_ref().map(|s| s.advertise.ip());
    checks.extend(system::kernel(dataplane, tunnel).await);
    checks.push(system::nftables(dataplane));
    checks.push(system::forward_policy(dataplane));
    match &settings {
        Some(s) => {
            checks.push(system::overlay_namespace(dataplane, &s.overlay_netns));
            let mut agent = ask_agent(&s.api, client).await;
            checks.extend(on_settings(s, dataplane, &mut agent).await);
        }
        None => {
            let names = [
                "overlay netns",
                "gossip udp",
                "gossip tcp",
                "vxlan port",
                "underlay mtu",
                "data dir",
                "dns",
                "clock skew",
                "seeds",
                "neighbor table",
            ];
            for name in names {
                checks.push(Check::new(
                    name,
                    Finding::Skip,
                    "not tried: the settings do not resolve",
                ));
            }
        }
    }
    print(&checks, client.output);
    let failed = checks.iter().filter(|c| c.status == Finding::Fail).count();
    if failed > 0 {
        return Err(anyhow!("{failed} check(s) failed; each says how to fix it"));
    }
    Ok(())
}

/// The checks that need the resolved settings.
async fn on_settings(
    s: &Settings,
    dataplane: bool,
    agent: &mut Option<NetdbClient<Channel>>,
) -> Vec<Check> {
    let mut out = vec![
        ports::check("gossip udp", ports::Proto::Udp, s.bind, "gossip port", None),
        ports::check("gossip tcp", ports::Proto::Tcp, s.bind, "gossip port (push/pull)", None),
    ];
    if dataplane {
        let any = std::net::SocketAddr::from(([0, 0, 0, 0], s.vxlan_port));
        let overlay = Some(s.overlay_netns.as_path());
        out.push(ports::check("vxlan port", ports::Proto::Udp, any, "VXLAN", overlay));
    } else {
        out.push(Check::new("vxlan port", Finding::Skip, "--no-dataplane: no VXLAN devices"));
    }
    out.push(underlay::mtu(s, dataplane, agent).await);
    out.extend(files::secrets(s));
    out.push(files::data_dir(s));
    out.push(dns::check(s));
    out.push(skew::check(s, agent).await);
    out.push(underlay::seeds(s).await);
    out.push(underlay::neighbors(agent).await);
    out
}

/// A client of the agent these settings describe, if one answers.
async fn ask_agent(api: &Endpoint, client: &ClientOpts) -> Option<NetdbClient<Channel>> {
    let tls = client.tls.files();
    match tokio::time::timeout(ASK_TIMEOUT, endpoint::connect(api, &tls)).await {
        Ok(Ok(channel)) => Some(NetdbClient::new(channel)),
        _ => None,
    }
}

fn print(checks: &[Check], out: Output) {
    match out {
        Output::Json => println!("{}", serde_json::to_string(checks).unwrap_or_default()),
        Output::Table => {
            let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
            for c in checks {
                let status = match c.status {
                    Finding::Pass => "PASS",
                    Finding::Warn => "WARN",
                    Finding::Fail => "FAIL",
                    Finding::Skip => "SKIP",
                };
                println!("{status}  {:<width$}  {}", c.check, c.detail);
                if let Some(fix) = &c.fix {
                    println!("      {:<width$}  fix: {fix}", "");
                }
            }
            let count = |f: Finding| checks.iter().filter(|c| c.status == f).count();
            println!(
                "{} passed, {} warnings, {} failed, {} skipped",
                count(Finding::Pass),
                count(Finding::Warn),
                count(Finding::Fail),
                count(Finding::Skip)
            );
        }
    }
}
