//! lsq-revoker: takes back lead access shared with LeadSquared users, from a SQLite queue.
//!
//! How a job flows:
//!
//! 1. A producer inserts a row into `revocation_jobs` (`status = 'pending'`).
//! 2. The [`dispatcher`] claims due rows in one short write transaction ([`store`]), checks each
//!    ([`job`]); a malformed row ends `failed` with its reason and is never sent.
//! 3. Valid rows are grouped into one Revoke call of up to `batch.max_size` items ([`batch`]),
//!    duplicates sharing an item, and sent by the [`api`] client as soon as the exact sliding window of the
//!    account's limit ([`limiter`]) allows, several calls in flight side by side.
//! 4. The answer decides: 200 → `submitted` with the request Id; 400 → the batch is split and
//!    the halves sent until the bad item is alone and `failed`; 5xx/timeouts → back to
//!    `pending` with a persisted backoff ([`retry`]) until `retry.max_attempts`; 429 → every call
//!    pauses; 401/403/404 → every call pauses and single probes run until the keys work again.
//! 5. Each accepted request is polled with Status/Get on the same budget ([`poller`]) until
//!    LeadSquared confirms it: its jobs end `completed`, or `failed` with the vendor's reason
//!    (several items are resubmitted in halves to isolate the one that fails).
//!
//! Only one dispatcher works a database at a time ([`lock`]); a crashed one's claims return to
//! `pending` at the next start. [`simulator`] is a strict fake of the API for tests and
//! [`demo`]; [`config`] and [`telemetry`] are the settings and the logs; [`metrics`] serves
//! Prometheus metrics and `/healthz` when `metrics.listen` is set; [`ops`] and [`enqueue`] are
//! the operator's commands; [`app`] wires `run` together; [`clock`] maps the monotonic clock to
//! the timestamps the database keeps.

pub mod api;
pub mod app;
pub mod batch;
pub mod clock;
pub mod config;
pub mod demo;
pub mod dispatcher;
pub mod enqueue;
pub mod job;
pub mod limiter;
pub mod lock;
pub mod metrics;
pub mod ops;
pub mod poller;
pub mod retry;
pub mod simulator;
pub mod store;
pub mod telemetry;
