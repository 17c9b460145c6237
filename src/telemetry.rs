//! Logging: a tracing subscriber on stderr whose filter can be swapped at
//! runtime (SIGHUP), human-readable on a terminal and JSON lines otherwise
//! (`[log] format = "auto"`), with the `log` records of libraries bridged in.
//!
//! Metrics live in [`crate::metrics`].

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LogConfig;

/// Directives appended to every filter: whatsapp-rust logs the phone-number
/// pairing code (a credential) at info under these targets.
const SECRET_TARGETS: &str = "Client/PairCode=warn,Bot/PairCode=warn";

/// `filter` with the [`SECRET_TARGETS`] kept quiet.
pub fn guarded_filter(filter: &str) -> Result<EnvFilter, String> {
    let filter = filter.trim().trim_end_matches(',');
    let text = if filter.is_empty() {
        SECRET_TARGETS.to_string()
    } else {
        format!("{filter},{SECRET_TARGETS}")
    };
    EnvFilter::try_new(text).map_err(|e| e.to_string())
}

/// Swaps the log filter of the running subscriber.
#[derive(Clone)]
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at start: it wins over `[log] filter`, also on reload.
    from_env: bool,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle")
            .field("from_env", &self.from_env)
            .finish_non_exhaustive()
    }
}

/// What a reload did with the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterReload {
    Applied,
    /// `RUST_LOG` is set and keeps precedence.
    HeldByEnv,
}

impl LogHandle {
    /// Installs `filter` (already checked by `Config::check`).
    pub fn set_filter(&self, filter: &str) -> Result<FilterReload, String> {
        if self.from_env {
            return Ok(FilterReload::HeldByEnv);
        }
        let filter = guarded_filter(filter)?;
        self.filter.reload(filter).map_err(|e| e.to_string())?;
        Ok(FilterReload::Applied)
    }
}

/// Whether `format` (`auto`, `human`/`text` or `json`) means JSON here.
pub fn use_json(format: &str, stderr_is_terminal: bool) -> bool {
    match format {
        "json" => true,
        "auto" => !stderr_is_terminal,
        _ => false,
    }
}

/// Installs the global subscriber (and the `log` bridge). Returns `None` if
/// one was already installed (tests).
pub fn init(config: &LogConfig) -> Option<LogHandle> {
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| guarded_filter(&v).ok());
    let from_env = env.is_some();
    let filter = env.unwrap_or_else(|| {
        guarded_filter(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"))
    });
    let (filter, handle) = reload::Layer::new(filter);
    let terminal = std::io::stderr().is_terminal();
    let json = use_json(&config.format, terminal);
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
    });
    let human_layer = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(terminal)
            .with_writer(std::io::stderr)
    });
    // With the `tracing-log` feature, `try_init` also installs the LogTracer
    // that turns libraries' `log` records into events.
    tracing_subscriber::registry()
        .with(filter)
        .with(json_layer)
        .with(human_layer)
        .try_init()
        .ok()?;
    Some(LogHandle {
        filter: handle,
        from_env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pairing_code_targets_stay_quiet() {
        for filter in ["info", "debug,whatsd=trace", "", "info,"] {
            let f = guarded_filter(filter).unwrap().to_string();
            assert!(f.contains("Client/PairCode=warn"), "{f}");
        }
    }

    #[test]
    fn auto_is_json_unless_on_a_terminal() {
        assert!(use_json("auto", false));
        assert!(!use_json("auto", true));
        assert!(use_json("json", true));
        assert!(!use_json("human", false));
        assert!(!use_json("text", false));
    }
}
