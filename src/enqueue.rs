//! `lsq-revoker enqueue`: add jobs to the queue by hand or from a file, as an operator would.
//!
//! One job comes from flags; many come from a CSV file (with a header) or JSON lines, from a
//! file or standard input. Every line is checked with the dispatcher's own rules
//! ([`JobRow::revocation`]) and stored in the canonical form those rules produce, so a job that
//! enqueue accepts never fails validation later. The whole input is read and checked before the
//! database is touched: with one bad line, nothing is written and every reason is reported
//! (the first twenty, with their line numbers).
//!
//! Valid input is then inserted in chunks of 500 rows, one short write transaction each,
//! because `run` and the producers share the database: a single transaction for a large file
//! would hold SQLite's only write lock for as long as the whole insert takes, and stall them.
//! That keeps the all-or-nothing promise for *bad input*, which is refused before the first
//! chunk. The one partial case left is a failure between chunks (a crash, the disk filling up),
//! and re-running the same command then finishes the job: a revocation that is already
//! `pending` or `in_flight` is skipped, as is a line repeating an earlier one in the input.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{ArgGroup, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Settings;
use crate::job::{JobRow, Revocation};
use crate::store::{NewJob, Store};

/// Rows per insert: a few milliseconds of write lock, so the worker and producers barely notice.
const CHUNK: usize = 500;

/// Per-line reasons printed at most; the rest are counted.
const MAX_REPORTED: usize = 20;

/// The names a column or key may have: ours, then the table's.
const USER_NAMES: [&str; 1] = ["user_id"];
const LEAD_NAMES: [&str; 2] = ["lead_id", "entity_id"];
const ACTIVITY_NAMES: [&str; 2] = ["activity_id", "context_entity_id"];
const ACCESS_NAMES: [&str; 2] = ["access", "access_type"];

/// Add revocation jobs: one from flags, or many from a CSV or JSON-lines file.
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("source").required(true).args(["file", "user_id"])))]
pub struct EnqueueArgs {
    /// CSV (with a header) or JSON-lines file of jobs; `-` reads standard input.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Format of --file; by default from its extension (.csv, .jsonl, .ndjson). Required for `-`.
    #[arg(long, value_enum, requires = "file")]
    format: Option<Format>,
    /// GUID of the user whose access is revoked (one job from flags).
    #[arg(long, value_name = "GUID", requires_all = ["lead_id", "activity_id"])]
    user_id: Option<String>,
    /// The lead's ProspectAutoId.
    #[arg(long, value_name = "ID", conflicts_with = "file")]
    lead_id: Option<String>,
    /// GUID of the activity in whose context the lead was shared.
    #[arg(long, value_name = "GUID", conflicts_with = "file")]
    activity_id: Option<String>,
    /// Which access to revoke [default: read].
    #[arg(long, value_enum, conflicts_with = "file")]
    access: Option<Access>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Comma-separated, with a header: user_id,lead_id,activity_id,access.
    Csv,
    /// One JSON object per line with the same keys.
    Jsonl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Access {
    Read,
    Write,
}

/// `lsq-revoker enqueue`: check the input, then insert what is not already waiting.
pub async fn run(settings: &Settings, args: EnqueueArgs) -> anyhow::Result<()> {
    let checked = match args.file {
        Some(path) => {
            let format = format_of(&path, args.format)?;
            tokio::task::spawn_blocking(move || read_input(&path, format))
                .await
                .context("reading the input")??
        }
        None => {
            let access = match args.access.unwrap_or(Access::Read) {
                Access::Read => "read",
                Access::Write => "write",
            };
            let fields = Fields {
                user_id: args.user_id,
                lead_id: args.lead_id,
                activity_id: args.activity_id,
                access: Some(access.to_owned()),
            };
            let mut checked = Checked::default();
            checked.line(1, Ok(fields));
            if let Some((_, reason)) = checked.reported.first() {
                anyhow::bail!("the job is invalid: {reason}; nothing was enqueued");
            }
            checked
        }
    };
    let store = Store::open(&settings.database.url)
        .await
        .with_context(|| format!("database.url = {:?}", settings.database.url))?;
    let inserted = insert(&store, &checked.jobs).await;
    store.close().await;
    let inserted = inserted?;
    let skipped = checked.repeated + (checked.jobs.len() as u64 - inserted);
    let noun = if inserted == 1 { "job" } else { "jobs" };
    println!("enqueued {inserted} {noun} ({skipped} already pending, skipped)");
    Ok(())
}

/// Insert in chunks, each its own short transaction, reporting progress on stderr.
async fn insert(store: &Store, jobs: &[NewJob]) -> anyhow::Result<u64> {
    let mut progress = Progress::new(jobs.len());
    let mut inserted = 0;
    let mut done = 0;
    for chunk in jobs.chunks(CHUNK) {
        inserted += store.enqueue_jobs(chunk).await.with_context(|| {
            format!(
                "{done} of {} rows were processed before this error; run the same command again \
                 to add the rest (jobs already pending are skipped)",
                jobs.len()
            )
        })?;
        done += chunk.len();
        progress.advance(done);
    }
    progress.finish();
    Ok(inserted)
}

/// `--format`, or the file's extension.
fn format_of(path: &Path, given: Option<Format>) -> anyhow::Result<Format> {
    if let Some(format) = given {
        return Ok(format);
    }
    if path == Path::new("-") {
        anyhow::bail!("--format csv|jsonl is required when reading standard input (--file -)");
    }
    let extension = path
        .extension()
        .and_then(|extension| extension.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("csv") => Ok(Format::Csv),
        Some("jsonl" | "ndjson") => Ok(Format::Jsonl),
        _ => anyhow::bail!(
            "cannot tell the format of {} from its name; add --format csv or --format jsonl",
            path.display()
        ),
    }
}

/// Read and check the whole input. `Err` when it cannot be read or any line is invalid.
fn read_input(path: &Path, format: Format) -> anyhow::Result<Checked> {
    let (name, input): (String, Box<dyn Read>) = if path == Path::new("-") {
        ("standard input".to_owned(), Box::new(io::stdin().lock()))
    } else {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        (path.display().to_string(), Box::new(file))
    };
    let mut input = BufReader::with_capacity(1 << 16, input);
    let mut checked = Checked::default();
    match format {
        Format::Csv => {
            let mut data = Vec::new();
            input
                .read_to_end(&mut data)
                .map_err(anyhow::Error::from)
                .and_then(|_| read_csv(&data, &mut checked))
        }
        Format::Jsonl => read_jsonl(input, &mut checked),
    }
    .with_context(|| format!("reading {name}"))?;
    if checked.invalid > 0 {
        return Err(InvalidInput {
            name,
            lines: checked.lines,
            invalid: checked.invalid,
            reported: checked.reported,
        }
        .into());
    }
    Ok(checked)
}

/// One line's values, before any check; `None` where the line has no such value.
#[derive(Debug, Default)]
struct Fields {
    user_id: Option<String>,
    lead_id: Option<String>,
    activity_id: Option<String>,
    access: Option<String>,
}

/// The checked jobs of an input, distinct and in input order, and what was wrong with it.
#[derive(Debug, Default)]
struct Checked {
    jobs: Vec<NewJob>,
    seen: HashSet<Revocation>,
    /// Lines with a job (blank lines and the header are not counted).
    lines: u64,
    /// Lines repeating a revocation of an earlier line.
    repeated: u64,
    invalid: u64,
    reported: Vec<(u64, String)>,
}

impl Checked {
    fn line(&mut self, line: u64, fields: Result<Fields, String>) {
        self.lines += 1;
        match fields.and_then(revocation) {
            Ok(revocation) if self.seen.contains(&revocation) => self.repeated += 1,
            Ok(revocation) => {
                self.jobs.push(NewJob {
                    user_id: revocation.user.to_string(),
                    entity_id: revocation.lead.as_str().to_owned(),
                    context_entity_id: revocation.activity.to_string(),
                    access_type: revocation.access as i64,
                });
                self.seen.insert(revocation);
            }
            Err(reason) => self.invalid(line, reason),
        }
    }

    fn invalid(&mut self, line: u64, reason: String) {
        self.invalid += 1;
        if self.reported.len() < MAX_REPORTED {
            self.reported.push((line, reason));
        }
    }
}

/// The dispatcher's own check, after mapping `read`/`write` to the table's `1`/`2`.
fn revocation(fields: Fields) -> Result<Revocation, String> {
    let missing = |names: &[&str]| format!("no value for {}", names.join(" or "));
    let access = fields.access.unwrap_or_default();
    let access_type = match access.trim().to_ascii_lowercase().as_str() {
        "" | "read" | "1" => "1".to_owned(),
        "write" | "2" => "2".to_owned(),
        _ => access,
    };
    let row = JobRow {
        id: 0,
        user_id: fields.user_id.ok_or_else(|| missing(&USER_NAMES))?,
        entity_id: fields.lead_id.ok_or_else(|| missing(&LEAD_NAMES))?,
        context_entity_id: fields.activity_id.ok_or_else(|| missing(&ACTIVITY_NAMES))?,
        access_type,
        attempts: 0,
        created_at: None,
    };
    row.revocation().map_err(|err| err.to_string())
}

/// Which field a column or key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    User,
    Lead,
    Activity,
    Access,
}

impl Field {
    const ALL: [(Field, &'static [&'static str]); 4] = [
        (Field::User, &USER_NAMES),
        (Field::Lead, &LEAD_NAMES),
        (Field::Activity, &ACTIVITY_NAMES),
        (Field::Access, &ACCESS_NAMES),
    ];

    fn named(name: &str) -> Option<Field> {
        Self::ALL
            .into_iter()
            .find(|(_, names)| names.contains(&name))
            .map(|(field, _)| field)
    }

    fn names(self) -> &'static [&'static str] {
        Self::ALL
            .into_iter()
            .find(|(field, _)| *field == self)
            .map_or(&[], |(_, names)| names)
    }

    fn set(self, fields: &mut Fields, value: String) {
        let slot = match self {
            Field::User => &mut fields.user_id,
            Field::Lead => &mut fields.lead_id,
            Field::Activity => &mut fields.activity_id,
            Field::Access => &mut fields.access,
        };
        *slot = Some(value);
    }
}

const EXPECTED_NAMES: &str = "user_id, lead_id (or entity_id), activity_id (or context_entity_id) \
                              and optionally access (or access_type)";

/// The header, mapped to fields: every column known, none twice, all but access present.
fn csv_columns(header: &csv::StringRecord) -> Result<Vec<Field>, String> {
    let mut columns = Vec::with_capacity(header.len());
    for name in header {
        let name = name
            .trim_start_matches('\u{feff}')
            .trim()
            .to_ascii_lowercase();
        let Some(field) = Field::named(&name) else {
            return Err(format!(
                "the header has a column {name:?}; expected a header naming the columns {EXPECTED_NAMES}"
            ));
        };
        if columns.contains(&field) {
            return Err(format!(
                "the header names {} twice",
                field.names().join(" / ")
            ));
        }
        columns.push(field);
    }
    for (field, names) in Field::ALL {
        if field != Field::Access && !columns.contains(&field) {
            return Err(format!("the header has no {} column", names.join(" or ")));
        }
    }
    Ok(columns)
}

/// The whole input in memory, so that a record's line number can be told exactly (see
/// [`record_line`]); the checked jobs take more room than the text anyway.
fn read_csv(data: &[u8], checked: &mut Checked) -> anyhow::Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(data);
    let mut columns = None;
    let mut record = csv::StringRecord::new();
    loop {
        let start = reader.position().clone();
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) if record.iter().all(|value| value.trim().is_empty()) => {}
            Ok(true) => {
                let line = record_line(data, record.position().unwrap_or(&start));
                match &columns {
                    None => {
                        let found = csv_columns(&record)
                            .map_err(|reason| anyhow::anyhow!("line {line}: {reason}"))?;
                        columns = Some(found);
                    }
                    Some(columns) => checked.line(line, csv_fields(columns, &record)),
                }
            }
            Err(err) if err.is_io_error() => return Err(err.into()),
            Err(err) => {
                let line = record_line(data, err.position().unwrap_or(&start));
                let reason = match err.kind() {
                    csv::ErrorKind::Utf8 { .. } => "is not valid UTF-8 text".to_owned(),
                    _ => err.to_string(),
                };
                if columns.is_none() {
                    anyhow::bail!("line {line}: the header {reason}");
                }
                checked.lines += 1;
                checked.invalid(line, reason);
            }
        }
    }
}

/// The line a record starts on. The reader reports where it began looking, before the blank
/// lines it skips, so count those.
fn record_line(data: &[u8], position: &csv::Position) -> u64 {
    let from = usize::try_from(position.byte()).unwrap_or(usize::MAX);
    let blank = data
        .get(from..)
        .unwrap_or_default()
        .iter()
        .take_while(|byte| matches!(byte, b'\r' | b'\n'))
        .filter(|byte| **byte == b'\n')
        .count();
    position.line() + blank as u64
}

fn csv_fields(columns: &[Field], record: &csv::StringRecord) -> Result<Fields, String> {
    if record.len() != columns.len() {
        return Err(format!(
            "has {} fields, the header has {}",
            record.len(),
            columns.len()
        ));
    }
    let mut fields = Fields::default();
    for (field, value) in columns.iter().zip(record) {
        field.set(&mut fields, value.to_owned());
    }
    Ok(fields)
}

fn read_jsonl(mut input: impl BufRead, checked: &mut Checked) -> anyhow::Result<()> {
    let mut buffer = Vec::new();
    let mut line = 0;
    loop {
        buffer.clear();
        if input.read_until(b'\n', &mut buffer)? == 0 {
            return Ok(());
        }
        line += 1;
        let text = buffer.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&buffer);
        if text.trim_ascii().is_empty() {
            continue;
        }
        checked.line(line, json_fields(text));
    }
}

fn json_fields(text: &[u8]) -> Result<Fields, String> {
    let value: serde_json::Value = serde_json::from_slice(text).map_err(|err| {
        let message = err.to_string();
        let reason = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(reason, _)| reason);
        format!("is not valid JSON ({reason} at column {})", err.column())
    })?;
    let serde_json::Value::Object(object) = value else {
        return Err(format!(
            "is not a JSON object with the keys {EXPECTED_NAMES}"
        ));
    };
    let mut fields = Fields::default();
    let mut given = Vec::new();
    for (key, value) in object {
        let Some(field) = Field::named(&key) else {
            return Err(format!(
                "has a key {key:?}; expected the keys {EXPECTED_NAMES}"
            ));
        };
        if given.contains(&field) {
            return Err(format!("gives {} twice", field.names().join(" / ")));
        }
        given.push(field);
        let text = match value {
            serde_json::Value::String(text) => text,
            // A lead id or access code written as a number is still unambiguous.
            serde_json::Value::Number(number)
                if matches!(field, Field::Lead | Field::Access)
                    && (number.is_u64() || number.is_i64()) =>
            {
                number.to_string()
            }
            serde_json::Value::Null if field == Field::Access => continue,
            other => {
                return Err(format!(
                    "has {key} = {other}, which is not {}",
                    match field {
                        Field::Lead | Field::Access => "text or a whole number",
                        Field::User | Field::Activity => "text",
                    }
                ));
            }
        };
        field.set(&mut fields, text);
    }
    Ok(fields)
}

/// An input with invalid lines, of which nothing was enqueued.
#[derive(Debug, thiserror::Error)]
struct InvalidInput {
    name: String,
    lines: u64,
    invalid: u64,
    reported: Vec<(u64, String)>,
}

/// A summary line first, so that a log or a terminal shows what happened at a glance, then
/// one line per reported reason.
impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.invalid == 1 { "is" } else { "are" };
        write!(
            f,
            "{}: {} of {} lines {verb} invalid; nothing was enqueued",
            self.name, self.invalid, self.lines
        )?;
        for (line, reason) in &self.reported {
            write!(f, "\n  line {line}: {reason}")?;
        }
        let more = self.invalid - self.reported.len() as u64;
        if more > 0 {
            write!(f, "\n  … and {more} more")?;
        }
        Ok(())
    }
}

/// A bar on a terminal, plain lines otherwise (logs, pipes), nothing for a small input.
enum Progress {
    Hidden,
    Bar(ProgressBar),
    Lines {
        total: usize,
        step: usize,
        next: usize,
    },
}

impl Progress {
    fn new(total: usize) -> Self {
        if total <= CHUNK {
            Progress::Hidden
        } else if io::stderr().is_terminal() {
            let bar = ProgressBar::new(total as u64);
            if let Ok(style) =
                ProgressStyle::with_template("enqueue {bar:40} {pos}/{len} rows, {eta} left")
            {
                bar.set_style(style);
            }
            Progress::Bar(bar)
        } else {
            let step = total.div_ceil(10);
            Progress::Lines {
                total,
                step,
                next: step,
            }
        }
    }

    fn advance(&mut self, done: usize) {
        match self {
            Progress::Hidden => {}
            Progress::Bar(bar) => bar.set_position(done as u64),
            Progress::Lines { total, step, next } => {
                if done >= *next || done == *total {
                    eprintln!("enqueue: {done}/{total} rows");
                    *next = (done / *step + 1) * *step;
                }
            }
        }
    }

    fn finish(self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "0203f172-8642-11e7-9bed-069b743e848f";
    const ACTIVITY: &str = "9a0e8f2c-1b7d-4c55-8f5e-2b8d6f0c1a11";

    fn csv(text: &str) -> anyhow::Result<Checked> {
        let mut checked = Checked::default();
        read_csv(text.as_bytes(), &mut checked).map(|()| checked)
    }

    fn jsonl(text: &str) -> Checked {
        let mut checked = Checked::default();
        read_jsonl(text.as_bytes(), &mut checked).expect("in memory");
        checked
    }

    #[test]
    fn csv_accepts_the_table_column_names_in_any_order_and_normalises_guids() {
        let text = format!(
            "\u{feff}access_type,context_entity_id,entity_id,user_id\n\nwrite,{},869196,{USER}\n",
            ACTIVITY.to_uppercase()
        );
        let checked = csv(&text).expect("valid");
        assert_eq!(
            checked.jobs,
            [NewJob {
                user_id: USER.to_owned(),
                entity_id: "869196".to_owned(),
                context_entity_id: ACTIVITY.to_owned(),
                access_type: 2,
            }]
        );
        assert_eq!(checked.lines, 1);
    }

    #[test]
    fn csv_reports_each_bad_line_with_its_number() {
        let text = format!(
            "user_id,lead_id,activity_id,access\n{USER},1,{ACTIVITY},\nnope,2,{ACTIVITY},read\n\n{USER},3,{ACTIVITY}\n{USER},4,{ACTIVITY},all\n\
             {USER},\"5\r\n\",{ACTIVITY},read\r\n\r\n{USER},6,{ACTIVITY},x"
        );
        let checked = csv(&text).expect("readable");
        assert_eq!(checked.jobs.len(), 1);
        let lines: Vec<u64> = checked.reported.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [3, 5, 6, 7, 10]);
        assert!(checked.reported[0].1.contains("user_id \"nope\""));
        assert!(checked.reported[1].1.contains("3 fields"));
        assert!(checked.reported[2].1.contains("access_type \"all\""));
    }

    #[test]
    fn a_csv_header_with_an_unknown_or_missing_column_is_refused() {
        let typo = csv("user_id,lead_id,activity_id,acess\n").expect_err("typo");
        assert!(typo.to_string().contains("\"acess\""), "{typo}");
        let missing = csv("user_id,lead_id\n").expect_err("missing");
        assert!(
            missing
                .to_string()
                .contains("activity_id or context_entity_id"),
            "{missing}"
        );
    }

    #[test]
    fn json_lines_accept_numbers_for_lead_and_access_and_skip_repeats() {
        let text = format!(
            "{{\"user_id\":\"{USER}\",\"lead_id\":869196,\"activity_id\":\"{ACTIVITY}\",\"access\":2}}\n\
             \n\
             {{\"user_id\":\"{USER}\",\"entity_id\":\"869196\",\"context_entity_id\":\"{ACTIVITY}\",\"access_type\":\"write\"}}\n"
        );
        let checked = jsonl(&text);
        assert_eq!(checked.jobs.len(), 1);
        assert_eq!(checked.repeated, 1);
        assert_eq!(checked.invalid, 0);
    }

    #[test]
    fn json_lines_name_what_is_wrong() {
        let text = format!(
            "[1]\n{{\"user_id\":\"{USER}\"\n{{\"user_id\":\"{USER}\",\"lead_id\":\"1\"}}\n{{\"user\":1}}\n"
        );
        let checked = jsonl(&text);
        let reasons: Vec<&str> = checked.reported.iter().map(|(_, r)| r.as_str()).collect();
        assert!(reasons[0].contains("not a JSON object"), "{reasons:?}");
        assert!(reasons[1].contains("not valid JSON"), "{reasons:?}");
        assert!(
            reasons[2].contains("no value for activity_id"),
            "{reasons:?}"
        );
        assert!(reasons[3].contains("key \"user\""), "{reasons:?}");
    }

    #[test]
    fn the_error_lists_at_most_twenty_reasons_after_a_summary() {
        let text = "x\n".repeat(25);
        let mut checked = jsonl(&text);
        let err = InvalidInput {
            name: "jobs.jsonl".to_owned(),
            lines: checked.lines,
            invalid: checked.invalid,
            reported: std::mem::take(&mut checked.reported),
        }
        .to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(
            lines[0],
            "jobs.jsonl: 25 of 25 lines are invalid; nothing was enqueued"
        );
        assert_eq!(lines.len(), 1 + MAX_REPORTED + 1);
        assert_eq!(lines[MAX_REPORTED + 1], "  … and 5 more");
    }
}
