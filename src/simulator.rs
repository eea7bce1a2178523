//! A strict, in-process stand-in for LeadSquared's "Revoke Access to a Shared Lead" API and its status endpoint.
//!
//! Integration tests, the benchmark and the `demo` command need a LeadSquared they can break on purpose (rate
//! limits, rotated keys, rejected leads, server errors, slow processing) and then inspect afterwards (every call,
//! every accepted item). This module owns that fake: it serves real HTTP on loopback so the production client is
//! exercised end to end, and it is deliberately *at least as strict* as the vendor's documentation
//! (`LEADSQUARED_API.md`): anything the documented API might reject, the simulator rejects. A client that works
//! against the simulator may still meet surprises in production, but never the other way round.
//!
//! `ExceptionType` values the vendor does not document are this simulator's own choice; clients must classify
//! answers by status code, never by exception type.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const REVOKE_PATH: &str = "/v2/EntityAccess.svc/Revoke";
const STATUS_PATH: &str = "/v2/EntityAccess.svc/Status/Get";

/// Far above any real batch (100 items are ~25 KiB) yet small enough that a runaway test cannot exhaust memory.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// How long `shutdown` lets in-flight calls finish before the server task is aborted, so a test never hangs on a
/// client that keeps a call open.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The attribute names the vendor documents for a Revoke item; names are matched case-sensitively because the
/// documentation spells them exactly so and the simulator must not be looser than the real API.
const ITEM_ATTRIBUTES: [&str; 7] = [
    "UserId",
    "Entity",
    "EntityType",
    "EntityId",
    "ContextEntity",
    "ContextEntityId",
    "AccessType",
];

/// How the simulator behaves; every fault it can inject is switched off by default.
#[derive(Clone)]
pub struct SimulatorConfig {
    pub access_key: String,
    pub secret_key: String,
    /// None = no limit (benchmarks). Some((max_calls, window)).
    pub rate_limit: Option<(usize, Duration)>,
    /// Each call sleeps a uniformly random time in [min, max] before answering (after it was counted).
    pub latency: (Duration, Duration),
    /// Fraction 0.0..=1.0 of otherwise-valid Revoke calls answered 500 (random).
    pub server_error_rate: f64,
    /// When Some, 429 answers carry a `Retry-After: <secs>` header (the vendor does not document one).
    pub retry_after: Option<Duration>,
    /// Once a call exceeds the limit, every call is answered 429 for this long ("the service stops
    /// processing further requests for a while", says the vendor). None: one window of the limit.
    pub rate_limit_penalty: Option<Duration>,
    /// A Revoke call carrying any of these EntityIds fails as a whole with 400 naming that lead, as the real
    /// service does when it rejects an item.
    pub rejected_lead_ids: HashSet<String>,
    /// How long after acceptance a request reports processed on the status endpoint.
    pub processing_time: Duration,
    /// Requests carrying an item with one of these EntityIds report a non-null ErrorMessage once processed.
    pub failing_lead_ids: HashSet<String>,
}

impl Default for SimulatorConfig {
    /// The Enterprise plan's limit (25 calls in 5 s), so a default simulator already punishes unpaced clients.
    fn default() -> Self {
        Self {
            access_key: "sim-access-key".to_owned(),
            secret_key: "sim-secret-key".to_owned(),
            rate_limit: Some((25, Duration::from_secs(5))),
            latency: (Duration::ZERO, Duration::ZERO),
            server_error_rate: 0.0,
            retry_after: None,
            rate_limit_penalty: None,
            rejected_lead_ids: HashSet::new(),
            processing_time: Duration::ZERO,
            failing_lead_ids: HashSet::new(),
        }
    }
}

/// Counters over every answered call, so tests and the benchmark can assert on totals without replaying calls.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SimulatorStats {
    pub calls: u64,
    pub revoke_calls: u64,
    pub status_calls: u64,
    pub accepted: u64,
    pub items_accepted: u64,
    pub rate_limited: u64,
    pub bad_requests: u64,
    pub unauthorized: u64,
    pub not_found: u64,
    pub server_errors: u64,
}

/// One answered call, kept so tests can check pacing (arrival times) and outcomes after the fact.
#[derive(Clone, Debug)]
pub struct CallRecord {
    /// Arrival, measured from simulator start on a monotonic clock.
    pub at: Duration,
    pub endpoint: Endpoint,
    pub status: u16,
}

/// Which API a call addressed; `Other` is anything the simulator answers 404.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Revoke,
    Status,
    Other,
}

/// One Revoke item exactly as the vendor documents it, so accepted work can be compared with what was queued.
///
/// Deserializing is as strict as the simulator: unknown attributes and a `null` `AccessType` are refused.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RevokeItem {
    pub user_id: String,
    pub entity: i64,
    pub entity_type: i64,
    pub entity_id: String,
    pub context_entity: i64,
    pub context_entity_id: String,
    /// Omitted rather than sent as `null` when absent: the vendor documents the attribute as optional, not nullable,
    /// and the simulator rejects `null`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_integer"
    )]
    pub access_type: Option<i64>,
}

/// Reads an optional attribute that, when present, must be an integer: plain `Option<i64>` would take `null` as
/// absent, which the documentation does not allow.
fn present_integer<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    <i64 as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// A running simulator; dropping it stops the server as well, `shutdown` additionally waits for that to finish.
pub struct Simulator {
    base_url: String,
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Simulator {
    /// Binds an ephemeral loopback port so parallel tests never collide, and serves on a spawned task.
    pub async fn start(config: SimulatorConfig) -> std::io::Result<Simulator> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared::new(config));
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // A dropped sender counts as a stop signal, which is what makes dropping the simulator enough.
            let signal = async {
                stopped.await.ok();
            };
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::warn!(error = %error, "simulator server stopped with an error");
            }
        });
        tracing::debug!(%base_url, "simulator listening");
        Ok(Simulator {
            base_url,
            shared,
            stop,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash, to be used as the LeadSquared host.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    pub fn stats(&self) -> SimulatorStats {
        self.shared.lock().stats.clone()
    }

    /// Every answered call in arrival order; calls still in flight are left out because they have no status yet.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.shared
            .lock()
            .calls
            .iter()
            .filter_map(|call| {
                call.status.map(|status| CallRecord {
                    at: call.at,
                    endpoint: call.endpoint,
                    status,
                })
            })
            .collect()
    }

    /// Every item of every Revoke call answered 200, in the order the calls were accepted.
    pub fn accepted_items(&self) -> Vec<RevokeItem> {
        self.shared.lock().accepted_items.clone()
    }

    /// Replaces the valid keys, so a test can provoke 401s mid-run and then repair them.
    pub fn set_keys(&self, access: &str, secret: &str) {
        let mut state = self.shared.lock();
        state.access_key = access.to_owned();
        state.secret_key = secret.to_owned();
    }

    /// Answer every call 404, as a host that does not serve this account (another region's) does.
    pub fn set_wrong_host(&self, wrong: bool) {
        self.shared.lock().wrong_host = wrong;
    }

    pub fn set_server_error_rate(&self, rate: f64) {
        self.shared.lock().server_error_rate = clamp_rate(rate);
    }

    /// A reversed range is read as the same range the right way round rather than rejected.
    pub fn set_latency(&self, min: Duration, max: Duration) {
        self.shared.lock().latency = ordered(min, max);
    }

    /// Stops accepting connections, lets in-flight calls finish (within a grace period) and waits for the server.
    pub async fn shutdown(self) {
        let Simulator { stop, mut task, .. } = self;
        stop.send(()).ok();
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// The largest number of arrivals inside any half-open window `[t, t + window)`: the quantity the vendor limits,
/// so tests can prove a client never exceeded it. Arrivals need not be sorted.
pub fn max_calls_in_any_window(arrivals: &[Duration], window: Duration) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort_unstable();
    let mut best = 0;
    let mut end = 0;
    // The busiest window can always be moved to start at an arrival, so only those starts are tried.
    for (start, &first) in sorted.iter().enumerate() {
        end = end.max(start);
        while end < sorted.len() && sorted[end] - first < window {
            end += 1;
        }
        best = best.max(end - start);
    }
    best
}

/// Settings fixed at start plus the state every call touches; the mutex is never held across an `.await`.
struct Shared {
    started: Instant,
    rate_limit: Option<(usize, Duration)>,
    rate_limit_penalty: Option<Duration>,
    retry_after: Option<Duration>,
    rejected_lead_ids: HashSet<String>,
    failing_lead_ids: HashSet<String>,
    processing_time: Duration,
    state: Mutex<SimState>,
}

struct SimState {
    access_key: String,
    secret_key: String,
    latency: (Duration, Duration),
    server_error_rate: f64,
    /// Arrivals still inside the sliding window, oldest first.
    arrivals: VecDeque<Instant>,
    /// After a call over the limit, every call before this is refused too.
    penalised_until: Option<Instant>,
    /// Every path answers 404 (see [`Simulator::set_wrong_host`]).
    wrong_host: bool,
    calls: Vec<PendingCall>,
    stats: SimulatorStats,
    accepted_items: Vec<RevokeItem>,
    requests: HashMap<String, AcceptedRequest>,
}

/// A call is recorded when it arrives (so records keep arrival order) and gets its status when answered.
struct PendingCall {
    at: Duration,
    endpoint: Endpoint,
    status: Option<u16>,
}

struct AcceptedRequest {
    accepted_at: Instant,
    /// The first item whose lead is configured to fail: `(lead, user)`.
    first_failure: Option<(String, String)>,
}

/// What was decided about a call at the moment it arrived, before any latency.
struct Admission {
    slot: usize,
    latency: Duration,
    verdict: Verdict,
}

enum Verdict {
    Unknown,
    RateLimited,
    Unauthorized,
    Admitted,
}

impl Shared {
    fn new(config: SimulatorConfig) -> Self {
        Self {
            started: Instant::now(),
            rate_limit: config.rate_limit,
            rate_limit_penalty: config
                .rate_limit_penalty
                .or(config.rate_limit.map(|(_, window)| window)),
            retry_after: config.retry_after,
            rejected_lead_ids: config.rejected_lead_ids,
            failing_lead_ids: config.failing_lead_ids,
            processing_time: config.processing_time,
            state: Mutex::new(SimState {
                access_key: config.access_key,
                secret_key: config.secret_key,
                latency: ordered(config.latency.0, config.latency.1),
                server_error_rate: clamp_rate(config.server_error_rate),
                arrivals: VecDeque::new(),
                penalised_until: None,
                wrong_host: false,
                calls: Vec::new(),
                stats: SimulatorStats::default(),
                accepted_items: Vec::new(),
                requests: HashMap::new(),
            }),
        }
    }

    /// A panic elsewhere while holding the lock must not take every later call down with it.
    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the arrival and decides rate limit and authentication in one critical section, so concurrent calls
    /// are counted in exactly the order they are judged.
    fn admit(&self, endpoint: Endpoint, credentials: &Credentials) -> Admission {
        let now = Instant::now();
        let mut state = self.lock();
        let slot = state.calls.len();
        state.calls.push(PendingCall {
            at: now.duration_since(self.started),
            endpoint,
            status: None,
        });
        // Every call of the account counts, a call to an unknown path too.
        let over_limit = self.over_limit(&mut state.arrivals, now);
        if endpoint == Endpoint::Other || state.wrong_host {
            return Admission {
                slot,
                latency: Duration::ZERO,
                verdict: Verdict::Unknown,
            };
        }
        let latency = sample_latency(state.latency);
        let penalised = state.penalised_until.is_some_and(|until| now < until);
        if over_limit && !penalised {
            state.penalised_until = self.rate_limit_penalty.map(|penalty| now + penalty);
        }
        let verdict = if over_limit || penalised {
            Verdict::RateLimited
        } else if credentials.matches(&state.access_key, &state.secret_key) {
            Verdict::Admitted
        } else {
            Verdict::Unauthorized
        };
        Admission {
            slot,
            latency,
            verdict,
        }
    }

    /// Counts this arrival — whatever its fate — and says whether it made the window exceed the limit.
    fn over_limit(&self, arrivals: &mut VecDeque<Instant>, now: Instant) -> bool {
        let Some((max_calls, window)) = self.rate_limit else {
            return false;
        };
        while arrivals
            .front()
            .is_some_and(|&oldest| now.duration_since(oldest) >= window)
        {
            arrivals.pop_front();
        }
        arrivals.push_back(now);
        arrivals.len() > max_calls
    }

    fn rate_limited(&self) -> Reply {
        let message = match self.rate_limit {
            Some((max_calls, window)) => format!(
                "API calls exceeded the limit of {max_calls} in {} second(s)",
                format_seconds(window)
            ),
            None => "API calls exceeded the limit".to_owned(),
        };
        let mut reply = Reply::error(
            StatusCode::TOO_MANY_REQUESTS,
            "MXAPIRateLimitExceededException",
            message,
        );
        reply.retry_after = self.retry_after;
        reply
    }

    /// Settles a Revoke call whose body passed validation: rejected leads, injected server errors, then acceptance.
    fn revoke(&self, slot: usize, items: Vec<RevokeItem>) -> Reply {
        if let Some(item) = items
            .iter()
            .find(|item| self.rejected_lead_ids.contains(&item.entity_id))
        {
            let message = format!(
                "Lead {} does not exist or is not shared with user {}",
                item.entity_id, item.user_id
            );
            let reply = Reply::error(StatusCode::BAD_REQUEST, "MXInvalidInputException", message);
            self.finish(&mut self.lock(), slot, Endpoint::Revoke, &reply);
            return reply;
        }
        let mut state = self.lock();
        let rate = state.server_error_rate;
        if rate > 0.0 && rand::rng().random::<f64>() < rate {
            let reply = Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Exception",
                "An unexpected error occurred while processing the request (simulated)".to_owned(),
            );
            self.finish(&mut state, slot, Endpoint::Revoke, &reply);
            return reply;
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let first_failure = items
            .iter()
            .find(|item| self.failing_lead_ids.contains(&item.entity_id))
            .map(|item| (item.entity_id.clone(), item.user_id.clone()));
        state.requests.insert(
            id.clone(),
            AcceptedRequest {
                accepted_at: Instant::now(),
                first_failure,
            },
        );
        let reply = Reply::ok(json!({"Status": "Success", "Message": {"Id": id}}));
        state.stats.accepted += 1;
        state.stats.items_accepted += items.len() as u64;
        state.accepted_items.extend(items);
        self.finish(&mut state, slot, Endpoint::Revoke, &reply);
        reply
    }

    fn status(&self, slot: usize, id: Option<&str>) -> Reply {
        let mut state = self.lock();
        let reply = match id.and_then(|id| state.requests.get(id)) {
            None => Reply::error(
                StatusCode::BAD_REQUEST,
                "MXInvalidInputException",
                format!("Invalid request id '{}'", id.unwrap_or_default()),
            ),
            Some(request) if request.accepted_at.elapsed() < self.processing_time => {
                Reply::ok(json!({
                    "Status": "Success",
                    "Message": {"ResponseText": "Request is being processed."},
                    "ShareStatus": 1,
                    "ErrorMessage": null,
                }))
            }
            Some(AcceptedRequest {
                first_failure: Some((lead, user)),
                ..
            }) => Reply::ok(json!({
                "Status": "Success",
                "Message": {"ResponseText": "Request processed with errors."},
                "ShareStatus": 6,
                "ErrorMessage": format!(
                    "Lead {lead} could not be revoked for user {user}: access not found"
                ),
            })),
            Some(_) => Reply::ok(json!({
                "Status": "Success",
                "Message": {"ResponseText": "Request processed successfully."},
                "ShareStatus": 6,
                "ErrorMessage": null,
            })),
        };
        self.finish(&mut state, slot, Endpoint::Status, &reply);
        reply
    }

    fn finish_alone(&self, slot: usize, endpoint: Endpoint, reply: &Reply) {
        self.finish(&mut self.lock(), slot, endpoint, reply);
    }

    /// Gives the call its status and counts it, under the same lock as any state change the answer implies, so a
    /// client that has seen an answer always finds it reflected in `stats`, `calls` and `accepted_items`.
    fn finish(&self, state: &mut SimState, slot: usize, endpoint: Endpoint, reply: &Reply) {
        let code = reply.status.as_u16();
        if let Some(call) = state.calls.get_mut(slot) {
            call.status = Some(code);
        }
        let stats = &mut state.stats;
        stats.calls += 1;
        match endpoint {
            Endpoint::Revoke => stats.revoke_calls += 1,
            Endpoint::Status => stats.status_calls += 1,
            Endpoint::Other => {}
        }
        match reply.status {
            StatusCode::TOO_MANY_REQUESTS => stats.rate_limited += 1,
            StatusCode::BAD_REQUEST => stats.bad_requests += 1,
            StatusCode::UNAUTHORIZED => stats.unauthorized += 1,
            StatusCode::NOT_FOUND => stats.not_found += 1,
            StatusCode::INTERNAL_SERVER_ERROR => stats.server_errors += 1,
            _ => {}
        }
        tracing::debug!(?endpoint, status = code, "simulator answered");
    }
}

/// An answer not yet turned into an HTTP response, so it can be counted first.
struct Reply {
    status: StatusCode,
    body: Value,
    retry_after: Option<Duration>,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            retry_after: None,
        }
    }

    fn error(status: StatusCode, exception_type: &str, message: String) -> Self {
        Self {
            status,
            body: json!({
                "Status": "Error",
                "ExceptionType": exception_type,
                "ExceptionMessage": message,
            }),
            retry_after: None,
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(after) = self.retry_after {
            // Retry-After carries whole seconds; rounding up keeps a client that obeys it on the safe side.
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The keys a call presented; headers win over query parameters, as the vendor recommends headers.
struct Credentials {
    access: Option<String>,
    secret: Option<String>,
}

impl Credentials {
    fn from_request(headers: &HeaderMap, query: &[(String, String)]) -> Self {
        let pick = |header_name: &str, query_name: &str| {
            headers
                .get(header_name)
                .and_then(|value| value.to_str().ok())
                .or_else(|| query_param(query, query_name))
                .map(str::to_owned)
        };
        Self {
            access: pick("x-lsq-accesskey", "accessKey"),
            secret: pick("x-lsq-secretkey", "secretKey"),
        }
    }

    fn matches(&self, access: &str, secret: &str) -> bool {
        self.access.as_deref() == Some(access) && self.secret.as_deref() == Some(secret)
    }
}

/// One handler behind every path rather than a route table, so every call is recorded the same way and the
/// order of judgement (count, authenticate, wait, validate) lives in one place.
async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let endpoint = classify(&parts.method, parts.uri.path());
    let query = query_pairs(&parts.uri);
    let credentials = Credentials::from_request(&parts.headers, &query);
    let admission = shared.admit(endpoint, &credentials);
    if !admission.latency.is_zero() {
        tokio::time::sleep(admission.latency).await;
    }
    let slot = admission.slot;
    let reply = match admission.verdict {
        Verdict::Unknown => {
            let reply = Reply::error(
                StatusCode::NOT_FOUND,
                "ApiNotFoundException",
                "API not found. Check the path and host.".to_owned(),
            );
            shared.finish_alone(slot, endpoint, &reply);
            reply
        }
        Verdict::RateLimited => {
            let reply = shared.rate_limited();
            shared.finish_alone(slot, endpoint, &reply);
            reply
        }
        Verdict::Unauthorized => {
            let reply = Reply::error(
                StatusCode::UNAUTHORIZED,
                "MXUnAuthorizedAccessException",
                "Invalid access credentials".to_owned(),
            );
            shared.finish_alone(slot, endpoint, &reply);
            reply
        }
        Verdict::Admitted if endpoint == Endpoint::Status => {
            shared.status(slot, query_param(&query, "id"))
        }
        Verdict::Admitted => {
            let content_type = parts.headers.get(header::CONTENT_TYPE);
            let parsed = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
                Ok(bytes) => parse_revoke_body(content_type, &bytes),
                Err(_) => Err(format!(
                    "Request body could not be read or exceeds {MAX_BODY_BYTES} bytes"
                )),
            };
            match parsed {
                Ok(items) => shared.revoke(slot, items),
                Err(message) => {
                    let reply =
                        Reply::error(StatusCode::BAD_REQUEST, "MXInvalidInputException", message);
                    shared.finish_alone(slot, endpoint, &reply);
                    reply
                }
            }
        }
    };
    reply.into_response()
}

fn classify(method: &Method, path: &str) -> Endpoint {
    match (method, path) {
        (&Method::POST, REVOKE_PATH) => Endpoint::Revoke,
        (&Method::GET, STATUS_PATH) => Endpoint::Status,
        _ => Endpoint::Other,
    }
}

/// A malformed query string is treated as carrying no parameters, which then fails auth or the id lookup.
fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|Query(pairs)| pairs)
        .unwrap_or_default()
}

fn query_param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Validates a Revoke body against the documented specification and returns its items, or the 400 message.
///
/// Valid bodies take a typed fast path (the benchmark pushes thousands of 100-item bodies a second); only a body
/// the typed parse refuses goes through `serde_json::Value`, whose sole job is to explain precisely what is wrong.
fn parse_revoke_body(
    content_type: Option<&HeaderValue>,
    body: &[u8],
) -> Result<Vec<RevokeItem>, String> {
    let is_json = content_type
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err("Content-Type must be application/json".to_owned());
    }
    let items = match serde_json::from_slice::<Vec<RevokeItem>>(body) {
        Ok(items) => items,
        Err(error) => return Err(explain_refusal(body, &error)),
    };
    if items.is_empty() {
        return Err(EMPTY_BODY.to_owned());
    }
    for (index, item) in items.iter().enumerate() {
        check_values(index, item)?;
    }
    Ok(items)
}

const EMPTY_BODY: &str = "Request body must contain at least one item";

/// The slow path for a body the typed parse refused: names the first item and attribute at fault. A body it finds
/// nothing wrong with (say, an attribute given twice) is still refused, with the typed parser's own reason.
fn explain_refusal(body: &[u8], typed_error: &serde_json::Error) -> String {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => return format!("Request body is not valid JSON: {error}"),
    };
    let Value::Array(elements) = value else {
        return "Request body must be a JSON array of items".to_owned();
    };
    for (index, element) in elements.iter().enumerate() {
        if let Err(message) =
            explain_item(index, element).and_then(|item| check_values(index, &item))
        {
            return message;
        }
    }
    format!("Request body is not per specification: {typed_error}")
}

/// Checks structure and JSON types of one item; the values themselves are left to `check_values`.
fn explain_item(index: usize, element: &Value) -> Result<RevokeItem, String> {
    let Value::Object(item) = element else {
        return Err(format!("Item {index} is not a JSON object"));
    };
    if let Some(unknown) = item
        .keys()
        .find(|name| !ITEM_ATTRIBUTES.contains(&name.as_str()))
    {
        return Err(format!(
            "Item {index}: unknown attribute '{unknown}' (attribute names are case-sensitive)"
        ));
    }
    let access_type = match item.get("AccessType") {
        None => None,
        Some(value) => Some(value.as_i64().ok_or_else(|| {
            format!(
                "Item {index}: attribute 'AccessType' must be 1 (read) or 2 (write) when present, got {value}"
            )
        })?),
    };
    Ok(RevokeItem {
        user_id: string(index, item, "UserId")?,
        entity: integer(index, item, "Entity")?,
        entity_type: integer(index, item, "EntityType")?,
        entity_id: string(index, item, "EntityId")?,
        context_entity: integer(index, item, "ContextEntity")?,
        context_entity_id: string(index, item, "ContextEntityId")?,
        access_type,
    })
}

fn required<'a>(
    index: usize,
    item: &'a Map<String, Value>,
    name: &str,
) -> Result<&'a Value, String> {
    item.get(name)
        .ok_or_else(|| format!("Item {index}: missing mandatory attribute '{name}'"))
}

/// Only JSON integers: `"1"` or `1.0` are refused because nothing in the documentation says they are accepted.
fn integer(index: usize, item: &Map<String, Value>, name: &str) -> Result<i64, String> {
    let value = required(index, item, name)?;
    value.as_i64().ok_or_else(|| {
        format!("Item {index}: attribute '{name}' must be a JSON integer, got {value}")
    })
}

fn string(index: usize, item: &Map<String, Value>, name: &str) -> Result<String, String> {
    let value = required(index, item, name)?;
    value.as_str().map(str::to_owned).ok_or_else(|| {
        format!("Item {index}: attribute '{name}' must be a JSON string, got {value}")
    })
}

/// The value rules shared by both paths, so the fast path can never be looser than the explaining one.
fn check_values(index: usize, item: &RevokeItem) -> Result<(), String> {
    let constants = [
        ("Entity", item.entity, 1),
        ("EntityType", item.entity_type, 3),
        ("ContextEntity", item.context_entity, 1),
    ];
    for (name, found, expected) in constants {
        if found != expected {
            return Err(format!(
                "Item {index}: attribute '{name}' must be {expected}, got {found}"
            ));
        }
    }
    for (name, text) in [
        ("UserId", &item.user_id),
        ("ContextEntityId", &item.context_entity_id),
    ] {
        if !is_hyphenated_guid(text) {
            return Err(format!(
                "Item {index}: attribute '{name}' must be a GUID like 0203f172-8642-11e7-9bed-069b743e848f, got {text:?}"
            ));
        }
    }
    if item.entity_id.trim().is_empty() {
        return Err(format!(
            "Item {index}: attribute 'EntityId' must be a non-empty string (the lead's ProspectAutoId)"
        ));
    }
    match item.access_type {
        None | Some(1 | 2) => Ok(()),
        Some(other) => Err(format!(
            "Item {index}: attribute 'AccessType' must be 1 (read) or 2 (write) when present, got {other}"
        )),
    }
}

/// Only the 8-4-4-4-12 form the vendor shows; braces, URNs and the unhyphenated form are refused.
fn is_hyphenated_guid(text: &str) -> bool {
    text.len() == 36
        && text
            .bytes()
            .enumerate()
            .all(|(position, byte)| match position {
                8 | 13 | 18 | 23 => byte == b'-',
                _ => byte.is_ascii_hexdigit(),
            })
}

/// Whole seconds print as integers like the vendor's "5 second(s)"; shorter test windows print as decimals.
fn format_seconds(window: Duration) -> String {
    if window.subsec_nanos() == 0 {
        window.as_secs().to_string()
    } else {
        window.as_secs_f64().to_string()
    }
}

fn sample_latency((min, max): (Duration, Duration)) -> Duration {
    if max.is_zero() {
        Duration::ZERO
    } else {
        rand::rng().random_range(min..=max)
    }
}

fn ordered(a: Duration, b: Duration) -> (Duration, Duration) {
    (a.min(b), a.max(b))
}

/// NaN or out-of-range rates would make the random draw meaningless; they are pinned into 0.0..=1.0.
fn clamp_rate(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "0203f172-8642-11e7-9bed-069b743e848f";
    const ACTIVITY: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";

    fn item(lead: &str) -> Value {
        json!({
            "UserId": USER,
            "Entity": 1,
            "EntityType": 3,
            "EntityId": lead,
            "ContextEntity": 1,
            "ContextEntityId": ACTIVITY,
        })
    }

    async fn start(config: SimulatorConfig) -> (Simulator, reqwest::Client) {
        let simulator = Simulator::start(config)
            .await
            .expect("the simulator binds a loopback port");
        (simulator, reqwest::Client::new())
    }

    async fn revoke(simulator: &Simulator, client: &reqwest::Client, body: &Value) -> (u16, Value) {
        let response = client
            .post(format!("{}{REVOKE_PATH}", simulator.base_url()))
            .header("x-LSQ-AccessKey", "sim-access-key")
            .header("x-LSQ-SecretKey", "sim-secret-key")
            .json(body)
            .send()
            .await
            .expect("the simulator answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("the answer is JSON"))
    }

    async fn status_of(simulator: &Simulator, client: &reqwest::Client, id: &str) -> (u16, Value) {
        let response = client
            .get(format!("{}{STATUS_PATH}?id={id}", simulator.base_url()))
            .header("x-lsq-accesskey", "sim-access-key")
            .header("x-lsq-secretkey", "sim-secret-key")
            .send()
            .await
            .expect("the simulator answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("the answer is JSON"))
    }

    fn request_id(answer: &Value) -> String {
        answer["Message"]["Id"]
            .as_str()
            .expect("an accepted call carries an id")
            .to_owned()
    }

    #[tokio::test]
    async fn a_valid_revoke_call_returns_a_request_id_and_records_its_items() {
        let (simulator, client) = start(SimulatorConfig::default()).await;
        let mut write = item("869197");
        write["AccessType"] = json!(2);
        let (status, answer) = revoke(&simulator, &client, &json!([item("869196"), write])).await;

        assert_eq!(status, 200);
        assert_eq!(answer["Status"], "Success");
        let id = request_id(&answer);
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        let items = simulator.accepted_items();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].entity_id, "869196");
        assert_eq!(items[0].access_type, None);
        assert_eq!(items[1].access_type, Some(2));
        let stats = simulator.stats();
        assert_eq!(
            (
                stats.calls,
                stats.revoke_calls,
                stats.accepted,
                stats.items_accepted
            ),
            (1, 1, 1, 2)
        );
        simulator.shutdown().await;
    }

    #[tokio::test]
    async fn a_serialized_revoke_item_is_accepted_as_is() {
        let (simulator, client) = start(SimulatorConfig::default()).await;
        let sent = RevokeItem {
            user_id: USER.to_owned(),
            entity: 1,
            entity_type: 3,
            entity_id: "42".to_owned(),
            context_entity: 1,
            context_entity_id: ACTIVITY.to_owned(),
            access_type: None,
        };
        let body = serde_json::to_value([&sent]).expect("items serialize");
        let (status, _) = revoke(&simulator, &client, &body).await;

        assert_eq!(status, 200);
        assert_eq!(simulator.accepted_items(), vec![sent]);
    }

    #[tokio::test]
    async fn the_call_over_the_limit_is_answered_429_and_calls_are_accepted_again_after_the_window()
    {
        let window = Duration::from_millis(300);
        let (simulator, client) = start(SimulatorConfig {
            rate_limit: Some((3, window)),
            ..SimulatorConfig::default()
        })
        .await;
        let body = json!([item("1")]);
        for _ in 0..3 {
            assert_eq!(revoke(&simulator, &client, &body).await.0, 200);
        }
        let (status, answer) = revoke(&simulator, &client, &body).await;
        assert_eq!(status, 429);
        assert_eq!(
            answer["ExceptionMessage"],
            "API calls exceeded the limit of 3 in 0.3 second(s)"
        );

        tokio::time::sleep(window + Duration::from_millis(20)).await;
        assert_eq!(revoke(&simulator, &client, &body).await.0, 200);
        let stats = simulator.stats();
        assert_eq!((stats.accepted, stats.rate_limited), (4, 1));
        let arrivals: Vec<Duration> = simulator.calls().iter().map(|call| call.at).collect();
        assert_eq!(max_calls_in_any_window(&arrivals, window), 4);
    }

    #[tokio::test]
    async fn after_a_call_over_the_limit_every_call_is_refused_for_the_penalty() {
        let window = Duration::from_millis(200);
        let (simulator, client) = start(SimulatorConfig {
            rate_limit: Some((2, window)),
            rate_limit_penalty: Some(Duration::from_millis(600)),
            ..SimulatorConfig::default()
        })
        .await;
        let body = json!([item("1")]);
        for _ in 0..2 {
            assert_eq!(revoke(&simulator, &client, &body).await.0, 200);
        }
        assert_eq!(revoke(&simulator, &client, &body).await.0, 429);

        // The window has room again, the penalty has not passed.
        tokio::time::sleep(window + Duration::from_millis(50)).await;
        assert_eq!(revoke(&simulator, &client, &body).await.0, 429);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(revoke(&simulator, &client, &body).await.0, 200);
        assert_eq!(simulator.stats().rate_limited, 2);
    }

    #[tokio::test]
    async fn rejected_calls_count_toward_the_limit_too() {
        let (simulator, client) = start(SimulatorConfig {
            rate_limit: Some((2, Duration::from_secs(5))),
            ..SimulatorConfig::default()
        })
        .await;
        let (status, _) = revoke(&simulator, &client, &json!([{"Bogus": 1}])).await;
        assert_eq!(status, 400);
        assert_eq!(
            revoke(&simulator, &client, &json!([item("1")])).await.0,
            200
        );
        let (status, answer) = revoke(&simulator, &client, &json!([item("1")])).await;

        assert_eq!(status, 429);
        assert_eq!(
            answer["ExceptionMessage"],
            "API calls exceeded the limit of 2 in 5 second(s)"
        );
    }

    #[tokio::test]
    async fn a_configured_retry_after_is_sent_with_429_answers() {
        let (simulator, client) = start(SimulatorConfig {
            rate_limit: Some((0, Duration::from_secs(5))),
            retry_after: Some(Duration::from_millis(1500)),
            ..SimulatorConfig::default()
        })
        .await;
        let response = client
            .get(format!("{}{STATUS_PATH}?id=x", simulator.base_url()))
            .send()
            .await
            .expect("the simulator answers");

        assert_eq!(response.status().as_u16(), 429);
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("2")
        );
    }

    #[tokio::test]
    async fn a_wrong_key_is_answered_401_and_right_keys_pass_in_headers_or_query() {
        let (simulator, client) = start(SimulatorConfig::default()).await;
        let url = format!("{}{REVOKE_PATH}", simulator.base_url());
        let body = json!([item("7")]);

        let wrong = client
            .post(&url)
            .header("x-LSQ-AccessKey", "sim-access-key")
            .header("x-LSQ-SecretKey", "nope")
            .json(&body)
            .send()
            .await
            .expect("the simulator answers");
        assert_eq!(wrong.status().as_u16(), 401);
        let answer: Value = wrong.json().await.expect("the answer is JSON");
        assert_eq!(answer["ExceptionMessage"], "Invalid access credentials");

        let missing = client.post(&url).json(&body).send().await.expect("answer");
        assert_eq!(missing.status().as_u16(), 401);

        let by_query = client
            .post(format!(
                "{url}?accessKey=sim-access-key&secretKey=sim-secret-key"
            ))
            .json(&body)
            .send()
            .await
            .expect("answer");
        assert_eq!(by_query.status().as_u16(), 200);
        assert_eq!(revoke(&simulator, &client, &body).await.0, 200);

        simulator.set_keys("rotated-access", "rotated-secret");
        assert_eq!(revoke(&simulator, &client, &body).await.0, 401);
        simulator.set_keys("sim-access-key", "sim-secret-key");
        assert_eq!(revoke(&simulator, &client, &body).await.0, 200);
        assert_eq!(simulator.stats().unauthorized, 3);
    }

    #[tokio::test]
    async fn a_body_off_the_specification_is_answered_400_naming_item_and_attribute() {
        let (simulator, client) = start(SimulatorConfig::default()).await;
        let mut unknown = item("1");
        unknown["userId"] = json!(USER);
        let mut bad_guid = item("1");
        bad_guid["ContextEntityId"] = json!("0203f172864211e79bed069b743e848f");
        let mut wrong_entity = item("1");
        wrong_entity["Entity"] = json!(2);
        let mut entity_as_string = item("1");
        entity_as_string["EntityType"] = json!("3");
        let mut numeric_lead = item("1");
        numeric_lead["EntityId"] = json!(869196);
        let mut write_and_more = item("1");
        write_and_more["AccessType"] = json!(3);
        let mut lowercase_guid_ok = item("1");
        lowercase_guid_ok["UserId"] = json!(USER.to_uppercase());
        let mut null_access = item("1");
        null_access["AccessType"] = Value::Null;
        let mut missing_user = item("1");
        if let Some(map) = missing_user.as_object_mut() {
            map.remove("UserId");
        }

        let cases = [
            (
                json!([item("1"), unknown]),
                "Item 1: unknown attribute 'userId'",
            ),
            (
                json!([bad_guid.clone()]),
                "Item 0: attribute 'ContextEntityId'",
            ),
            (
                json!([item("1"), item("2"), wrong_entity]),
                "Item 2: attribute 'Entity' must be 1",
            ),
            (
                json!([entity_as_string]),
                "Item 0: attribute 'EntityType' must be a JSON integer",
            ),
            (
                json!([write_and_more]),
                "Item 0: attribute 'AccessType' must be 1 (read) or 2 (write)",
            ),
            (
                json!([lowercase_guid_ok, bad_guid.clone()]),
                "Item 1: attribute 'ContextEntityId'",
            ),
            (json!([numeric_lead]), "Item 0: attribute 'EntityId'"),
            (json!([null_access]), "Item 0: attribute 'AccessType'"),
            (
                json!([missing_user]),
                "Item 0: missing mandatory attribute 'UserId'",
            ),
            (json!([]), "at least one item"),
            (item("1"), "must be a JSON array"),
            (json!([1]), "Item 0 is not a JSON object"),
        ];
        for (body, expected) in &cases {
            let (status, answer) = revoke(&simulator, &client, body).await;
            assert_eq!(status, 400, "{body}");
            let message = answer["ExceptionMessage"].as_str().unwrap_or_default();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }

        let not_json = client
            .post(format!("{}{REVOKE_PATH}", simulator.base_url()))
            .header("x-LSQ-AccessKey", "sim-access-key")
            .header("x-LSQ-SecretKey", "sim-secret-key")
            .header("content-type", "text/plain")
            .body(json!([item("1")]).to_string())
            .send()
            .await
            .expect("answer");
        assert_eq!(not_json.status().as_u16(), 400);

        let with_charset = client
            .post(format!("{}{REVOKE_PATH}", simulator.base_url()))
            .header("x-LSQ-AccessKey", "sim-access-key")
            .header("x-LSQ-SecretKey", "sim-secret-key")
            .header("content-type", "application/json; charset=utf-8")
            .body(json!([item("1")]).to_string())
            .send()
            .await
            .expect("answer");
        assert_eq!(with_charset.status().as_u16(), 200);
        assert_eq!(simulator.stats().bad_requests, cases.len() as u64 + 1);
        assert_eq!(simulator.accepted_items().len(), 1);
    }

    #[tokio::test]
    async fn an_attribute_given_twice_is_refused_rather_than_silently_merged() {
        let (simulator, client) = start(SimulatorConfig::default()).await;
        let one = item("1").to_string();
        let twice = format!("[{},\"EntityId\":\"2\"}}]", one.trim_end_matches('}'));
        let response = client
            .post(format!("{}{REVOKE_PATH}", simulator.base_url()))
            .header("x-LSQ-AccessKey", "sim-access-key")
            .header("x-LSQ-SecretKey", "sim-secret-key")
            .header("content-type", "application/json")
            .body(twice)
            .send()
            .await
            .expect("answer");

        assert_eq!(response.status().as_u16(), 400);
        let answer: Value = response.json().await.expect("the answer is JSON");
        let message = answer["ExceptionMessage"].as_str().unwrap_or_default();
        assert!(message.contains("duplicate field `EntityId`"), "{message}");
    }

    #[tokio::test]
    async fn a_rejected_lead_fails_the_whole_call_with_400_naming_it() {
        let (simulator, client) = start(SimulatorConfig {
            rejected_lead_ids: HashSet::from(["869196".to_owned()]),
            ..SimulatorConfig::default()
        })
        .await;
        let (status, answer) =
            revoke(&simulator, &client, &json!([item("1"), item("869196")])).await;

        assert_eq!(status, 400);
        let message = answer["ExceptionMessage"].as_str().unwrap_or_default();
        assert!(message.contains("Lead 869196"), "{message}");
        assert!(simulator.accepted_items().is_empty());
    }

    #[tokio::test]
    async fn injected_server_errors_answer_500_until_switched_off() {
        let (simulator, client) = start(SimulatorConfig {
            server_error_rate: 1.0,
            ..SimulatorConfig::default()
        })
        .await;
        let body = json!([item("1")]);
        let (status, answer) = revoke(&simulator, &client, &body).await;
        assert_eq!(status, 500);
        assert_eq!(answer["ExceptionType"], "Exception");

        simulator.set_server_error_rate(0.0);
        assert_eq!(revoke(&simulator, &client, &body).await.0, 200);
        assert_eq!(simulator.stats().server_errors, 1);
        assert_eq!(simulator.accepted_items().len(), 1);
    }

    #[tokio::test]
    async fn configured_latency_delays_every_answer() {
        let (simulator, client) = start(SimulatorConfig::default()).await;
        simulator.set_latency(Duration::from_millis(60), Duration::from_millis(60));
        let started = Instant::now();
        assert_eq!(
            revoke(&simulator, &client, &json!([item("1")])).await.0,
            200
        );
        assert!(started.elapsed() >= Duration::from_millis(60));
    }

    #[tokio::test]
    async fn the_status_goes_from_processing_to_processed() {
        let (simulator, client) = start(SimulatorConfig {
            processing_time: Duration::from_millis(200),
            ..SimulatorConfig::default()
        })
        .await;
        let (_, answer) = revoke(&simulator, &client, &json!([item("1")])).await;
        let id = request_id(&answer);

        let (status, early) = status_of(&simulator, &client, &id).await;
        assert_eq!(status, 200);
        assert_eq!(early["ShareStatus"], 1);
        assert_eq!(
            early["Message"]["ResponseText"],
            "Request is being processed."
        );

        tokio::time::sleep(Duration::from_millis(220)).await;
        let (status, done) = status_of(&simulator, &client, &id).await;
        assert_eq!(status, 200);
        assert_eq!(
            done,
            json!({
                "Status": "Success",
                "Message": {"ResponseText": "Request processed successfully."},
                "ShareStatus": 6,
                "ErrorMessage": null,
            })
        );
        assert_eq!(simulator.stats().status_calls, 2);
    }

    #[tokio::test]
    async fn a_request_with_a_failing_lead_reports_an_error_message_once_processed() {
        let (simulator, client) = start(SimulatorConfig {
            failing_lead_ids: HashSet::from(["869196".to_owned()]),
            ..SimulatorConfig::default()
        })
        .await;
        let (_, answer) = revoke(&simulator, &client, &json!([item("1"), item("869196")])).await;
        let (status, done) = status_of(&simulator, &client, &request_id(&answer)).await;

        assert_eq!(status, 200);
        assert_eq!(done["ShareStatus"], 6);
        assert_eq!(
            done["Message"]["ResponseText"],
            "Request processed with errors."
        );
        assert_eq!(
            done["ErrorMessage"],
            format!("Lead 869196 could not be revoked for user {USER}: access not found")
        );
    }

    #[tokio::test]
    async fn an_unknown_or_missing_request_id_is_answered_400() {
        let (simulator, client) = start(SimulatorConfig::default()).await;
        let (status, answer) =
            status_of(&simulator, &client, "4c224152d0e74190b29038397e3d93af").await;
        assert_eq!(status, 400);
        let message = answer["ExceptionMessage"].as_str().unwrap_or_default();
        assert!(message.starts_with("Invalid request id"), "{message}");

        let missing = client
            .get(format!(
                "{}{STATUS_PATH}?accessKey=sim-access-key&secretKey=sim-secret-key",
                simulator.base_url()
            ))
            .send()
            .await
            .expect("answer");
        assert_eq!(missing.status().as_u16(), 400);
    }

    #[tokio::test]
    async fn an_unknown_path_or_method_is_answered_404_and_recorded() {
        let (simulator, client) = start(SimulatorConfig::default()).await;
        let unknown_path = client
            .post(format!(
                "{}/v2/EntityAccess.svc/Share",
                simulator.base_url()
            ))
            .send()
            .await
            .expect("answer");
        assert_eq!(unknown_path.status().as_u16(), 404);
        let answer: Value = unknown_path.json().await.expect("the answer is JSON");
        assert_eq!(
            answer,
            json!({
                "Status": "Error",
                "ExceptionType": "ApiNotFoundException",
                "ExceptionMessage": "API not found. Check the path and host.",
            })
        );
        let wrong_method = client
            .get(format!("{}{REVOKE_PATH}", simulator.base_url()))
            .send()
            .await
            .expect("answer");
        assert_eq!(wrong_method.status().as_u16(), 404);

        let calls = simulator.calls();
        assert_eq!(calls.len(), 2);
        assert!(
            calls
                .iter()
                .all(|call| call.endpoint == Endpoint::Other && call.status == 404)
        );
        assert!(calls[0].at <= calls[1].at);
        assert_eq!(simulator.stats().not_found, 2);
    }

    #[test]
    fn max_calls_in_any_window_counts_the_busiest_half_open_window() {
        let ms = Duration::from_millis;
        let second = Duration::from_secs(1);
        assert_eq!(max_calls_in_any_window(&[], second), 0);
        assert_eq!(max_calls_in_any_window(&[ms(5)], second), 1);
        assert_eq!(max_calls_in_any_window(&[ms(0), ms(1000)], second), 1);
        assert_eq!(max_calls_in_any_window(&[ms(0), ms(999)], second), 2);
        assert_eq!(
            max_calls_in_any_window(
                &[ms(2500), ms(0), ms(1500), ms(1600), ms(2400), ms(2450)],
                second
            ),
            4
        );
        assert_eq!(max_calls_in_any_window(&[ms(7), ms(7), ms(7)], ms(1)), 3);
        assert_eq!(max_calls_in_any_window(&[ms(1), ms(2)], Duration::ZERO), 0);
    }

    #[test]
    fn window_lengths_print_like_the_vendor_message() {
        assert_eq!(format_seconds(Duration::from_secs(5)), "5");
        assert_eq!(format_seconds(Duration::from_millis(500)), "0.5");
        assert_eq!(format_seconds(Duration::from_millis(1250)), "1.25");
    }

    #[test]
    fn only_hyphenated_guids_are_accepted() {
        assert!(is_hyphenated_guid(USER));
        assert!(is_hyphenated_guid(&USER.to_uppercase()));
        assert!(!is_hyphenated_guid("0203f172864211e79bed069b743e848f"));
        assert!(!is_hyphenated_guid(
            "{0203f172-8642-11e7-9bed-069b743e848f}"
        ));
        assert!(!is_hyphenated_guid("0203f172-8642-11e7-9bed-069b743e848g"));
    }
}
