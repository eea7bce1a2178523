//! Settings: `config/default.toml` (compiled in) → an optional file → `LSQ_REVOKER__…` environment.
//!
//! Everything is validated here, before any work starts, so that a bad setting stops the
//! program with one line naming the key and the environment variable that sets it. The rest
//! of the crate receives typed values (`Duration`, `Url`) and secrets it cannot print.

use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The bottom layer, so the binary runs the same from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

const ENV_PREFIX: &str = "LSQ_REVOKER";

/// A setting that cannot be used, with the place to fix it.
#[derive(Debug, thiserror::Error)]
#[error("setting `{key}` {reason} ({} it in the settings file or as {})", if *.unknown { "rename or remove" } else { "set" }, env_var(.key))]
pub struct SettingsError {
    pub key: String,
    pub reason: String,
    /// The key is not one of ours (a misspelling).
    pub unknown: bool,
}

impl SettingsError {
    fn new(key: &str, reason: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            reason: reason.into(),
            unknown: false,
        }
    }
}

/// The environment variable that sets `key`, e.g. `api.secret_key` → `LSQ_REVOKER__API__SECRET_KEY`.
pub fn env_var(key: &str) -> String {
    format!("{ENV_PREFIX}__{}", key.replace('.', "__").to_uppercase())
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub api: ApiSettings,
    pub rate_limit: RateLimitSettings,
    pub batch: BatchSettings,
    pub retry: RetrySettings,
    pub status_poll: StatusPollSettings,
    pub dispatcher: DispatcherSettings,
    pub retention: RetentionSettings,
    pub metrics: MetricsSettings,
    pub logging: LoggingSettings,
}

#[derive(Debug, Clone, Copy)]
pub struct RetentionSettings {
    /// `completed` jobs older than this are deleted; `None` keeps them.
    pub completed: Option<Duration>,
    /// `failed` jobs older than this are deleted; `None` (the default) keeps them for an operator.
    pub failed: Option<Duration>,
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct MetricsSettings {
    /// Where to serve `/metrics` and `/healthz`; `None` when off.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// `x-LSQ-AccessKey` / `x-LSQ-SecretKey` headers: the vendor's recommended way.
    Header,
    /// `?accessKey=…&secretKey=…`: keys end up in URLs, so only when asked for.
    Query,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Scheme + `host[:port]`, without the `/v2` path.
    pub base_url: Url,
    pub access_key: Secret,
    pub secret_key: Secret,
    pub auth: AuthMode,
    pub timeout: Duration,
    pub max_in_flight: usize,
}

/// A key given inline or through a file (container secrets, systemd credentials). It is read
/// only when the API client is built, so operator commands run without access to it.
#[derive(Debug, Clone)]
pub struct Secret {
    key: &'static str,
    inline: SecretString,
    file: Option<PathBuf>,
}

impl Secret {
    /// The key's value; an empty one is an error naming the setting.
    pub fn resolve(&self) -> Result<SecretString, SettingsError> {
        let file_key = format!("{}_file", self.key);
        let value: SecretString = match &self.file {
            None => self.inline.clone(),
            Some(path) => std::fs::read_to_string(path)
                .map_err(|err| {
                    SettingsError::new(
                        &file_key,
                        format!("names {}, which cannot be read: {err}", path.display()),
                    )
                })?
                .trim()
                .to_owned()
                .into(),
        };
        if value.expose_secret().trim().is_empty() {
            return Err(SettingsError::new(
                self.key,
                format!("is not set (or use `{file_key}` with a path to a file holding it)"),
            ));
        }
        Ok(value)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RateLimitSettings {
    pub max_calls: usize,
    pub window: Duration,
    pub safety_margin: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub max_size: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Clone)]
pub struct StatusPollSettings {
    pub enabled: bool,
    pub initial_delay: Duration,
    pub max_interval: Duration,
    pub give_up_after: Duration,
    /// `ShareStatus` values that mean the request was processed.
    pub processed_share_status: Vec<i64>,
    /// With revocations waiting, at least one call in this many is a due poll.
    pub every_nth_call: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct DispatcherSettings {
    pub idle_poll: Duration,
    pub shutdown_grace: Duration,
    pub summary_interval: Duration,
    /// After 401/403/404, the first probe call waits this long; the wait doubles up to `probe_max`.
    pub probe_initial: Duration,
    pub probe_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct LoggingSettings {
    pub format: LogFormat,
    pub level: String,
}

/// The shape of the layered sources, before validation. Numbers stay raw milliseconds here.
/// Unknown keys are refused: a misspelt one (`LSQ_REVOKER__RATE_LIMIT__MAXCALLS`) would otherwise
/// leave the default in force without a word.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    database: RawDatabase,
    api: RawApi,
    rate_limit: RawRateLimit,
    batch: RawBatch,
    retry: RawRetry,
    status_poll: RawStatusPoll,
    dispatcher: RawDispatcher,
    retention: RawRetention,
    metrics: RawMetrics,
    logging: RawLogging,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    completed: String,
    failed: String,
    interval: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    base_url: String,
    access_key: SecretString,
    secret_key: SecretString,
    access_key_file: Option<PathBuf>,
    secret_key_file: Option<PathBuf>,
    auth: AuthMode,
    timeout_ms: u64,
    max_in_flight: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    max_calls: usize,
    window_ms: u64,
    safety_margin_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    max_size: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: u32,
    initial_backoff_ms: u64,
    max_backoff_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatusPoll {
    enabled: bool,
    initial_delay_ms: u64,
    max_interval_ms: u64,
    give_up_after_ms: u64,
    processed_share_status: CodeList,
    every_nth_call: u32,
}

/// A list of codes: a TOML array, or comma-separated text from the environment (where every
/// value is text, and secrets must stay text, so the environment source does not split lists).
#[derive(Deserialize)]
#[serde(untagged)]
enum CodeList {
    List(Vec<i64>),
    Text(String),
}

impl CodeList {
    fn parse(self, key: &str) -> Result<Vec<i64>, SettingsError> {
        match self {
            CodeList::List(codes) => Ok(codes),
            CodeList::Text(text) => text
                .split(',')
                .map(|code| code.trim().parse::<i64>())
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    SettingsError::new(
                        key,
                        format!("must be numbers separated by commas, not {text:?}"),
                    )
                }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDispatcher {
    idle_poll_ms: u64,
    shutdown_grace_ms: u64,
    summary_interval_ms: u64,
    probe_initial_ms: u64,
    probe_max_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    format: LogFormat,
    level: String,
}

impl Settings {
    /// Load the layers: defaults, then `file` when given (it must exist), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_with(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment passed in (tests, `demo`).
    pub fn load_with(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(SettingsError::new(
                    "--config",
                    format!("names {}, which is not a readable file", path.display()),
                ));
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        // Values stay strings here and are converted by the typed fields, so a numeric-looking
        // secret keeps its leading zeros while `MAX_CALLS=10` and `ENABLED=false` still parse.
        let env = Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .source(Some(env.into_iter().collect()));
        let raw: Raw = builder
            .add_source(env)
            .build()
            .and_then(Config::try_deserialize)
            .map_err(from_config_error)?;
        Self::validate(raw)
    }

    fn validate(raw: Raw) -> Result<Self, SettingsError> {
        let api = raw.api;
        let access_key = secret_from(api.access_key, api.access_key_file, "api.access_key")?;
        let secret_key = secret_from(api.secret_key, api.secret_key_file, "api.secret_key")?;
        let rate_limit = RateLimitSettings {
            max_calls: positive(raw.rate_limit.max_calls, "rate_limit.max_calls")?,
            window: millis(raw.rate_limit.window_ms, "rate_limit.window_ms")?,
            safety_margin: Duration::from_millis(raw.rate_limit.safety_margin_ms),
        };
        let retry = RetrySettings {
            max_attempts: positive(raw.retry.max_attempts, "retry.max_attempts")?,
            initial_backoff: millis(raw.retry.initial_backoff_ms, "retry.initial_backoff_ms")?,
            max_backoff: millis(raw.retry.max_backoff_ms, "retry.max_backoff_ms")?,
        };
        if retry.max_backoff < retry.initial_backoff {
            return Err(SettingsError::new(
                "retry.max_backoff_ms",
                "must not be smaller than retry.initial_backoff_ms",
            ));
        }
        if raw.database.url.trim().is_empty() {
            return Err(SettingsError::new("database.url", "is empty"));
        }
        Ok(Self {
            database: DatabaseSettings {
                url: raw.database.url,
            },
            api: ApiSettings {
                base_url: base_url(&api.base_url)?,
                access_key,
                secret_key,
                auth: api.auth,
                timeout: millis(api.timeout_ms, "api.timeout_ms")?,
                max_in_flight: positive(api.max_in_flight, "api.max_in_flight")?,
            },
            rate_limit,
            batch: BatchSettings {
                max_size: positive(raw.batch.max_size, "batch.max_size")?,
            },
            retry,
            status_poll: status_poll(raw.status_poll)?,
            dispatcher: DispatcherSettings {
                idle_poll: millis(raw.dispatcher.idle_poll_ms, "dispatcher.idle_poll_ms")?,
                shutdown_grace: Duration::from_millis(raw.dispatcher.shutdown_grace_ms),
                summary_interval: millis(
                    raw.dispatcher.summary_interval_ms,
                    "dispatcher.summary_interval_ms",
                )?,
                probe_initial: millis(
                    raw.dispatcher.probe_initial_ms,
                    "dispatcher.probe_initial_ms",
                )?,
                probe_max: millis(raw.dispatcher.probe_max_ms, "dispatcher.probe_max_ms")?,
            },
            retention: RetentionSettings {
                completed: optional_duration(&raw.retention.completed, "retention.completed")?,
                failed: optional_duration(&raw.retention.failed, "retention.failed")?,
                interval: optional_duration(&raw.retention.interval, "retention.interval")?
                    .ok_or_else(|| SettingsError::new("retention.interval", "is empty"))?,
            },
            metrics: MetricsSettings {
                listen: listen_address(&raw.metrics.listen)?,
            },
            logging: LoggingSettings {
                format: raw.logging.format,
                level: raw.logging.level,
            },
        })
    }
}

fn status_poll(raw: RawStatusPoll) -> Result<StatusPollSettings, SettingsError> {
    let processed_share_status = raw
        .processed_share_status
        .parse("status_poll.processed_share_status")?;
    if processed_share_status.is_empty() {
        return Err(SettingsError::new(
            "status_poll.processed_share_status",
            "is empty; LeadSquared documents 6 as processed",
        ));
    }
    let settings = StatusPollSettings {
        enabled: raw.enabled,
        initial_delay: millis(raw.initial_delay_ms, "status_poll.initial_delay_ms")?,
        max_interval: millis(raw.max_interval_ms, "status_poll.max_interval_ms")?,
        give_up_after: millis(raw.give_up_after_ms, "status_poll.give_up_after_ms")?,
        processed_share_status,
        every_nth_call: positive(raw.every_nth_call, "status_poll.every_nth_call")?,
    };
    if settings.max_interval < settings.initial_delay {
        return Err(SettingsError::new(
            "status_poll.max_interval_ms",
            "must not be smaller than status_poll.initial_delay_ms",
        ));
    }
    Ok(settings)
}

/// A duration such as `30d`, `12h` or `90m`; empty means none.
pub fn parse_duration(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    match humantime::parse_duration(text) {
        Ok(duration) if !duration.is_zero() => Ok(Some(duration)),
        Ok(_) => Err(format!(
            "is {text:?}, which is zero; give a positive duration or \"\""
        )),
        Err(err) => Err(format!(
            "is {text:?}, not a duration like \"30d\", \"12h\" or \"90m\" ({err})"
        )),
    }
}

fn optional_duration(text: &str, key: &str) -> Result<Option<Duration>, SettingsError> {
    parse_duration(text).map_err(|reason| SettingsError::new(key, reason))
}

/// `9464` → `127.0.0.1:9464`; `host:port` as given; empty → off.
fn listen_address(text: &str) -> Result<Option<std::net::SocketAddr>, SettingsError> {
    const KEY: &str = "metrics.listen";
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(port) = text.parse::<u16>() {
        return Ok(Some((std::net::Ipv4Addr::LOCALHOST, port).into()));
    }
    text.parse().map(Some).map_err(|_| {
        SettingsError::new(
            KEY,
            format!("is {text:?}; give a port (\"9464\", loopback only) or an address and port (\"0.0.0.0:9464\")"),
        )
    })
}

fn from_config_error(err: config::ConfigError) -> SettingsError {
    match err {
        config::ConfigError::Type {
            key: Some(key),
            unexpected,
            expected,
            ..
        } => SettingsError::new(&key, format!("must be {expected}, not {unexpected}")),
        config::ConfigError::NotFound(key) => SettingsError::new(&key, "is missing"),
        config::ConfigError::FileParse { uri, cause } => SettingsError::new(
            "--config",
            format!(
                "names {}, which is not valid TOML: {cause}",
                uri.unwrap_or_default()
            ),
        ),
        // serde's own messages ("unknown variant `x`, expected `json` or `text` for key `logging.format`").
        other => {
            let message = other.to_string();
            if let Some(unknown) = unknown_key(&message) {
                return unknown;
            }
            let key = message
                .rsplit_once("for key `")
                .and_then(|(_, rest)| rest.split_once('`'))
                .map_or("(unknown)", |(key, _)| key)
                .to_owned();
            let reason = message
                .split_once(" for key `")
                .map_or(message.as_str(), |(reason, _)| reason)
                .to_owned();
            SettingsError {
                key,
                reason,
                unknown: false,
            }
        }
    }
}

/// serde's "unknown field `maxcalls`, expected one of `max_calls`, … for key `rate_limit`" (the
/// key is absent for a top-level field), as the full key and the names that would be right.
fn unknown_key(message: &str) -> Option<SettingsError> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let (expected, section) = match rest.split_once(" for key `") {
        Some((expected, section)) => (expected, section.split_once('`').map(|(key, _)| key)),
        None => (rest, None),
    };
    let key = section.map_or_else(|| field.to_owned(), |section| format!("{section}.{field}"));
    let expected = expected.trim_start_matches(", ").trim();
    Some(SettingsError {
        key,
        reason: format!("is not a setting ({expected})"),
        unknown: true,
    })
}

fn positive<T: Default + PartialOrd>(value: T, key: &str) -> Result<T, SettingsError> {
    if value > T::default() {
        Ok(value)
    } else {
        Err(SettingsError::new(key, "must be at least 1"))
    }
}

fn millis(value: u64, key: &str) -> Result<Duration, SettingsError> {
    positive(value, key).map(Duration::from_millis)
}

fn secret_from(
    inline: SecretString,
    file: Option<PathBuf>,
    key: &'static str,
) -> Result<Secret, SettingsError> {
    if file.is_some() && !inline.expose_secret().is_empty() {
        return Err(SettingsError::new(
            key,
            format!("and `{key}_file` are both set; keep one"),
        ));
    }
    Ok(Secret { key, inline, file })
}

/// Accepts `https://host[:port]` with an optional trailing `/v2`; plain HTTP only for loopback.
fn base_url(raw: &str) -> Result<Url, SettingsError> {
    const KEY: &str = "api.base_url";
    let mut url = Url::parse(raw.trim())
        .map_err(|err| SettingsError::new(KEY, format!("is not a URL ({err}): {raw:?}")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(SettingsError::new(KEY, "has no host")),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(SettingsError::new(
                KEY,
                "uses http://, which LeadSquared refuses; use https:// (http is allowed only for loopback hosts)",
            ));
        }
        other => {
            return Err(SettingsError::new(
                KEY,
                format!("has scheme {other:?}; use https://"),
            ));
        }
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(SettingsError::new(
            KEY,
            "must be only scheme and host[:port], without query, fragment or credentials",
        ));
    }
    let path = url.path().trim_end_matches('/');
    if !(path.is_empty() || path.eq_ignore_ascii_case("/v2")) {
        return Err(SettingsError::new(
            KEY,
            format!(
                "has path {path:?}; give only scheme and host, e.g. https://api.leadsquared.com"
            ),
        ));
    }
    url.set_path("");
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut all = vec![
            ("LSQ_REVOKER__API__ACCESS_KEY".to_owned(), "ak".to_owned()),
            ("LSQ_REVOKER__API__SECRET_KEY".to_owned(), "sk".to_owned()),
        ];
        all.extend(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        all
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::load_with(None, env(pairs))
    }

    #[test]
    fn environment_values_parse_into_numbers_and_booleans() {
        let settings = load(&[
            ("LSQ_REVOKER__RATE_LIMIT__MAX_CALLS", "10"),
            ("LSQ_REVOKER__STATUS_POLL__ENABLED", "false"),
        ])
        .expect("settings load");
        assert_eq!(settings.rate_limit.max_calls, 10);
        assert!(!settings.status_poll.enabled);
        assert_eq!(settings.rate_limit.window, Duration::from_secs(5));
    }

    #[test]
    fn processed_share_statuses_are_a_comma_separated_list_in_the_environment() {
        let settings =
            load(&[("LSQ_REVOKER__STATUS_POLL__PROCESSED_SHARE_STATUS", "6,7")]).expect("load");
        assert_eq!(settings.status_poll.processed_share_status, [6, 7]);
        assert_eq!(
            load(&[])
                .expect("defaults")
                .status_poll
                .processed_share_status,
            [6]
        );
    }

    #[test]
    fn a_numeric_looking_secret_keeps_its_exact_text() {
        let settings = load(&[("LSQ_REVOKER__API__SECRET_KEY", "00123e5")]).expect("load");
        let secret = settings.api.secret_key.resolve().expect("set");
        assert_eq!(secret.expose_secret(), "00123e5");
    }

    #[test]
    fn a_missing_secret_names_the_key_and_the_variable() {
        let settings = Settings::load_with(None, Vec::new()).expect("keys are read later");
        let err = settings.api.access_key.resolve().expect_err("no keys");
        let line = err.to_string();
        assert!(line.contains("api.access_key"), "{line}");
        assert!(line.contains("LSQ_REVOKER__API__ACCESS_KEY"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn a_bad_number_names_the_key_and_the_variable() {
        let err = load(&[("LSQ_REVOKER__RATE_LIMIT__MAX_CALLS", "lots")]).expect_err("bad");
        let line = err.to_string();
        assert!(line.contains("rate_limit.max_calls"), "{line}");
        assert!(
            line.contains("LSQ_REVOKER__RATE_LIMIT__MAX_CALLS"),
            "{line}"
        );
    }

    #[test]
    fn retention_and_metrics_read_durations_and_addresses() {
        let settings = load(&[("LSQ_REVOKER__METRICS__LISTEN", "9464")]).expect("load");
        assert_eq!(
            settings.retention.completed,
            Some(Duration::from_secs(30 * 86400))
        );
        assert_eq!(settings.retention.failed, None);
        assert_eq!(
            settings.metrics.listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9464")
        );
        assert_eq!(load(&[]).expect("load").metrics.listen, None);
        let err = load(&[("LSQ_REVOKER__RETENTION__COMPLETED", "a month")]).expect_err("bad");
        assert_eq!(err.key, "retention.completed");
    }

    #[test]
    fn a_misspelt_key_is_refused_with_the_names_that_would_be_right() {
        let err = load(&[("LSQ_REVOKER__RATE_LIMIT__MAXCALLS", "2")]).expect_err("misspelt");
        assert_eq!(err.key, "rate_limit.maxcalls");
        let line = err.to_string();
        assert!(
            line.contains("`max_calls`") && line.contains("LSQ_REVOKER__RATE_LIMIT__MAXCALLS"),
            "{line}"
        );
        let err = load(&[("LSQ_REVOKER__RATELIMIT__MAX_CALLS", "2")]).expect_err("misspelt");
        assert_eq!(err.key, "ratelimit");
    }

    #[test]
    fn zero_calls_per_window_is_refused() {
        let err = load(&[("LSQ_REVOKER__RATE_LIMIT__MAX_CALLS", "0")]).expect_err("zero");
        assert_eq!(err.key, "rate_limit.max_calls");
    }

    #[test]
    fn an_unknown_log_format_is_refused_by_name() {
        let err = load(&[("LSQ_REVOKER__LOGGING__FORMAT", "xml")]).expect_err("xml");
        assert_eq!(err.key, "logging.format", "{err}");
    }

    #[test]
    fn plain_http_is_refused_except_for_loopback() {
        let err = load(&[("LSQ_REVOKER__API__BASE_URL", "http://api.leadsquared.com")])
            .expect_err("plain http");
        assert_eq!(err.key, "api.base_url");
        let ok = load(&[("LSQ_REVOKER__API__BASE_URL", "http://127.0.0.1:8080/v2/")])
            .expect("loopback http");
        assert_eq!(ok.api.base_url.as_str(), "http://127.0.0.1:8080/");
    }

    #[test]
    fn a_trailing_v2_is_tolerated() {
        let ok = load(&[(
            "LSQ_REVOKER__API__BASE_URL",
            "https://api-in21.leadsquared.com/v2",
        )])
        .expect("v2");
        assert_eq!(
            ok.api.base_url.as_str(),
            "https://api-in21.leadsquared.com/"
        );
    }

    #[test]
    fn the_secret_can_come_from_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file\n").expect("write");
        let settings = Settings::load_with(
            None,
            vec![
                ("LSQ_REVOKER__API__ACCESS_KEY".to_owned(), "ak".to_owned()),
                (
                    "LSQ_REVOKER__API__SECRET_KEY_FILE".to_owned(),
                    path.display().to_string(),
                ),
            ],
        )
        .expect("load");
        let secret = settings.api.secret_key.resolve().expect("read");
        assert_eq!(secret.expose_secret(), "from-file");
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let settings =
            load(&[("LSQ_REVOKER__API__SECRET_KEY", "hunter2-very-secret")]).expect("load");
        assert!(!format!("{settings:?}").contains("hunter2"));
    }
}
