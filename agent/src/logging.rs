//! The agent's log: human-readable lines or JSON lines on stderr, behind a
//! filter the API can change while the agent runs (`netdb log-level`).

use std::io;

use anyhow::Context;
use clap::ValueEnum;
use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// One line per event for people: time, level, target, message, fields.
    #[default]
    Text,
    /// One JSON object per line for log collectors, fields at the top level.
    Json,
}

/// The running agent's log filter.
#[derive(Clone)]
pub(crate) struct LogControl {
    filter: reload::Handle<EnvFilter, Registry>,
}

impl LogControl {
    /// The filter in force.
    pub(crate) fn current(&self) -> String {
        self.filter.with_current(ToString::to_string).unwrap_or_default()
    }

    /// Puts `filter` in force; returns the one it replaced. A filter that
    /// does not parse changes nothing.
    pub(crate) fn set(&self, filter: &str) -> anyhow::Result<String> {
        let new = parse(filter)?;
        let previous = self.current();
        // Said before the change, under the filter that was asked for:
        // the new one may hide info lines.
        tracing::info!(%previous, current = %new, "log filter changed");
        self.filter.reload(new).context("cannot change the log filter")?;
        Ok(previous)
    }
}

/// A filter from its text, with the error a user can act on.
fn parse(filter: &str) -> anyhow::Result<EnvFilter> {
    EnvFilter::try_new(filter).with_context(|| {
        format!("bad log filter {filter:?}: use error, warn, info, debug, trace or tracing directives such as info,netdb=debug")
    })
}

/// Installs the process-wide subscriber; the agent calls it once.
pub(crate) fn init(filter: &str, format: LogFormat) -> anyhow::Result<LogControl> {
    let (filter, handle) = reload::Layer::new(parse(filter)?);
    let lines = tracing_subscriber::fmt::layer().with_writer(io::stderr).with_ansi(false);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(lines).try_init(),
        LogFormat::Json => registry.with(lines.json().flatten_event(true)).try_init(),
    }
    .context("cannot install the logger")?;
    Ok(LogControl { filter: handle })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_refused_with_examples() {
        let err = parse("info,=bogus=x").unwrap_err().to_string();
        assert!(err.contains("bad log filter") && err.contains("debug"), "{err}");
        assert_eq!(parse("info,netdb=debug").unwrap().to_string(), "netdb=debug,info");
    }

    #[test]
    fn the_filter_changes_in_place_and_says_what_it_was() {
        let (layer, handle) = reload::Layer::<_, Registry>::new(parse("info").unwrap());
        let _subscriber = tracing_subscriber::registry().with(layer);
        let control = LogControl { filter: handle };
        assert_eq!(control.set("debug").unwrap(), "info");
        assert_eq!(control.current(), "debug");
        assert!(control.set("=").is_err());
        assert_eq!(control.current(), "debug", "a refused filter changes nothing");
    }
}
