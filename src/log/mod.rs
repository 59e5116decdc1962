//! The event log: partitioned, append-only, durable. Two backends implement
//! [`EventLog`]: the embedded log on local disk (the default, `embedded`) and
//! Kafka (`kafka`). Everything above this module sees only these traits, the
//! records they carry (`record`), their encoding (`codec`, the only reader
//! and writer of `points.log.v1`) and the log's arbitration of writers
//! (`arbiter`).
//!
//! The traits are blocking: callers run them on their own threads (writers,
//! the reconciliation consumer, the tools), never on the async runtime.

pub mod arbiter;
pub mod codec;
pub mod embedded;
pub mod kafka;
pub mod record;

use std::time::Duration;

/// One record to append: the key names the account, and `about` says what
/// it is for consumers outside the service (Kafka keeps both, the latter as
/// CloudEvents headers; the embedded log stores neither).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub about: About,
}

/// What a record is, for outside consumers: its kind (the CloudEvents
/// type), an id unique to it, when it was decided and what it is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct About {
    pub kind: Kind,
    pub id: String,
    pub at: crate::domain::Millis,
    /// The account (or programme) the record is about; empty for claims.
    pub subject: String,
}

/// The kinds of records: each a CloudEvents type and the `points.log.v1`
/// message its payload is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    /// A command's record (or the scheduler's): the account's events.
    #[default]
    AccountRecord,
    /// A writer claiming its partition, or releasing it.
    WriterClaim,
    WriterRelease,
    /// The control stream: a programme's new version, a cap share taken.
    ProgrammeConfigured,
    CapShareTaken,
    AlertActioned,
    WebhookConfigured,
    ProgrammeAlertRaised,
}

impl About {
    /// A command's (or the scheduler's) record: its id is the account and
    /// the request id (the decision instant for the scheduler's), so a record
    /// appended again after an unknown outcome carries the same id (the
    /// log's arbitration says which copy counts).
    pub fn account(r: &record::AccountRecord) -> About {
        let id = if r.system { format!("{}@{}", r.account, r.at) } else { format!("{}/{}", r.account, r.request_id) };
        About { kind: Kind::AccountRecord, id, at: r.at, subject: r.account.to_string() }
    }

    /// A claim or release marker of `partition`.
    pub fn claim(c: &record::Claim, partition: u32) -> About {
        let (kind, what) = if c.release { (Kind::WriterRelease, "release") } else { (Kind::WriterClaim, "claim") };
        About { kind, id: format!("{partition}/{what}/{}/{}", c.epoch, c.writer), at: c.at, subject: String::new() }
    }

    /// A record of the control stream.
    pub fn control(r: &record::ControlRecord) -> About {
        match &r.event {
            record::ControlEvent::Configured(p) => About {
                kind: Kind::ProgrammeConfigured,
                id: format!("{}/{}/{}", p.tenant_id, p.programme_id, r.request_id),
                at: r.at,
                subject: format!("{}/{}", p.tenant_id, p.programme_id),
            },
            record::ControlEvent::AlertActioned(a) => {
                let programme = format!("{}/{}", a.programme.tenant_id, a.programme.programme_id);
                About {
                    kind: Kind::AlertActioned,
                    id: format!("{programme}/{}", r.request_id),
                    at: r.at,
                    subject: format!("{programme}/{}", a.alert_id),
                }
            }
            record::ControlEvent::WebhookConfigured(w) => {
                let programme = format!("{}/{}", w.programme.tenant_id, w.programme.programme_id);
                About {
                    kind: Kind::WebhookConfigured,
                    id: format!("{programme}/{}", r.request_id),
                    at: r.at,
                    subject: format!("{programme}/{}", w.webhook_id),
                }
            }
            record::ControlEvent::AlertRaised(a) => {
                let programme = format!("{}/{}", a.programme.tenant_id, a.programme.programme_id);
                About {
                    kind: Kind::ProgrammeAlertRaised,
                    id: format!("{programme}/{}", r.request_id),
                    at: r.at,
                    subject: programme,
                }
            }
            record::ControlEvent::ShareTaken(s) => {
                let programme = format!("{}/{}", s.programme.tenant_id, s.programme.programme_id);
                About {
                    kind: Kind::CapShareTaken,
                    id: format!("{programme}/{}/{}/{}", s.day, s.partition, s.writer),
                    at: r.at,
                    subject: programme,
                }
            }
        }
    }
}

impl Kind {
    /// The CloudEvents type (`ce_type`).
    pub fn event_type(self) -> &'static str {
        match self {
            Kind::AccountRecord => "points.account.record",
            Kind::WriterClaim => "points.writer.claim",
            Kind::WriterRelease => "points.writer.release",
            Kind::ProgrammeConfigured => "points.programme.configured",
            Kind::CapShareTaken => "points.programme.cap_share_taken",
            Kind::AlertActioned => "points.alert.actioned",
            Kind::WebhookConfigured => "points.programme.webhook_configured",
            Kind::ProgrammeAlertRaised => "points.alert.raised",
        }
    }

    /// The payload's message.
    pub fn message(self) -> &'static str {
        match self {
            Kind::AccountRecord | Kind::WriterClaim | Kind::WriterRelease => "points.log.v1.AccountRecord",
            Kind::ProgrammeConfigured
            | Kind::CapShareTaken
            | Kind::AlertActioned
            | Kind::WebhookConfigured
            | Kind::ProgrammeAlertRaised => "points.log.v1.ControlRecord",
        }
    }
}

impl LogRecord {
    pub fn new(key: impl Into<Vec<u8>>, payload: Vec<u8>) -> LogRecord {
        LogRecord { key: key.into(), payload, about: About::default() }
    }

    /// The same record, described for outside consumers.
    pub fn about(self, about: About) -> LogRecord {
        LogRecord { about, ..self }
    }
}

/// One record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub offset: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("log is corrupt: {0}")]
    Corrupt(String),
    #[error("no partition {0}")]
    NoPartition(u32),
    /// An append of a record the log does not take (writers refuse such a
    /// command before they append).
    #[error("a record of {bytes} bytes: this log takes records of 1 to {max} bytes")]
    RecordSize { bytes: usize, max: usize },
    #[error("log unavailable: {0}")]
    Unavailable(String),
}

pub trait EventLog: Send + Sync + 'static {
    fn partitions(&self) -> u32;

    /// Whether other processes may append to this log too. Writers on a
    /// shared log claim their partitions and verify every batch by reading
    /// it back (ARCHITECTURE.md, "Writers arbitrated by the log").
    fn shared(&self) -> bool;

    /// Appends records to one partition, in order, and returns the offset
    /// each got. Returns only once the records are durable; readers never see
    /// a record before that. On an error some of the records may still have
    /// been written: the caller must find out by reading the log.
    fn append(&self, partition: u32, records: &[LogRecord]) -> Result<Vec<u64>, LogError>;

    /// The largest record payload this log takes. A writer refuses a
    /// command whose record would be larger (alone, before its batch is
    /// appended), so one command never fails the others of its batch.
    fn record_bytes_max(&self) -> usize {
        embedded::RECORD_BYTES_MAX
    }

    /// Figures of the log's client for the metrics (Kafka: librdkafka's
    /// statistics of the producer), by name; none by default.
    fn figures(&self) -> Vec<(&'static str, i64)> {
        Vec::new()
    }

    /// Times the log's own fsyncs into `seconds` from now on (the embedded
    /// log; others have none).
    fn time_fsyncs(&self, seconds: crate::metrics::Histogram) {
        let _ = seconds;
    }

    /// The offset the next appended record will get (= records so far).
    fn end_offset(&self, partition: u32) -> Result<u64, LogError>;

    /// A cursor over one partition, starting at `from`.
    fn reader(&self, partition: u32, from: u64) -> Result<Box<dyn LogReader>, LogError>;

    /// A cursor for a reader that may trail the end by a moment (the views
    /// of a partition written elsewhere, the books): on Kafka its fetches
    /// wait longer at the end of the partition, so it asks the broker less
    /// often when several instances follow every partition. Otherwise the
    /// same as [`EventLog::reader`].
    fn follower(&self, partition: u32, from: u64) -> Result<Box<dyn LogReader>, LogError> {
        self.reader(partition, from)
    }
}

pub trait LogReader: Send {
    /// Up to `max_records` records from the cursor on. At the end of the
    /// partition it waits up to `wait` for more and returns an empty batch if
    /// none came.
    fn next_batch(&mut self, max_records: usize, wait: Duration) -> Result<Vec<LogEntry>, LogError>;

    /// The offset of the next record this cursor returns.
    fn position(&self) -> u64;
}

/// How long a reader that knows more records exist waits for them before it
/// calls the log unavailable.
pub const READ_TO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`read_towards`] waits per poll.
const READ_TO_POLL: Duration = Duration::from_millis(200);
/// How often a parallel rebuild reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(50);

/// Reads the next batch of a partition known to hold records up to `end`
/// (exclusive), waiting for them if need be (a Kafka fetch takes a moment),
/// but never beyond [`READ_TO_TIMEOUT`]. Empty once the reader is at `end`;
/// never reads a record at or past `end` (the reader stays usable there).
pub fn read_towards(reader: &mut dyn LogReader, end: u64, max_records: usize) -> Result<Vec<LogEntry>, LogError> {
    let started = std::time::Instant::now();
    while reader.position() < end {
        // Never past `end`: offsets are dense, so at most this many records
        // lie before it, and the reader's position stays exact for the
        // caller that goes on reading (a follower, the control stream).
        let left = usize::try_from(end - reader.position()).unwrap_or(usize::MAX);
        let mut entries = reader.next_batch(max_records.min(left), READ_TO_POLL)?;
        if !entries.is_empty() {
            entries.retain(|e| e.offset < end);
            return Ok(entries);
        }
        if started.elapsed() > READ_TO_TIMEOUT {
            return Err(LogError::Unavailable(format!(
                "no records arrived for {} s while reading towards offset {end} from {}",
                READ_TO_TIMEOUT.as_secs(),
                reader.position()
            )));
        }
    }
    Ok(Vec::new())
}

/// Runs `fold(partition, folded)` for every partition on up to as many threads
/// as the machine has cores (each takes the next partition not yet taken),
/// reporting the records `folded` counts so far to `progress` every [`PROGRESS_EVERY`].
/// For rebuilds whose partitions are independent. Returns the final count.
pub fn fold_partitions_in_parallel(
    partitions: u32,
    fold: impl Fn(u32, &std::sync::atomic::AtomicU64) -> anyhow::Result<()> + Sync,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    let folded = AtomicU64::new(0);
    let next = AtomicU32::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(partitions as usize).max(1);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let p = next.fetch_add(1, Ordering::Relaxed);
                        if p >= partitions {
                            return Ok(());
                        }
                        fold(p, &folded)?;
                    }
                })
            })
            .collect();
        while !handles.iter().all(|h| h.is_finished()) {
            progress(folded.load(Ordering::Relaxed));
            std::thread::sleep(PROGRESS_EVERY);
        }
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a rebuild thread panicked"))??;
        }
        Ok(())
    })?;
    let folded = folded.into_inner();
    progress(folded);
    Ok(folded)
}
