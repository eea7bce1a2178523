//! Logs for an operator: one JSON object per line on stdout (or plain text), filtered by
//! `logging.level` unless `RUST_LOG` is set.
//!
//! The HTTP and SQL libraries are held at `warn` whatever the level: their debug output is
//! not for operators, and an HTTP library's URL can carry the keys in `query` auth mode.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingSettings};

const QUIET_LIBRARIES: &str =
    "hyper=warn,hyper_util=warn,reqwest=warn,h2=warn,rustls=warn,sqlx=warn,axum=warn";

#[derive(Debug, thiserror::Error)]
#[error(
    "setting `logging.level` is not a valid filter ({0}); use e.g. \"info\" or \"lsq_revoker=debug\" (or LSQ_REVOKER__LOGGING__LEVEL)"
)]
pub struct FilterError(String);

/// Install the global subscriber. Call once, before any work.
pub fn init(settings: &LoggingSettings) -> Result<(), FilterError> {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.trim().is_empty())
        .unwrap_or_else(|| settings.level.clone());
    let filter = EnvFilter::try_new(format!("{directives},{QUIET_LIBRARIES}"))
        .map_err(|err| FilterError(err.to_string()))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .init(),
        LogFormat::Text => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}
