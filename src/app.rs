//! The commands, wired from their parts: open the store, take the dispatcher lock, build the
//! client, run the dispatcher, report how it ended. `main.rs` only parses and calls these.

use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::api::Client;
use crate::clock::Clock;
use crate::config::Settings;
use crate::dispatcher::{Dispatcher, Exit, Totals};
use crate::lock::DispatcherLock;
use crate::metrics::{self, Metrics};
use crate::ops;
use crate::store::Store;

/// How `run` ended and what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunReport {
    pub exit: Exit,
    pub totals: Totals,
}

/// `lsq-revoker migrate`.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let store = Store::open(&settings.database.url)
        .await
        .with_context(|| format!("database.url = {:?}", settings.database.url))?;
    store.close().await;
    Ok(())
}

/// `lsq-revoker run [--until-idle]`: migrate, take the dispatcher lock (standing by while
/// another dispatcher holds it), serve `/metrics` and `/healthz` when `metrics.listen` is set,
/// then dispatch until cancelled or idle.
pub async fn run(
    settings: Arc<Settings>,
    until_idle: bool,
    cancel: CancellationToken,
) -> anyhow::Result<RunReport> {
    let client = Client::new(&settings.api)?;
    let store = Store::open(&settings.database.url)
        .await
        .with_context(|| format!("database.url = {:?}", settings.database.url))?;
    let _lock = match store.path() {
        Some(path) => match DispatcherLock::acquire(path, &cancel)
            .await
            .with_context(|| format!("locking {}", DispatcherLock::path_for(path).display()))?
        {
            Some(lock) => Some(lock),
            None => {
                store.close().await;
                return Ok(RunReport {
                    exit: Exit::Stopped,
                    totals: Totals::default(),
                });
            }
        },
        None => None,
    };
    info!(
        database = %settings.database.url,
        api = %settings.api.base_url,
        max_calls = settings.rate_limit.max_calls,
        window_ms = settings.rate_limit.window.as_millis() as u64,
        batch = settings.batch.max_size,
        max_in_flight = settings.api.max_in_flight,
        "dispatcher started"
    );
    // Served only once the lock is ours: a standby `run` with the same settings would otherwise
    // collide with the active one on `metrics.listen`, and its health would say nothing.
    let metrics = Metrics::new();
    let server = match settings.metrics.listen {
        Some(address) => Some(
            metrics::serve(
                address,
                metrics.clone(),
                store
                    .reader(&settings.database.url)
                    .await
                    .with_context(|| format!("database.url = {:?}", settings.database.url))?,
                cancel.child_token(),
            )
            .await
            .with_context(|| {
                format!("metrics.listen = {address}: cannot serve /metrics and /healthz there")
            })?,
        ),
        None => None,
    };
    let retention = tokio::spawn(ops::retain(
        store.clone(),
        settings.retention,
        cancel.child_token(),
    ));
    let mut dispatcher =
        Dispatcher::start(store.clone(), client, settings, Clock::new(), metrics).await?;
    let exit = dispatcher.run(cancel, until_idle).await;
    retention.abort();
    if let Some(server) = server {
        server.stop().await;
    }
    let exit = exit?;
    let totals = dispatcher.totals();
    info!(exit = ?exit, calls = totals.calls, jobs_submitted = totals.jobs_submitted, jobs_failed = totals.jobs_failed, "dispatcher stopped");
    store.close().await;
    Ok(RunReport { exit, totals })
}
