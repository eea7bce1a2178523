//! The systemd unit in `deploy/` is valid and matches the service's shutdown contract.

use std::process::Command;
use std::time::Duration;

use lsq_revoker::config::Settings;

const UNIT: &str = include_str!("../deploy/lsq-revoker.service");

fn setting<'a>(name: &str) -> Vec<&'a str> {
    UNIT.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .map(str::trim)
        .collect()
}

#[test]
fn the_unit_stops_with_sigterm_after_the_grace_period_and_restarts_on_failure() {
    assert_eq!(setting("KillSignal"), ["SIGTERM"]);
    assert_eq!(setting("Restart"), ["on-failure"]);
    let stop = setting("TimeoutStopSec")[0].trim_end_matches('s');
    let stop = Duration::from_secs(stop.parse().expect("seconds"));
    let grace = Settings::load_with(None, Vec::new())
        .expect("defaults")
        .dispatcher
        .shutdown_grace;
    assert!(
        stop > grace + Duration::from_secs(5),
        "{stop:?} leaves the {grace:?} grace period room"
    );
    assert!(setting("LoadCredential")[0].starts_with("secret_key:"));
    assert!(setting("Environment").contains(&"LSQ_REVOKER__API__SECRET_KEY_FILE=%d/secret_key"));
    assert_eq!(setting("ProtectSystem"), ["strict"]);
}

#[test]
fn systemd_analyze_verifies_the_unit_without_a_warning() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed here; the unit was not verified");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("lsq-revoker.service");
    // verify checks that ExecStart exists: point it at the binary under test
    let text = UNIT.replace(
        "/usr/local/bin/lsq-revoker",
        env!("CARGO_BIN_EXE_lsq-revoker"),
    );
    std::fs::write(&unit, text).expect("unit written");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "warnings: {stderr}");
}
