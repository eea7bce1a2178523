//! The `lsq-revoker` binary: parse the command line, load settings, set up logs, run the
//! command, report how it ended. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use lsq_revoker::config::{LogFormat, Settings};
use lsq_revoker::{app, demo, ops, telemetry};
use tokio_util::sync::CancellationToken;

/// Drains a SQLite queue of LeadSquared lead-access revocations into paced, batched Revoke calls.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Settings file (TOML), layered over the built-in defaults and under LSQ_REVOKER__* variables.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Run the dispatcher (migrates first). Stops cleanly on SIGTERM or Ctrl-C.
    Run {
        /// Exit 0 once no job is pending, in flight or waiting for a retry.
        #[arg(long)]
        until_idle: bool,
    },
    /// Run the whole service against the built-in simulator and a throwaway database.
    Demo,
    /// Add jobs: one from flags, or many from a CSV or JSON-lines file (or standard input).
    Enqueue(lsq_revoker::enqueue::EnqueueArgs),
    /// Jobs per status, retries, confirmations, failures, budget used, and the dispatcher's state.
    Stats {
        /// Print JSON (a stable shape, for scripts) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put failed jobs back to pending with their attempts reset.
    Requeue(ops::RequeueArgs),
    /// Delete completed jobs (and their finished requests) older than AGE.
    Prune(ops::PruneArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread is enough: the dispatcher is one loop, its calls wait on the network and SQLite
    // runs on sqlx's own thread. Idle worker threads of a multi-threaded runtime only add wake-ups.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start the async runtime: {err}")),
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&format!("{err:#}")),
    }
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    match cli.command {
        Command::Demo => {
            let mut logging = Settings::load_with(None, demo_log_env())?.logging;
            logging.format = LogFormat::Text;
            telemetry::init(&logging)?;
            tokio::spawn(stop_on_signal(cancel.clone()));
            let report = demo::run(demo::DemoOptions::default(), cancel).await?;
            println!("{report}");
            Ok(())
        }
        Command::Migrate => {
            let settings = Settings::load(cli.config.as_deref())?;
            telemetry::init(&settings.logging)?;
            app::migrate(&settings).await
        }
        Command::Stats { json } => {
            let settings = Settings::load(cli.config.as_deref())?;
            let stats = ops::stats(&settings).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!("{stats}");
            }
            Ok(())
        }
        Command::Requeue(args) => {
            let settings = Settings::load(cli.config.as_deref())?;
            println!("{}", ops::requeue(&settings, args).await?);
            Ok(())
        }
        Command::Prune(args) => {
            let settings = Settings::load(cli.config.as_deref())?;
            println!("{}", ops::prune(&settings, args).await?);
            Ok(())
        }
        Command::Enqueue(args) => {
            let settings = Settings::load(cli.config.as_deref())?;
            lsq_revoker::enqueue::run(&settings, args).await
        }
        Command::Run { until_idle } => {
            let settings = Settings::load(cli.config.as_deref())?;
            telemetry::init(&settings.logging)?;
            tokio::spawn(stop_on_signal(cancel.clone()));
            app::run(Arc::new(settings), until_idle, cancel)
                .await
                .map(drop)
        }
    }
}

/// The demo logs errors only, unless `RUST_LOG` asks for more.
fn demo_log_env() -> Vec<(String, String)> {
    vec![("LSQ_REVOKER__LOGGING__LEVEL".to_owned(), "error".to_owned())]
}

/// Cancel on SIGTERM or Ctrl-C; a second signal exits at once.
async fn stop_on_signal(cancel: CancellationToken) {
    shutdown_signal().await;
    tracing::info!("stop requested; finishing calls in flight");
    cancel.cancel();
    shutdown_signal().await;
    tracing::warn!("second stop request; exiting now");
    std::process::exit(130);
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
