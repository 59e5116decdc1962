//! The event log: partitioned, append-only, durable. Two backends implement
//! [`EventLog`]: the embedded log on local disk (the default) and, later,
//! Kafka. Everything above this module sees only these traits.
//!
//! The traits are blocking: callers run them on their own threads (writers,
//! projectors), never on the async runtime.

pub mod embedded;

use std::time::Duration;

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
    #[error("log unavailable: {0}")]
    Unavailable(String),
}

pub trait EventLog: Send + Sync + 'static {
    fn partitions(&self) -> u32;

    /// Appends records to one partition and returns the offset of the first.
    /// Returns only once the records are durable; readers never see a record
    /// before that.
    fn append(&self, partition: u32, records: &[Vec<u8>]) -> Result<u64, LogError>;

    /// The offset the next appended record will get (= records so far).
    fn end_offset(&self, partition: u32) -> Result<u64, LogError>;

    /// A cursor over one partition, starting at `from`.
    fn reader(&self, partition: u32, from: u64) -> Result<Box<dyn LogReader>, LogError>;
}

pub trait LogReader: Send {
    /// Up to `max_records` records from the cursor on. At the end of the
    /// partition it waits up to `wait` for more and returns an empty batch if
    /// none came.
    fn next_batch(&mut self, max_records: usize, wait: Duration) -> Result<Vec<LogEntry>, LogError>;

    /// The offset of the next record this cursor returns.
    fn position(&self) -> u64;
}
