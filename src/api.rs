//! The LeadSquared client: the Revoke call, its wire types, and what each answer means.
//!
//! Every answer is classified into an [`Outcome`] here, once, so the dispatcher decides on
//! meanings (retry, pause, bisect) rather than on status codes. Keys never leave this module
//! in a printable form: header values are marked sensitive and transport errors are stripped
//! of their URL, which carries the keys when `api.auth = "query"`.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::{ApiSettings, AuthMode};
use crate::job::Revocation;

const REVOKE_PATH: &str = "v2/EntityAccess.svc/Revoke";
const STATUS_PATH: &str = "v2/EntityAccess.svc/Status/Get";
const ACCESS_KEY_HEADER: &str = "x-LSQ-AccessKey";
const SECRET_KEY_HEADER: &str = "x-LSQ-SecretKey";
/// Error bodies are kept for operators, up to this many bytes.
const MAX_MESSAGE_LEN: usize = 500;
/// A `Retry-After` longer than this is treated as a mistake and capped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Key(#[from] crate::config::SettingsError),
    #[error("setting `{0}` holds characters that cannot go in an HTTP header")]
    BadKey(&'static str),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// One item of a Revoke call's body, as documented.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RevokeItem<'a> {
    user_id: Uuid,
    /// 1: lead
    entity: u8,
    /// 3: user
    entity_type: u8,
    entity_id: &'a str,
    /// 1: activity
    context_entity: u8,
    context_entity_id: Uuid,
    access_type: u8,
}

impl<'a> From<&'a Revocation> for RevokeItem<'a> {
    fn from(revocation: &'a Revocation) -> Self {
        Self {
            user_id: revocation.user,
            entity: 1,
            entity_type: 3,
            entity_id: revocation.lead.as_str(),
            context_entity: 1,
            context_entity_id: revocation.activity,
            access_type: revocation.access as u8,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Accepted {
    status: String,
    message: AcceptedMessage,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AcceptedMessage {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StatusBody {
    status: String,
    message: Option<StatusMessage>,
    share_status: Option<i64>,
    error_message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StatusMessage {
    response_text: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    exception_message: Option<String>,
}

/// What an answer means: `T` is what a successful answer carries (a request Id for Revoke, a
/// [`StatusReport`] for Status/Get).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// 200 with the documented body.
    Accepted(T),
    /// 429: the account's budget is spent (possibly by another integration). Pause everything.
    RateLimited { retry_after: Option<Duration> },
    /// 400 (and 413/422): something in the body is not acceptable. Bisect to find it.
    Rejected { message: String },
    /// 401/403, or 404/3xx: the keys, or the host or path, are wrong. Pause everything until fixed.
    Misconfigured { status: u16, message: String },
    /// 5xx, 408, timeouts, connection errors, unreadable answers: try again later.
    Retryable {
        status: Option<u16>,
        message: String,
    },
}

/// What Status/Get says about a request. `ShareStatus` values other than the documented 6 are
/// kept verbatim: the vendor does not say what they mean.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StatusReport {
    pub share_status: Option<i64>,
    pub response_text: Option<String>,
    pub error_message: Option<String>,
}

/// An answer with what was measured of it.
#[derive(Debug, Clone)]
pub struct Response<T> {
    pub outcome: Outcome<T>,
    pub status: Option<u16>,
    pub latency: Duration,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    revoke_url: Url,
    status_url: Url,
    auth: AuthMode,
    access_key: SecretString,
    secret_key: SecretString,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("revoke_url", &self.revoke_url.as_str())
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(settings: &ApiSettings) -> Result<Self, ClientError> {
        let access_key = settings.access_key.resolve()?;
        let secret_key = settings.secret_key.resolve()?;
        let mut headers = HeaderMap::new();
        if settings.auth == AuthMode::Header {
            headers.insert(ACCESS_KEY_HEADER, sensitive(&access_key, "api.access_key")?);
            headers.insert(SECRET_KEY_HEADER, sensitive(&secret_key, "api.secret_key")?);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(settings.max_in_flight.max(1))
            .user_agent(concat!("lsq-revoker/", env!("CARGO_PKG_VERSION")))
            // Never follow a redirect: reqwest would resend the key headers to the new host
            // (it strips only `Authorization` and cookies), and a redirect means the configured
            // host or scheme is not the API's. It is answered like a 404.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| ClientError::Build(err.without_url().to_string()))?;
        let url = |path| {
            settings
                .base_url
                .join(path)
                .map_err(|err: url::ParseError| ClientError::Build(err.to_string()))
        };
        Ok(Self {
            http,
            revoke_url: url(REVOKE_PATH)?,
            status_url: url(STATUS_PATH)?,
            auth: settings.auth,
            access_key,
            secret_key,
        })
    }

    /// One Revoke call carrying `revocations`; a success carries the request Id.
    pub async fn revoke(&self, revocations: &[&Revocation]) -> Response<String> {
        let items: Vec<RevokeItem<'_>> = revocations.iter().map(|&r| r.into()).collect();
        let request = self
            .authorised(self.http.post(self.revoke_url.clone()))
            .json(&items);
        self.call(request, |body| {
            let accepted: Accepted = serde_json::from_slice(body).ok()?;
            (accepted.status == "Success" && !accepted.message.id.is_empty())
                .then_some(accepted.message.id)
        })
        .await
    }

    /// One Status/Get call for `request_id`.
    pub async fn status(&self, request_id: &str) -> Response<StatusReport> {
        let request = self
            .authorised(self.http.get(self.status_url.clone()))
            .query(&[("id", request_id)]);
        self.call(request, |body| {
            let answer: StatusBody = serde_json::from_slice(body).ok()?;
            (answer.status == "Success").then(|| StatusReport {
                share_status: answer.share_status,
                response_text: answer.message.and_then(|message| message.response_text),
                error_message: answer.error_message.filter(|text| !text.trim().is_empty()),
            })
        })
        .await
    }

    fn authorised(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.auth {
            AuthMode::Header => request,
            AuthMode::Query => request.query(&[
                ("accessKey", self.access_key.expose_secret()),
                ("secretKey", self.secret_key.expose_secret()),
            ]),
        }
    }

    /// Send, read the whole answer and classify it; `parse` reads a 200's body.
    async fn call<T>(
        &self,
        request: reqwest::RequestBuilder,
        parse: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Response<T> {
        let started = Instant::now();
        let (status, outcome) = match request.send().await {
            Ok(response) => {
                let status = response.status();
                let headers = response.headers().clone();
                match response.bytes().await {
                    Ok(body) => (
                        Some(status.as_u16()),
                        classify(status, &headers, &body, parse),
                    ),
                    Err(err) => (Some(status.as_u16()), transport(status.as_u16(), err)),
                }
            }
            Err(err) => (err.status().map(|s| s.as_u16()), transport_error(err)),
        };
        Response {
            outcome: outcome.redacted(&[&self.access_key, &self.secret_key]),
            status,
            latency: started.elapsed(),
        }
    }
}

impl<T> Outcome<T> {
    /// The same outcome with each of `keys` masked in its message: an error page (a proxy's, a
    /// redirect's) may echo the request URL, which carries the keys when `api.auth = "query"`.
    fn redacted(self, keys: &[&SecretString]) -> Self {
        let mask = |mut message: String| {
            for key in keys {
                let key = key.expose_secret();
                if !key.is_empty() && message.contains(key) {
                    message = message.replace(key, "[redacted]");
                }
            }
            message
        };
        match self {
            Outcome::Rejected { message } => Outcome::Rejected {
                message: mask(message),
            },
            Outcome::Misconfigured { status, message } => Outcome::Misconfigured {
                status,
                message: mask(message),
            },
            Outcome::Retryable { status, message } => Outcome::Retryable {
                status,
                message: mask(message),
            },
            other => other,
        }
    }
}

fn sensitive(secret: &SecretString, key: &'static str) -> Result<HeaderValue, ClientError> {
    let mut value =
        HeaderValue::from_str(secret.expose_secret()).map_err(|_| ClientError::BadKey(key))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Where a redirect points, as scheme, host and port only: its path and query may echo the keys.
fn redirect_target(headers: &HeaderMap) -> String {
    headers
        .get(LOCATION)
        .and_then(|location| location.to_str().ok())
        .and_then(|location| Url::parse(location).ok())
        .map_or_else(
            || "another path on the same host".to_owned(),
            |url| url.origin().ascii_serialization(),
        )
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// The meaning of an HTTP answer.
fn classify<T>(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    parse: impl FnOnce(&[u8]) -> Option<T>,
) -> Outcome<T> {
    let message = || error_message(status, body);
    match status.as_u16() {
        200 => match parse(body) {
            Some(accepted) => Outcome::Accepted(accepted),
            // A Revoke may have been applied; revocation is idempotent, so asking again is safe.
            None => Outcome::Retryable {
                status: Some(200),
                message: format!("unexpected success body: {}", excerpt(body)),
            },
        },
        429 => Outcome::RateLimited {
            retry_after: retry_after(headers),
        },
        400 | 413 | 422 => Outcome::Rejected { message: message() },
        401 | 403 | 404 => Outcome::Misconfigured {
            status: status.as_u16(),
            message: message(),
        },
        300..=399 => Outcome::Misconfigured {
            status: status.as_u16(),
            message: format!("{}; redirected to {}", message(), redirect_target(headers)),
        },
        code => Outcome::Retryable {
            status: Some(code),
            message: message(),
        },
    }
}

/// Whether a refusal with this HTTP status points at `api.base_url` (wrong host, path or scheme)
/// rather than at the keys.
pub fn refuses_the_host(http_status: u16) -> bool {
    http_status == 404 || (300..400).contains(&http_status)
}

/// `HTTP 500: <ExceptionMessage>`, or the start of the body when it is not the documented JSON.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|error| error.exception_message)
        .map_or_else(|| excerpt(body), |message| truncate(&message));
    format!("HTTP {}: {detail}", status.as_u16())
}

fn excerpt(body: &[u8]) -> String {
    if body.is_empty() {
        return "(empty body)".to_owned();
    }
    truncate(&String::from_utf8_lossy(body))
}

fn truncate(text: &str) -> String {
    let text = text.trim();
    if text.len() <= MAX_MESSAGE_LEN {
        return text.to_owned();
    }
    let mut end = MAX_MESSAGE_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn transport<T>(status: u16, err: reqwest::Error) -> Outcome<T> {
    Outcome::Retryable {
        status: Some(status),
        message: format!("HTTP {status}, body unreadable: {}", describe(err)),
    }
}

fn transport_error<T>(err: reqwest::Error) -> Outcome<T> {
    Outcome::Retryable {
        status: None,
        message: describe(err),
    }
}

/// A transport error in words, with its causes, without the URL (it holds the keys in query mode).
fn describe(err: reqwest::Error) -> String {
    use std::fmt::Write as _;

    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let err = err.without_url();
    let mut message = format!("{kind}: {err}");
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        let _ = write!(message, ": {cause}");
        source = cause.source();
    }
    message
}
