//! `cargo bench --bench throughput [-- SCENARIO…]`: the real `lsq-revoker` binary, measured from outside.
//!
//! Every run starts the compiled daemon (`run --until-idle`) against the crate's simulator, served
//! by this process on loopback, with a fresh SQLite file in a temporary directory. Figures are
//! read where the worker cannot flatter them: pacing from the arrival times the simulator saw,
//! CPU time and peak memory from the kernel (`getrusage` of the waited-for worker, see
//! [`ChildUsage`]), insert latency from a producer writing into the same file while the worker
//! drains it.
//!
//! Goals are printed next to the figures, not asserted: this is a measurement. A run that went
//! wrong (the child failed, a job was not submitted exactly once, the simulator refused a call)
//! measured nothing, so it stops the benchmark with a non-zero exit; so does a window holding
//! more calls than the limit, which is the one thing the worker must never do.
//!
//! Scenarios run in the order listed in [`SCENARIOS`], whatever order they are named in.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use lsq_revoker::config::Settings;
use lsq_revoker::demo::share_of_limit;
use lsq_revoker::simulator::{
    CallRecord, Endpoint, Simulator, SimulatorConfig, SimulatorStats, max_calls_in_any_window,
};
use lsq_revoker::store::{NewJob, StatusCounts, Store};
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::signal::{Signal, kill};
use nix::sys::time::TimeValLike;
use nix::unistd::Pid;
use tokio::sync::oneshot;

const WORKER: &str = env!("CARGO_BIN_EXE_lsq-revoker");
/// First argument that makes this binary the measuring parent of one worker (see [`ChildUsage`]).
const MEASURE_CHILD: &str = "--measure-child";

/// Name (what a command-line filter matches) and what the scenario shows.
const SCENARIOS: [(&str, &str); 4] = [
    (
        "throughput",
        "jobs per worker CPU-second and peak memory, 100k-job backlog, no rate limit",
    ),
    (
        "producers",
        "latency of single-row inserts by a producer while the worker drains a 100k backlog",
    ),
    (
        "pacing-instant",
        "the real top plan's limit (25 calls / 5 s), answers without delay",
    ),
    (
        "pacing-slow",
        "the same limit with answers taking 400-800 ms, then a fixed 800 ms",
    ),
];

/// The real top plan (Enterprise): 25 calls in any 5 s.
const PLAN_MAX_CALLS: usize = 25;
const PLAN_WINDOW: Duration = Duration::from_secs(5);
const PACING_BATCH: usize = 10;
/// How long a pacing run should take: long enough for several windows after the first burst.
const PACING_TARGET: Duration = Duration::from_secs(30);

const BACKLOG: usize = 100_000;
const THROUGHPUT_BATCH: usize = 100;
const THROUGHPUT_RUNS: usize = 3;
const PRODUCER_INSERTS: usize = 2_000;
/// How long the producer waits for the worker's first call before it starts inserting.
const FIRST_CALL_DEADLINE: Duration = Duration::from_secs(30);

const GOAL_SHARE_OF_LIMIT: f64 = 0.90;
const GOAL_JOBS_PER_CPU_SECOND: f64 = 100_000.0;
const GOAL_PEAK_RSS_MIB: f64 = 64.0;
const GOAL_INSERT_MAX: Duration = Duration::from_millis(50);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(MEASURE_CHILD) {
        return measure_child(&args[2..]);
    }
    println!("command: {}", args.join(" "));
    // cargo passes `--bench` to a harness-less bench; anything starting with `--` is not a filter.
    let filters: Vec<&str> = args
        .iter()
        .skip(1)
        .map(String::as_str)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let selected: Vec<&str> = SCENARIOS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| filters.is_empty() || filters.iter().any(|f| name.contains(f)))
        .collect();
    if selected.is_empty() {
        eprintln!(
            "no scenario matches {filters:?}; scenarios: {}",
            SCENARIOS.map(|(name, _)| name).join(", ")
        );
        return ExitCode::FAILURE;
    }
    println!("worker:  {WORKER}");
    println!(
        "machine: {} CPUs available; the simulator shares them with the worker",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_selected(&selected)) {
        Ok(Verdict { violations }) if violations.is_empty() => ExitCode::SUCCESS,
        Ok(Verdict { violations }) => {
            eprintln!("\nBENCHMARK FAILED: the worker broke the rate limit:");
            for violation in violations {
                eprintln!("  {violation}");
            }
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("\nBENCHMARK FAILED: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Hard failures found in runs that otherwise completed (a window over the limit).
#[derive(Default)]
struct Verdict {
    violations: Vec<String>,
}

async fn run_selected(selected: &[&str]) -> anyhow::Result<Verdict> {
    let mut verdict = Verdict::default();
    for &name in selected {
        let about = SCENARIOS
            .iter()
            .find(|(scenario, _)| *scenario == name)
            .map_or("", |(_, about)| about);
        println!("\n== {name}: {about}");
        match name {
            "throughput" => throughput().await?,
            "producers" => producers().await?,
            "pacing-instant" => pacing(&[Latency::Zero], &mut verdict).await?,
            "pacing-slow" => {
                pacing(&[Latency::Uniform400To800, Latency::Fixed800], &mut verdict).await?;
            }
            other => bail!("scenario {other} has no implementation"),
        }
    }
    Ok(verdict)
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

async fn throughput() -> anyhow::Result<()> {
    let env = unlimited_worker_env();
    print_config(&env, &unlimited_simulator(), BACKLOG)?;
    println!(
        "{:>4} {:>8} {:>6} {:>8} {:>22} {:>11} {:>12} {:>14}",
        "run",
        "jobs",
        "calls",
        "wall s",
        "cpu s (user + sys)",
        "jobs/cpu-s",
        "jobs/wall-s",
        "peak RSS MiB"
    );
    let mut runs = Vec::with_capacity(THROUGHPUT_RUNS);
    for run in 1..=THROUGHPUT_RUNS {
        let outcome = run_worker(RunSpec {
            jobs: BACKLOG,
            simulator: unlimited_simulator(),
            env: env.clone(),
            producer: None,
            deadline: Duration::from_secs(300),
        })
        .await
        .with_context(|| format!("throughput run {run}"))?;
        let usage = &outcome.usage;
        println!(
            "{:>4} {:>8} {:>6} {:>8.2} {:>22} {:>11.0} {:>12.0} {:>14.1}",
            run,
            outcome.jobs,
            outcome.stats.revoke_calls,
            outcome.wall.as_secs_f64(),
            format!(
                "{:.2} ({:.2} + {:.2})",
                usage.cpu().as_secs_f64(),
                usage.user.as_secs_f64(),
                usage.system.as_secs_f64()
            ),
            outcome.jobs_per_cpu_second(),
            outcome.jobs as f64 / outcome.wall.as_secs_f64(),
            usage.max_rss_mib,
        );
        runs.push(outcome);
    }
    let median_wall = median(runs.iter().map(|run| run.wall.as_secs_f64()));
    let median_cpu = median(runs.iter().map(|run| run.usage.cpu().as_secs_f64()));
    let median_rate = median(runs.iter().map(WorkerRun::jobs_per_cpu_second));
    let median_wall_rate = median(
        runs.iter()
            .map(|run| run.jobs as f64 / run.wall.as_secs_f64()),
    );
    let median_rss = median(runs.iter().map(|run| run.usage.max_rss_mib));
    let peak = runs
        .iter()
        .map(|run| run.usage.max_rss_mib)
        .fold(0.0, f64::max);
    let floor = runs
        .iter()
        .map(|run| run.usage.parent_hwm_mib)
        .fold(0.0, f64::max);
    println!(
        "{:>4} {:>8} {:>6} {:>8.2} {:>22.2} {:>11.0} {:>12.0} {:>14.1}",
        "med", "", "", median_wall, median_cpu, median_rate, median_wall_rate, median_rss
    );
    println!(
        "median jobs per worker CPU-second: {median_rate:.0} (goal >= {GOAL_JOBS_PER_CPU_SECOND:.0}: {})",
        met(median_rate >= GOAL_JOBS_PER_CPU_SECOND)
    );
    println!(
        "peak RSS over runs: {peak:.1} MiB (goal <= {GOAL_PEAK_RSS_MIB:.0}: {}; \
         includes a floor of up to {floor:.1} MiB from the measuring parent)",
        met(peak <= GOAL_PEAK_RSS_MIB)
    );
    Ok(())
}

async fn producers() -> anyhow::Result<()> {
    let env = unlimited_worker_env();
    print_config(&env, &unlimited_simulator(), BACKLOG)?;
    println!(
        "producer: {PRODUCER_INSERTS} single-row autocommit INSERTs, one after another, through its own connection \
         (SQLite defaults, 5 s busy timeout), started at the worker's first call"
    );
    let outcome = run_worker(RunSpec {
        jobs: BACKLOG,
        simulator: unlimited_simulator(),
        env,
        producer: Some(PRODUCER_INSERTS),
        deadline: Duration::from_secs(300),
    })
    .await
    .context("producer run")?;
    let Some(producer) = &outcome.producer else {
        bail!("the producer did not report");
    };
    let mut latencies = producer.latencies.clone();
    latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let max = latencies.last().copied().unwrap_or_default();
    println!(
        "{:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9} {:>11}",
        "inserts", "errors", "locked", "p50 ms", "p99 ms", "max ms", "span s", "worker busy"
    );
    println!(
        "{:>8} {:>7} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>11}",
        latencies.len(),
        producer.errors.len(),
        producer.locked(),
        ms(percentile(&latencies, 50)),
        ms(percentile(&latencies, 99)),
        ms(max),
        producer.span.as_secs_f64(),
        if producer.worker_still_running {
            "yes"
        } else {
            "NO"
        }
    );
    // SQLite's busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ms… between tries rather than queueing,
    // so waits for the write lock show up as steps in this profile.
    println!(
        "inserts slower than: {}",
        [1, 3, 8, 18, 33, 50]
            .map(|threshold| {
                let slower = latencies
                    .iter()
                    .filter(|latency| **latency > Duration::from_millis(threshold))
                    .count();
                format!("{threshold} ms: {slower}")
            })
            .join(" | ")
    );
    for error in producer.errors.iter().take(5) {
        println!("  error: {error}");
    }
    println!(
        "worker meanwhile: {} jobs in {:.2} s wall, {:.2} s CPU",
        outcome.jobs,
        outcome.wall.as_secs_f64(),
        outcome.usage.cpu().as_secs_f64()
    );
    let good = producer.errors.is_empty() && max < GOAL_INSERT_MAX;
    println!(
        "goal: zero errors and every insert < {} ms: {}",
        GOAL_INSERT_MAX.as_millis(),
        met(good)
    );
    if !producer.worker_still_running {
        println!(
            "  note: the worker finished before the last insert, so not every insert overlapped the drain"
        );
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Latency {
    Zero,
    Uniform400To800,
    Fixed800,
}

impl Latency {
    fn range(self) -> (Duration, Duration) {
        match self {
            Latency::Zero => (Duration::ZERO, Duration::ZERO),
            Latency::Uniform400To800 => (Duration::from_millis(400), Duration::from_millis(800)),
            Latency::Fixed800 => (Duration::from_millis(800), Duration::from_millis(800)),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Latency::Zero => "0 ms",
            Latency::Uniform400To800 => "400-800 ms",
            Latency::Fixed800 => "800 ms",
        }
    }
}

async fn pacing(latencies: &[Latency], verdict: &mut Verdict) -> anyhow::Result<()> {
    let env = worker_env(&[
        ("RATE_LIMIT__MAX_CALLS", PLAN_MAX_CALLS.to_string()),
        ("RATE_LIMIT__WINDOW_MS", PLAN_WINDOW.as_millis().to_string()),
        ("BATCH__MAX_SIZE", PACING_BATCH.to_string()),
    ]);
    let settings = load_settings(&env)?;
    let jobs = pacing_jobs(&settings);
    let simulator = |latency: Latency| SimulatorConfig {
        rate_limit: Some((PLAN_MAX_CALLS, PLAN_WINDOW)),
        latency: latency.range(),
        ..SimulatorConfig::default()
    };
    print_config(&env, &simulator(latencies[0]), jobs)?;
    println!(
        "backlog: {} bursts of {PLAN_MAX_CALLS} calls x {PACING_BATCH} jobs, one burst per window + safety margin, \
         so about {:.0} s of sending",
        jobs / (PLAN_MAX_CALLS * PACING_BATCH),
        PACING_TARGET.as_secs_f64()
    );
    println!(
        "{:>11} {:>6} {:>6} {:>15} {:>5} {:>15} {:>10} {:>8}",
        "latency",
        "jobs",
        "calls",
        "densest window",
        "429s",
        "share of limit",
        "sending s",
        "wall s"
    );
    for &latency in latencies {
        let outcome = run_worker(RunSpec {
            jobs,
            simulator: simulator(latency),
            env: env.clone(),
            producer: None,
            deadline: PACING_TARGET * 4,
        })
        .await
        .with_context(|| format!("pacing run, latency {}", latency.label()))?;
        let every_call: Vec<Duration> = outcome.calls.iter().map(|call| call.at).collect();
        let api_calls: Vec<Duration> = outcome
            .calls
            .iter()
            .filter(|call| call.endpoint != Endpoint::Other)
            .map(|call| call.at)
            .collect();
        let densest = max_calls_in_any_window(&every_call, PLAN_WINDOW);
        let share = share_of_limit(&api_calls, PLAN_MAX_CALLS, PLAN_WINDOW);
        // First to last arrival; the rest of the wall time is start-up and the way to idle.
        let sending = match (every_call.first(), every_call.last()) {
            (Some(first), Some(last)) => last.saturating_sub(*first),
            _ => Duration::ZERO,
        };
        println!(
            "{:>11} {:>6} {:>6} {:>15} {:>5} {:>14.1}% {:>10.2} {:>8.2}",
            latency.label(),
            outcome.jobs,
            every_call.len(),
            format!("{densest} / {PLAN_MAX_CALLS}"),
            outcome.stats.rate_limited,
            share * 100.0,
            sending.as_secs_f64(),
            outcome.wall.as_secs_f64()
        );
        if densest > PLAN_MAX_CALLS {
            verdict.violations.push(format!(
                "latency {}: {densest} calls in one {} ms window (limit {PLAN_MAX_CALLS})",
                latency.label(),
                PLAN_WINDOW.as_millis()
            ));
        }
        if latency.range().1 > Duration::ZERO {
            println!(
                "{:>11} goal share >= {:.0}%: {}",
                "",
                GOAL_SHARE_OF_LIMIT * 100.0,
                met(share >= GOAL_SHARE_OF_LIMIT)
            );
        }
    }
    Ok(())
}

/// Enough jobs for whole bursts of `max_calls` calls, one burst per `window + safety_margin`
/// (how the worker's sliding window spaces them when answers are instant), filling about
/// [`PACING_TARGET`] after the first burst: 1 + round(30 s / 5.1 s) = 7 bursts of 25 calls of
/// 10 jobs = 1,750 jobs with the defaults. Whole bursts keep the share-of-limit figure from
/// being diluted by a half-used last window.
fn pacing_jobs(settings: &Settings) -> usize {
    let limit = settings.rate_limit;
    let spacing = limit.window + limit.safety_margin;
    let bursts = 1 + (PACING_TARGET.as_secs_f64() / spacing.as_secs_f64()).round() as usize;
    bursts * limit.max_calls * settings.batch.max_size
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The settings every run shares; a run adds its own. Keys are without the `LSQ_REVOKER__` prefix.
fn worker_env(extra: &[(&str, String)]) -> Vec<(String, String)> {
    let keys = SimulatorConfig::default();
    let mut env = vec![
        ("API__ACCESS_KEY".to_owned(), keys.access_key),
        ("API__SECRET_KEY".to_owned(), keys.secret_key),
        ("LOGGING__LEVEL".to_owned(), "warn".to_owned()),
        ("STATUS_POLL__ENABLED".to_owned(), "false".to_owned()),
    ];
    env.extend(
        extra
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.clone())),
    );
    env
}

/// The simulator has no limit here, and the worker's own limiter must not pace either: 10,000
/// calls per 1 ms (no margin) never binds, and keeps the window's buffer small.
fn unlimited_worker_env() -> Vec<(String, String)> {
    worker_env(&[
        ("RATE_LIMIT__MAX_CALLS", "10000".to_owned()),
        ("RATE_LIMIT__WINDOW_MS", "1".to_owned()),
        ("RATE_LIMIT__SAFETY_MARGIN_MS", "0".to_owned()),
        ("BATCH__MAX_SIZE", THROUGHPUT_BATCH.to_string()),
    ])
}

fn unlimited_simulator() -> SimulatorConfig {
    SimulatorConfig {
        rate_limit: None,
        ..SimulatorConfig::default()
    }
}

/// The settings the child will see, validated here so a mistake stops the benchmark before a run.
/// Database and API address are placeholders: they change per run.
fn load_settings(env: &[(String, String)]) -> anyhow::Result<Settings> {
    let placeholders = [
        ("DATABASE__URL", "sqlite:///tmp/placeholder.db"),
        ("API__BASE_URL", "http://127.0.0.1:1"),
    ];
    let all = env
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .chain(placeholders)
        .map(|(key, value)| (format!("LSQ_REVOKER__{key}"), value.to_owned()));
    Settings::load_with(None, all.collect::<Vec<_>>()).context("the worker settings are invalid")
}

fn print_config(
    env: &[(String, String)],
    simulator: &SimulatorConfig,
    jobs: usize,
) -> anyhow::Result<()> {
    let settings = load_settings(env)?;
    let limit = settings.rate_limit;
    println!(
        "worker:    run --until-idle; rate_limit {} calls / {} ms + {} ms margin, batch.max_size {}, \
         api.max_in_flight {}, status_poll {}, logging {}",
        limit.max_calls,
        limit.window.as_millis(),
        limit.safety_margin.as_millis(),
        settings.batch.max_size,
        settings.api.max_in_flight,
        if settings.status_poll.enabled {
            "on"
        } else {
            "off"
        },
        settings.logging.level,
    );
    println!(
        "           environment: {}",
        env.iter()
            .filter(|(key, _)| !key.ends_with("_KEY"))
            .map(|(key, value)| format!("LSQ_REVOKER__{key}={value}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "simulator: {}, latency {}-{} ms, no faults; backlog {jobs} jobs in a fresh SQLite file per run",
        simulator
            .rate_limit
            .map_or("no limit".to_owned(), |(calls, window)| format!(
                "limit {calls} calls / {} ms",
                window.as_millis()
            )),
        simulator.latency.0.as_millis(),
        simulator.latency.1.as_millis(),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One run of the worker
// ---------------------------------------------------------------------------------------------

struct RunSpec {
    jobs: usize,
    simulator: SimulatorConfig,
    /// Without the `LSQ_REVOKER__` prefix; database and API address are added per run.
    env: Vec<(String, String)>,
    /// Rows a producer inserts one by one while the worker runs.
    producer: Option<usize>,
    /// A run still going after this is killed and counts as broken.
    deadline: Duration,
}

struct WorkerRun {
    /// Every job the run had to submit: the backlog plus the producer's rows.
    jobs: u64,
    wall: Duration,
    usage: ChildUsage,
    stats: SimulatorStats,
    calls: Vec<CallRecord>,
    producer: Option<ProducerReport>,
}

impl WorkerRun {
    fn jobs_per_cpu_second(&self) -> f64 {
        self.jobs as f64 / self.usage.cpu().as_secs_f64().max(f64::EPSILON)
    }
}

/// What the kernel charged to the worker.
///
/// The worker is not this process's child but its grandchild: a small copy of this binary
/// (`--measure-child`, see [`measure_child`]) starts it, waits for it and reports
/// `getrusage(RUSAGE_CHILDREN)`. Spawning the worker directly would charge it this process's
/// memory: Linux records the peak RSS of the address space a process leaves at `exec` in that
/// process's `ru_maxrss`, and until `exec` a spawned child runs in its parent's address space
/// (`posix_spawn`) or a copy of it (`fork`), so the worker would report at least this process's
/// own peak (the simulator's records and the seeded backlog: 85 to 136 MiB here, growing from
/// run to run). The measuring parent is a few MiB, which is then the floor of the figure;
/// `parent_hwm_mib` says how much. Its start-up is inside the wall time, a few milliseconds.
struct ChildUsage {
    user: Duration,
    system: Duration,
    max_rss_mib: f64,
    parent_hwm_mib: f64,
}

impl ChildUsage {
    fn cpu(&self) -> Duration {
        self.user + self.system
    }

    /// Reads what [`measure`] wrote.
    fn parse(report: &str) -> anyhow::Result<Self> {
        let field = |name: &str| -> anyhow::Result<i64> {
            report
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .with_context(|| format!("no {name} in the measuring parent's report {report:?}"))?
                .trim()
                .parse()
                .with_context(|| format!("{name} in {report:?}"))
        };
        let micros = |micros: i64| Duration::from_micros(u64::try_from(micros).unwrap_or(0));
        Ok(Self {
            user: micros(field("user_us")?),
            system: micros(field("system_us")?),
            max_rss_mib: field("max_rss_kib")? as f64 / 1024.0,
            parent_hwm_mib: field("parent_hwm_kib")? as f64 / 1024.0,
        })
    }
}

/// `throughput --measure-child REPORT PROGRAM ARGS…`: run PROGRAM as this process's only child,
/// with this process's environment and standard streams, and write its pid, then its exit
/// status and resource usage, to REPORT. Exits 0 when the child did.
fn measure_child(args: &[String]) -> ExitCode {
    match measure(args) {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("{MEASURE_CHILD}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn measure(args: &[String]) -> anyhow::Result<ExitStatus> {
    let [report, program, rest @ ..] = args else {
        bail!("usage: {MEASURE_CHILD} REPORT PROGRAM [ARGS…]");
    };
    // Before spawning: this address space's peak is what the child inherits as its floor.
    let parent_hwm_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0_i64);
    let mut child = Command::new(program)
        .args(rest)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    std::fs::write(report, format!("pid {}\n", child.id())).context("writing the report")?;
    let status = child.wait().context("waiting for the child")?;
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage(RUSAGE_CHILDREN)")?;
    let lines = format!(
        "pid {}\nstatus {status}\nuser_us {}\nsystem_us {}\nmax_rss_kib {}\nparent_hwm_kib {parent_hwm_kib}\n",
        child.id(),
        usage.user_time().num_microseconds(),
        usage.system_time().num_microseconds(),
        // Linux reports kibibytes.
        usage.max_rss(),
    );
    std::fs::write(report, lines).context("writing the report")?;
    Ok(status)
}

async fn run_worker(spec: RunSpec) -> anyhow::Result<WorkerRun> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let database = format!("sqlite://{}", dir.path().join("queue.db").display());
    seed(&database, spec.jobs).await?;

    let simulator = Simulator::start(spec.simulator)
        .await
        .context("starting the simulator")?;
    let log_path = dir.path().join("worker.log");
    let report_path = dir.path().join("usage.txt");
    let mut command = worker_command(
        dir.path(),
        &report_path,
        &database,
        &simulator.base_url(),
        &spec.env,
    )?;
    let log = File::create(&log_path).context("creating the worker's log file")?;
    command
        .stdout(log.try_clone().context("sharing the log file")?)
        .stderr(log);

    let producer = match spec.producer {
        Some(rows) => Some(Producer::connect(database.clone(), rows).await?),
        None => None,
    };

    let began = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {WORKER}"))?;
    let parent = Pid::from_raw(i32::try_from(child.id()).context("child pid")?);
    let mut waiting = tokio::task::spawn_blocking(move || child.wait());

    let producer = match producer {
        Some(producer) => {
            let started = wait_for_first_call(&simulator, &waiting).await;
            let report = match started {
                Ok(()) => producer.go().await,
                Err(err) => Err(err),
            };
            match report {
                Ok(mut report) => {
                    report.worker_still_running = !waiting.is_finished();
                    Some(report)
                }
                Err(err) => {
                    stop(parent, &report_path, &mut waiting).await;
                    return Err(err.context(log_tail(&log_path)));
                }
            }
        }
        None => None,
    };

    let status = match tokio::time::timeout(spec.deadline, &mut waiting).await {
        Ok(joined) => joined
            .context("waiting for the worker")?
            .context("waiting for the worker")?,
        Err(_) => {
            stop(parent, &report_path, &mut waiting).await;
            bail!(
                "the worker did not finish within {} s and was killed\n{}",
                spec.deadline.as_secs(),
                log_tail(&log_path)
            );
        }
    };
    let wall = began.elapsed();
    let report = std::fs::read_to_string(&report_path).unwrap_or_default();
    ensure_success(status, &report, &log_path)?;
    let usage = ChildUsage::parse(&report)?;

    let stats = simulator.stats();
    let calls = simulator.calls();
    simulator.shutdown().await;

    let jobs = (spec.jobs + spec.producer.unwrap_or(0)) as u64;
    let counts = final_counts(&database).await?;
    check_complete(jobs, &counts, &stats, &log_path)?;

    Ok(WorkerRun {
        jobs,
        wall,
        usage,
        stats,
        calls,
        producer,
    })
}

/// `lsq-revoker run --until-idle` under a measuring parent, with exactly the given settings:
/// inherited `LSQ_REVOKER__*` variables and `RUST_LOG` (which overrides the log level) are removed.
fn worker_command(
    dir: &Path,
    report: &Path,
    database: &str,
    base_url: &str,
    env: &[(String, String)],
) -> anyhow::Result<Command> {
    let mut all = env.to_vec();
    all.push(("DATABASE__URL".to_owned(), database.to_owned()));
    all.push(("API__BASE_URL".to_owned(), base_url.to_owned()));
    load_settings(&all)?;
    let mut command =
        Command::new(std::env::current_exe().context("locating the benchmark binary")?);
    command
        .arg(MEASURE_CHILD)
        .arg(report)
        .args([WORKER, "run", "--until-idle"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .env_remove("RUST_LOG");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LSQ_REVOKER__") {
            command.env_remove(key);
        }
    }
    command.envs(
        all.into_iter()
            .map(|(key, value)| (format!("LSQ_REVOKER__{key}"), value)),
    );
    Ok(command)
}

/// A backlog as a producer would leave it: distinct, valid revocations, so every job becomes
/// one item and the simulator's count of accepted items proves each was sent exactly once.
async fn seed(database: &str, count: usize) -> anyhow::Result<()> {
    let store = Store::open(database).await.context("creating the queue")?;
    let jobs: Vec<NewJob> = (0..count).map(job).collect();
    let inserted = store
        .insert_jobs(&jobs)
        .await
        .context("seeding the backlog")?;
    store.close().await;
    ensure!(
        inserted == count as u64,
        "seeded {inserted} jobs instead of {count}"
    );
    Ok(())
}

fn job(n: usize) -> NewJob {
    let n = n as u128;
    NewJob {
        user_id: uuid::Uuid::from_u128(0x0203_f172_8642_11e7_9bed_0000_0000_0000 | n).to_string(),
        entity_id: (1_000_000 + n).to_string(),
        context_entity_id: uuid::Uuid::from_u128(0x9a0e_8f2c_1b7d_4c55_8f5e_0000_0000_0000 | n)
            .to_string(),
        access_type: 1 + (n % 2) as i64,
    }
}

async fn final_counts(database: &str) -> anyhow::Result<StatusCounts> {
    let store = Store::connect(database)
        .await
        .context("reopening the queue")?;
    let counts = store.status_counts().await.context("counting jobs")?;
    store.close().await;
    Ok(counts)
}

fn ensure_success(status: ExitStatus, report: &str, log_path: &Path) -> anyhow::Result<()> {
    let worker = report
        .lines()
        .find_map(|line| line.strip_prefix("status "))
        .unwrap_or("an unknown status (see the log)");
    ensure!(
        status.success(),
        "the worker exited with {worker}\n{}",
        log_tail(log_path)
    );
    Ok(())
}

/// The run measured what it claims only if every job was submitted, each exactly once, and no
/// call was refused for anything but the rate limit.
fn check_complete(
    jobs: u64,
    counts: &StatusCounts,
    stats: &SimulatorStats,
    log_path: &Path,
) -> anyhow::Result<()> {
    let complete = counts.total() == jobs
        && counts.submitted == jobs
        && stats.items_accepted == jobs
        && stats.bad_requests + stats.unauthorized + stats.not_found + stats.server_errors == 0;
    ensure!(
        complete,
        "the run did not submit every job exactly once: expected {jobs} submitted, database has {counts:?}; \
         simulator saw {stats:?}\n{}",
        log_tail(log_path)
    );
    Ok(())
}

/// Kill the worker this benchmark started (its pid is the report's first line), or its measuring
/// parent if the worker is not running yet, and reap the parent.
async fn stop(
    parent: Pid,
    report: &Path,
    waiting: &mut tokio::task::JoinHandle<std::io::Result<ExitStatus>>,
) {
    if !waiting.is_finished() {
        let worker = std::fs::read_to_string(report).ok().and_then(|report| {
            report
                .lines()
                .find_map(|line| line.strip_prefix("pid "))
                .and_then(|pid| pid.trim().parse().ok())
                .map(Pid::from_raw)
        });
        // The process may exit between the check and the signal; ESRCH is then expected.
        kill(worker.unwrap_or(parent), Signal::SIGKILL).ok();
    }
    waiting.await.ok();
}

fn log_tail(path: &Path) -> String {
    const LINES: usize = 20;
    let Ok(file) = File::open(path) else {
        return format!("(no worker log at {})", path.display());
    };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    let from = lines.len().saturating_sub(LINES);
    format!(
        "last {} lines of the worker's log:\n{}",
        lines.len() - from,
        lines[from..].join("\n")
    )
}

// ---------------------------------------------------------------------------------------------
// The producer
// ---------------------------------------------------------------------------------------------

/// A producer on its own thread and runtime, so its latencies are not queued behind the
/// simulator's tasks in this process's runtime.
struct Producer {
    go: oneshot::Sender<()>,
    report: oneshot::Receiver<anyhow::Result<ProducerReport>>,
}

struct ProducerReport {
    latencies: Vec<Duration>,
    errors: Vec<String>,
    /// From the first insert's start to the last one's end.
    span: Duration,
    worker_still_running: bool,
}

impl ProducerReport {
    fn locked(&self) -> usize {
        self.errors
            .iter()
            .filter(|error| error.contains("database is locked") || error.contains("busy"))
            .count()
    }
}

impl Producer {
    /// Open the producer's pool and run one statement, so connecting is not measured.
    async fn connect(database: String, rows: usize) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<()>>();
        let (go, go_rx) = oneshot::channel::<()>();
        let (report_tx, report) = oneshot::channel();
        std::thread::Builder::new()
            .name("producer".to_owned())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the producer's runtime")
                    .and_then(|runtime| {
                        runtime.block_on(produce(&database, rows, ready_tx, go_rx))
                    });
                report_tx.send(result).ok();
            })
            .context("starting the producer thread")?;
        ready_rx.await.context("the producer thread died")??;
        Ok(Self { go, report })
    }

    async fn go(self) -> anyhow::Result<ProducerReport> {
        self.go.send(()).ok();
        self.report.await.context("the producer thread died")?
    }
}

async fn produce(
    database: &str,
    rows: usize,
    ready: oneshot::Sender<anyhow::Result<()>>,
    go: oneshot::Receiver<()>,
) -> anyhow::Result<ProducerReport> {
    // A producer as the README describes one: SQLite's defaults (WAL comes from the file) and a
    // busy timeout, none of the worker's own tuning.
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(database)
        .map(|options| options.busy_timeout(Duration::from_secs(5)));
    let connected = match options {
        Ok(options) => {
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
        }
        Err(err) => Err(err),
    };
    let pool = match connected {
        Ok(pool) => pool,
        Err(err) => {
            let err = anyhow::Error::new(err).context("the producer cannot open the queue");
            ready.send(Err(anyhow::anyhow!("{err:#}"))).ok();
            return Err(err);
        }
    };
    if let Err(err) = sqlx::query("SELECT 1").execute(&pool).await {
        ready
            .send(Err(anyhow::anyhow!("producer warm-up: {err}")))
            .ok();
        bail!("producer warm-up: {err}");
    }
    ready.send(Ok(())).ok();
    go.await
        .context("the benchmark never started the producer")?;
    let mut latencies = Vec::with_capacity(rows);
    let mut errors = Vec::new();
    let began = Instant::now();
    for n in 0..rows {
        let job = job(BACKLOG + n);
        let start = Instant::now();
        let result = sqlx::query(
            "INSERT INTO revocation_jobs (user_id, entity_id, context_entity_id) VALUES (?1, ?2, ?3)",
        )
        .bind(&job.user_id)
        .bind(&job.entity_id)
        .bind(&job.context_entity_id)
        .execute(&pool)
        .await;
        latencies.push(start.elapsed());
        if let Err(err) = result {
            errors.push(err.to_string());
        }
    }
    let span = began.elapsed();
    pool.close().await;
    Ok(ProducerReport {
        latencies,
        errors,
        span,
        worker_still_running: false,
    })
}

/// The producer starts once the worker is draining, not while it is still starting up.
async fn wait_for_first_call(
    simulator: &Simulator,
    waiting: &tokio::task::JoinHandle<std::io::Result<ExitStatus>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + FIRST_CALL_DEADLINE;
    while simulator.stats().calls == 0 {
        ensure!(
            !waiting.is_finished(),
            "the worker exited before making a call"
        );
        ensure!(
            Instant::now() < deadline,
            "the worker made no call within {} s",
            FIRST_CALL_DEADLINE.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------------

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_unstable_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * percent).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}
