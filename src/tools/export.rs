//! Exports for auditors and finance tools: the log's events as JSON lines or
//! Parquet (filtered by tenant, programme, account and time), and tables of
//! books as Parquet. Parquet is written with the parquet crate's column
//! writers (no Arrow), uncompressed, one row group per chunk of rows.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use serde_json::json;

use crate::domain::{Account, AccountKey, Event, Millis};
use crate::log::arbiter::{report, Admitted, Arbiter, Home};
use crate::log::record::Position;
use crate::log::EventLog;
use crate::FastMap;

/// Rows per Parquet row group (and rows an export holds in memory at most).
pub const EXPORT_ROW_GROUP_ROWS: usize = 65_536;
/// Records read from the log per batch.
const EXPORT_READ_BATCH_RECORDS: usize = 4096;

/// One column's values.
pub enum Column {
    I64(Vec<i64>),
    Str(Vec<String>),
    Bool(Vec<bool>),
    /// Milliseconds since the epoch: TIMESTAMP(MILLIS, UTC).
    Millis(Vec<i64>),
    /// Values an event may not have (null where it has none).
    OptI64(Vec<Option<i64>>),
    OptStr(Vec<Option<String>>),
}

impl Column {
    /// The column's Parquet field, named `name`.
    fn field(&self, name: &str) -> String {
        match self {
            Column::I64(_) => format!("REQUIRED INT64 {name};"),
            Column::Str(_) => format!("REQUIRED BYTE_ARRAY {name} (UTF8);"),
            Column::Bool(_) => format!("REQUIRED BOOLEAN {name};"),
            Column::Millis(_) => format!("REQUIRED INT64 {name} (TIMESTAMP(MILLIS,true));"),
            Column::OptI64(_) => format!("OPTIONAL INT64 {name};"),
            Column::OptStr(_) => format!("OPTIONAL BYTE_ARRAY {name} (UTF8);"),
        }
    }
}

/// The definition levels of an optional column (1: a value, 0: null) and
/// its values.
fn defined<T: Clone>(v: &[Option<T>]) -> (Vec<i16>, Vec<T>) {
    (v.iter().map(|x| i16::from(x.is_some())).collect(), v.iter().flatten().cloned().collect())
}

/// A Parquet file written one row group at a time.
pub struct ParquetSink {
    writer: SerializedFileWriter<File>,
}

impl ParquetSink {
    /// `columns`: names and a sample of each column's kind, in order.
    pub fn create(path: &Path, table: &str, columns: &[(&str, &Column)]) -> anyhow::Result<ParquetSink> {
        let fields: Vec<String> = columns.iter().map(|(name, c)| c.field(name)).collect();
        let schema = Arc::new(parse_message_type(&format!("message {table} {{ {} }}", fields.join(" ")))?);
        let props = Arc::new(WriterProperties::builder().build());
        let file = File::create(path)?;
        Ok(ParquetSink { writer: SerializedFileWriter::new(file, schema, props)? })
    }

    /// Writes one row group; the columns come in schema order.
    pub fn write_group(&mut self, columns: Vec<Column>) -> anyhow::Result<()> {
        let mut group = self.writer.next_row_group()?;
        for column in columns {
            let mut w = group.next_column()?.ok_or_else(|| anyhow::anyhow!("more columns than the schema has"))?;
            match column {
                Column::I64(v) | Column::Millis(v) => {
                    w.typed::<Int64Type>().write_batch(&v, None, None)?;
                }
                Column::OptI64(v) => {
                    let (defs, v) = defined(&v);
                    w.typed::<Int64Type>().write_batch(&v, Some(&defs), None)?;
                }
                Column::OptStr(v) => {
                    let (defs, v) = defined(&v);
                    let v: Vec<ByteArray> = v.into_iter().map(|s| ByteArray::from(s.into_bytes())).collect();
                    w.typed::<ByteArrayType>().write_batch(&v, Some(&defs), None)?;
                }
                Column::Str(v) => {
                    let v: Vec<ByteArray> = v.into_iter().map(|s| ByteArray::from(s.into_bytes())).collect();
                    w.typed::<ByteArrayType>().write_batch(&v, None, None)?;
                }
                Column::Bool(v) => {
                    w.typed::<BoolType>().write_batch(&v, None, None)?;
                }
            }
            w.close()?;
        }
        group.close()?;
        Ok(())
    }

    pub fn close(self) -> anyhow::Result<()> {
        self.writer.close()?;
        Ok(())
    }
}

/// Which events an export takes.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub tenant: Option<String>,
    pub programme: Option<String>,
    pub account: Option<AccountKey>,
    /// Decided at or after (ms since the epoch).
    pub from: Option<Millis>,
    /// Decided before.
    pub to: Option<Millis>,
}

impl Filter {
    fn takes(&self, account: &AccountKey, at: Millis) -> bool {
        self.takes_account(account) && self.from.is_none_or(|f| at >= f) && self.to.is_none_or(|t| at < t)
    }

    /// Whether any event of `account` may be taken (its state is folded then).
    fn takes_account(&self, account: &AccountKey) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == account.tenant_id)
            && self.programme.as_ref().is_none_or(|p| *p == account.programme_id)
            && self.account.as_ref().is_none_or(|a| a == account)
    }
}

/// One exported event.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EventRow {
    pub partition: u32,
    pub offset: u64,
    /// Index of the event within its record.
    pub index: u32,
    /// RFC 3339 (UTC, milliseconds).
    pub at: String,
    pub at_ms: Millis,
    pub tenant_id: String,
    pub programme_id: String,
    pub member_id: String,
    /// Empty for events the writer's scheduler issued.
    pub request_id: String,
    pub programme_version: u64,
    pub event_type: String,
    /// The change to available + reserved − debt.
    pub delta: i64,
    /// The event's fields, with its kind in `type` ([`event_json`]).
    pub event: serde_json::Value,
}

/// An event as a JSON object: its kind in `type`, then its fields as the
/// API's `LedgerEvent` has them in the protobuf JSON mapping (snake_case
/// names, every field present, int64 as strings, instants as RFC 3339).
pub fn event_json(e: Event) -> serde_json::Value {
    let name = e.name();
    let api = serde_json::to_value(crate::api::convert::event_to_api(e)).unwrap_or_default();
    // The oneof is the message's one field: its value holds the event's.
    let mut v = match api {
        serde_json::Value::Object(m) => m.into_iter().next().map(|(_, inner)| inner).unwrap_or_default(),
        _ => serde_json::Value::Null,
    };
    if !v.is_object() {
        v = json!({});
    }
    v["type"] = name.into();
    v
}

/// The columns of an event export, in order. In Parquet `at` is a
/// TIMESTAMP(MILLIS, UTC), and the event's common facts have typed columns
/// of their own (null where the event has none), beside the whole event in
/// `event_json`.
pub const EVENT_COLUMNS: &[&str] = &[
    "partition",
    "offset",
    "index",
    "at",
    "at_ms",
    "tenant_id",
    "programme_id",
    "member_id",
    "request_id",
    "programme_version",
    "event_type",
    "delta",
    "event_json",
    "points",
    "growth",
    "lot_id",
    "order_ref",
    "reason",
    "operator",
];

/// The event's common facts, by their names in the API's event (the one
/// mapping of events to text): its points (`points`, or `granted_points`
/// for an earn), growth, lot, order reference, reason and operator.
fn facts(event: &serde_json::Value) -> (Option<i64>, Option<i64>, [Option<String>; 4]) {
    let int = |name: &str| event.get(name).and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_i64()));
    let text = |name: &str| event.get(name).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(String::from);
    let points = int("points").or_else(|| int("granted_points"));
    (points, int("growth"), [text("lot_id"), text("order_ref"), text("reason"), text("operator")])
}

/// Reads the whole log as of now (every partition to its current end, void
/// records skipped, in partition then offset order) and hands each event
/// the filter takes to `sink`. Returns the events handed over.
pub fn events(
    log: &dyn EventLog,
    filter: &Filter,
    mut sink: impl FnMut(EventRow) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let partitions: Vec<u32> = match &filter.account {
        Some(a) => vec![crate::log::record::partition_for(a, log.partitions())],
        None => (0..log.partitions()).collect(),
    };
    let mut n = 0;
    for p in partitions {
        let end = log.end_offset(p)?;
        let mut reader = log.reader(p, 0)?;
        let mut arbiter = Arbiter::default();
        let home = Home { partition: p, partitions: log.partitions() };
        // The accounts of the partition as folded so far: a record that would
        // break its account is skipped, as every reader skips it.
        let mut accounts: FastMap<AccountKey, Account> = FastMap::default();
        loop {
            let batch = crate::log::read_towards(reader.as_mut(), end, EXPORT_READ_BATCH_RECORDS)?;
            if batch.is_empty() {
                break;
            }
            for entry in batch {
                let position = Position { partition: p, offset: entry.offset };
                let r = match arbiter.admit_bytes(&entry.payload, home) {
                    Admitted::Record(r) => r,
                    Admitted::Quarantined(q) => {
                        report("export", position, &q.why);
                        continue;
                    }
                    Admitted::Claim(_) | Admitted::Released(_) | Admitted::Void => continue,
                };
                if !filter.takes_account(&r.account) {
                    continue;
                }
                let account = accounts.entry(r.account.clone()).or_default();
                if let Err(why) = crate::domain::admissible(account, &r.events) {
                    report("export", position, &format!("account {}: {why}", r.account));
                    continue;
                }
                r.events.iter().for_each(|e| account.apply(e));
                if !filter.takes(&r.account, r.at) {
                    continue;
                }
                let at = chrono::DateTime::from_timestamp_millis(r.at)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or_default();
                for (i, event) in r.events.into_iter().enumerate() {
                    sink(EventRow {
                        partition: p,
                        offset: entry.offset,
                        index: i as u32,
                        at: at.clone(),
                        at_ms: r.at,
                        tenant_id: r.account.tenant_id.clone(),
                        programme_id: r.account.programme_id.clone(),
                        member_id: r.account.member_id.clone(),
                        request_id: r.request_id.clone(),
                        programme_version: r.programme_version,
                        event_type: event.name().to_string(),
                        delta: event.net_delta(),
                        event: event_json(event),
                    })?;
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}

/// Writes events as JSON lines (one object per event, the event itself
/// under `event` with its kind in `type`).
pub fn events_jsonl(log: &dyn EventLog, filter: &Filter, out: &mut dyn Write) -> anyhow::Result<u64> {
    events(log, filter, |row| {
        serde_json::to_writer(&mut *out, &row)?;
        out.write_all(b"\n")?;
        Ok(())
    })
}

/// The values of an event row, one per [`EVENT_COLUMNS`] entry.
enum Value {
    I64(i64),
    Str(String),
    Millis(i64),
    OptI64(Option<i64>),
    OptStr(Option<String>),
}

fn event_values(r: EventRow) -> anyhow::Result<Vec<Value>> {
    let (points, growth, texts) = facts(&r.event);
    let mut v = vec![
        Value::I64(i64::from(r.partition)),
        Value::I64(r.offset as i64),
        Value::I64(i64::from(r.index)),
        Value::Millis(r.at_ms),
        Value::I64(r.at_ms),
        Value::Str(r.tenant_id),
        Value::Str(r.programme_id),
        Value::Str(r.member_id),
        Value::Str(r.request_id),
        Value::I64(r.programme_version as i64),
        Value::Str(r.event_type),
        Value::I64(r.delta),
        Value::Str(serde_json::to_string(&r.event)?),
        Value::OptI64(points),
        Value::OptI64(growth),
    ];
    v.extend(texts.into_iter().map(Value::OptStr));
    Ok(v)
}

fn event_columns(rows: Vec<EventRow>) -> anyhow::Result<Vec<Column>> {
    let sample = EventRow {
        partition: 0,
        offset: 0,
        index: 0,
        at: String::new(),
        at_ms: 0,
        tenant_id: String::new(),
        programme_id: String::new(),
        member_id: String::new(),
        request_id: String::new(),
        programme_version: 0,
        event_type: String::new(),
        delta: 0,
        event: json!({}),
    };
    let mut cols: Vec<Column> = event_values(sample)?
        .into_iter()
        .map(|v| match v {
            Value::I64(_) => Column::I64(Vec::new()),
            Value::Str(_) => Column::Str(Vec::new()),
            Value::Millis(_) => Column::Millis(Vec::new()),
            Value::OptI64(_) => Column::OptI64(Vec::new()),
            Value::OptStr(_) => Column::OptStr(Vec::new()),
        })
        .collect();
    for r in rows {
        for (c, v) in cols.iter_mut().zip(event_values(r)?) {
            match (c, v) {
                (Column::I64(c), Value::I64(v)) | (Column::Millis(c), Value::Millis(v)) => c.push(v),
                (Column::Str(c), Value::Str(v)) => c.push(v),
                (Column::OptI64(c), Value::OptI64(v)) => c.push(v),
                (Column::OptStr(c), Value::OptStr(v)) => c.push(v),
                _ => anyhow::bail!("an event value of another kind than its column"),
            }
        }
    }
    Ok(cols)
}

/// Writes events as Parquet with [`EVENT_COLUMNS`] (the event itself as JSON
/// in `event_json`).
pub fn events_parquet(log: &dyn EventLog, filter: &Filter, path: &Path) -> anyhow::Result<u64> {
    let sample = event_columns(Vec::new())?;
    let named: Vec<(&str, &Column)> = EVENT_COLUMNS.iter().copied().zip(sample.iter()).collect();
    let mut sink = ParquetSink::create(path, "events", &named)?;
    let mut rows = Vec::new();
    let n = events(log, filter, |row| {
        rows.push(row);
        if rows.len() >= EXPORT_ROW_GROUP_ROWS {
            sink.write_group(event_columns(std::mem::take(&mut rows))?)?;
        }
        Ok(())
    })?;
    if !rows.is_empty() || n == 0 {
        sink.write_group(event_columns(rows)?)?;
    }
    sink.close()?;
    Ok(n)
}

/// Writes books as Parquet with [`crate::finance::reports::BOOK_COLUMNS`].
pub fn books_parquet(books: &[crate::proto::state::DailyBook], path: &Path) -> anyhow::Result<()> {
    use crate::finance::reports::{book_values, BOOK_COLUMNS};
    let text = ["tenant_id", "programme_id", "date", "first_position", "last_position", "digest", "mismatch"];
    let mut cols: Vec<Column> = BOOK_COLUMNS
        .iter()
        .map(|c| match *c {
            "balanced" => Column::Bool(Vec::new()),
            c if text.contains(&c) => Column::Str(Vec::new()),
            _ => Column::I64(Vec::new()),
        })
        .collect();
    for b in books {
        for (c, v) in cols.iter_mut().zip(book_values(b)) {
            match c {
                Column::I64(x) => x.push(v.parse()?),
                Column::Str(x) => x.push(v),
                Column::Bool(x) => x.push(v == "true"),
                Column::Millis(_) | Column::OptI64(_) | Column::OptStr(_) => {
                    anyhow::bail!("books have no timestamp or optional columns")
                }
            }
        }
    }
    let named: Vec<(&str, &Column)> = BOOK_COLUMNS.iter().copied().zip(cols.iter()).collect();
    let mut sink = ParquetSink::create(path, "daily_books", &named)?;
    sink.write_group(cols)?;
    sink.close()
}

/// What `export` writes the events as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventFormat {
    Jsonl,
    /// Needs a file (not standard output).
    Parquet,
}

/// Writes the events `filter` takes to `output` (`-`: standard output,
/// JSON lines only).
pub fn run(source: &super::Source, format: EventFormat, output: &Path, filter: &Filter) -> anyhow::Result<()> {
    use anyhow::Context;
    let log = source.events()?;
    let n = match format {
        EventFormat::Jsonl if output.as_os_str() == "-" => {
            events_jsonl(log.as_ref(), filter, &mut std::io::stdout().lock())?
        }
        EventFormat::Jsonl => {
            let file = std::fs::File::create(output).with_context(|| format!("creating {}", output.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let n = events_jsonl(log.as_ref(), filter, &mut out)?;
            std::io::Write::flush(&mut out)?;
            n
        }
        EventFormat::Parquet if output.as_os_str() == "-" => {
            anyhow::bail!("--format parquet needs --output FILE (not standard output)")
        }
        EventFormat::Parquet => events_parquet(log.as_ref(), filter, output)?,
    };
    eprintln!("exported {n} events");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_exports_as_the_api_event_in_the_protobuf_json_mapping() {
        let earned = Event::PointsEarned {
            lot_id: "e1".into(),
            reason: "purchase".into(),
            order_ref: None,
            requested: 100,
            granted: 100,
            forfeited: 0,
            debt_repaid: 0,
            expires_at: Some(1_700_000_000_000),
            growth: 0,
            day: 0,
            pending: false,
        };
        let v = event_json(earned);
        assert_eq!(v["type"], "PointsEarned");
        assert_eq!(v["lot_id"], "e1");
        assert_eq!(v["granted_points"], "100", "int64 as text");
        assert_eq!(v["forfeited_points"], "0", "every field present");
        assert_eq!(v["expires_at"], "2023-11-14T22:13:20+00:00");
    }
}
