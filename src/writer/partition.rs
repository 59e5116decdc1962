//! A partition's writer: its state, and one batch (group commit) in named
//! phases: **gather** the queued commands (and, on a tick, the accounts
//! due), **decide** each against the state the earlier ones left (retries
//! answered from the idempotency records), **append and confirm** the
//! accepted records in one durable append (read back on a shared log),
//! **answer** every caller, then **commit** the state the log now determines
//! (a retry is decided in a later batch, after this commit; if the commit
//! fails, the writer starts over from its stored state and the log).
//!
//! The state a writer commits is the partition's views too: its accounts
//! (the balance view), their statements (pages) and the expiry index, with
//! the idempotency records, the due index and the programme issuance, in
//! one WriteBatch with the cursor they reflect. Each account is folded once,
//! by the writer, and written once; the rows are those the projection's
//! fold writes (`projection::fold`: the same functions), so a rebuild from
//! offset zero gives the same bytes. A partition another writer took over
//! is followed: its records are folded the same way as they arrive.
//!
//! On start a writer folds the log from its cursor to the end before it
//! takes any command (until then its partition answers `Unavailable`), so
//! nothing acknowledged is lost and nothing is applied twice. Time: the
//! writer reads the clock once per batch and never lets it run backwards
//! within a partition.

use std::sync::{Arc, RwLock};

use super::cache::Cache;
use super::issuance::{Granted, Issuance};
use super::ownership::Ownership;
use super::WriterConfig;
use crate::clock::Clock;
use crate::domain::{self, AccountKey, Command, Millis, Points, ProgrammeKey};
use crate::log::arbiter::Arbiter;
use crate::log::record::{AccountRecord, CapMode};
use crate::log::{EventLog, LogReader};
use crate::programmes::{Programmes, SharedRegistry};
use crate::store::{self, Cursor, Db};

/// How long a writer that cannot catch up with the log yet waits before it
/// tries again.
pub(super) const START_UP_RETRY_MS: u64 = 1000;
/// How long a writer following a partition another writer took over waits
/// for new records.
pub(super) const FOLLOW_POLL_MS: u64 = 100;

pub(super) struct PartitionWriter {
    pub(super) partition: u32,
    pub(super) issuance: Arc<Issuance>,
    pub(super) log: Arc<dyn EventLog>,
    /// The largest record this writer appends (the log's bound, or lower).
    pub(super) record_bytes_max: usize,
    pub(super) store: Arc<Db>,
    pub(super) registry: SharedRegistry,
    pub(super) clock: Arc<dyn Clock>,
    /// Accounts as of the last committed batch (a cache of the store).
    pub(super) cache: Cache,
    /// The latest `now` used, so time never runs backwards in a partition.
    pub(super) last_now: Millis,
    pub(super) config: WriterConfig,
    /// Names this process in its claim markers.
    pub(super) writer_id: Arc<str>,
    /// The next offset the state reflects, and the log's arbiter there.
    pub(super) cursor: Cursor,
    /// A reader kept at `cursor.next` between batches (shared logs), and
    /// of which kind.
    pub(super) reader: Option<(Box<dyn LogReader>, ReaderKind)>,
    /// The offset of the latest claim admitted up to `cursor`.
    pub(super) last_claim: Option<u64>,
    /// Our own claim's offset, once we own the partition (shared logs).
    pub(super) own_claim: Option<u64>,
    /// Whether the state may lack records the log has.
    pub(super) sync: LogSync,
    /// Whether this partition is wanted here, and the writers' statuses.
    pub(super) ownership: Arc<Ownership>,
    /// Where each partition's committed state (its views) stands: the next
    /// offset, for queries waiting on `min_position`.
    pub(super) positions: Arc<tokio::sync::watch::Sender<Vec<u64>>>,
    /// Each partition's arbiter (latest counted claim), as committed.
    pub(super) owners: Arc<RwLock<Vec<Arbiter>>>,
    /// In a cluster: where cap shares are taken (None: the exact counter).
    pub(super) programmes: Option<Arc<Programmes>>,
    /// What this partition has granted per programme day, as committed.
    pub(super) issued: Granted,
    /// Its batches' sizes, append times and queue depth, in the metrics.
    pub(super) observed: Observed,
}

/// Which reader a writer folds the log with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ReaderKind {
    /// Its own partition's reader, reading up to the end.
    Writer,
    /// A follower's, for a partition written elsewhere: it may trail the
    /// end by a moment (see [`crate::log::EventLog::follower`]).
    Follower,
}

/// What the writer's state knows of its partition's log.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum LogSync {
    /// Everything up to the cursor is folded, and nothing of ours lies beyond.
    InStep,
    /// An append's outcome is unknown: the log may hold records the state
    /// lacks. The writer re-reads (and re-claims) before deciding again.
    Unsure,
}

/// A writer's metrics (handles made once).
pub(super) struct Observed {
    pub(super) batch_commands: crate::metrics::Histogram,
    pub(super) append_seconds: crate::metrics::Histogram,
    pub(super) queue_commands: crate::metrics::Gauge,
    pub(super) cache_accounts: crate::metrics::Gauge,
    pub(super) cache_bytes: crate::metrics::Gauge,
}

impl Observed {
    fn new(metrics: &crate::metrics::Metrics, partition: u32) -> Observed {
        use crate::metrics::{APPEND_SECONDS, BATCH_COMMANDS, CACHE_ACCOUNTS, CACHE_BYTES, QUEUE_COMMANDS};
        let p = [("partition", partition.to_string())];
        Observed {
            batch_commands: metrics.histogram(BATCH_COMMANDS, &[]),
            append_seconds: metrics.histogram(APPEND_SECONDS, &[]),
            queue_commands: metrics.gauge(QUEUE_COMMANDS, &p),
            cache_accounts: metrics.gauge(CACHE_ACCOUNTS, &p),
            cache_bytes: metrics.gauge(CACHE_BYTES, &p),
        }
    }

    /// The cache's accounts and bytes ([`Cache::size`]).
    pub(super) fn cached(&self, (accounts, bytes): (usize, usize)) {
        self.cache_accounts.set(accounts as u64);
        self.cache_bytes.set(bytes as u64);
    }
}

/// What a writer is made of.
pub(super) struct Parts {
    pub partition: u32,
    pub issuance: Arc<Issuance>,
    pub log: Arc<dyn EventLog>,
    pub store: Arc<Db>,
    pub registry: SharedRegistry,
    pub clock: Arc<dyn Clock>,
    pub config: WriterConfig,
    pub writer_id: Arc<str>,
    pub ownership: Arc<Ownership>,
    pub positions: Arc<tokio::sync::watch::Sender<Vec<u64>>>,
    pub owners: Arc<RwLock<Vec<Arbiter>>>,
    pub programmes: Option<Arc<Programmes>>,
}

impl PartitionWriter {
    pub(super) fn new(p: Parts) -> Result<PartitionWriter, store::StoreError> {
        let log_bytes_max = p.log.record_bytes_max();
        let observed = Observed::new(&p.config.metrics, p.partition);
        Ok(PartitionWriter {
            observed,
            record_bytes_max: match p.config.record_bytes_max {
                0 => log_bytes_max,
                given => given.min(log_bytes_max),
            },
            issued: super::issuance::load(&p.store, p.partition)?,
            cursor: store::read_cursor(&p.store, p.partition)?,
            partition: p.partition,
            issuance: p.issuance,
            log: p.log,
            store: p.store,
            registry: p.registry,
            clock: p.clock,
            cache: Cache::new(p.config.cache_bytes_max),
            last_now: 0,
            config: p.config,
            writer_id: p.writer_id,
            reader: None,
            last_claim: None,
            own_claim: None,
            sync: LogSync::InStep,
            ownership: p.ownership,
            positions: p.positions,
            owners: p.owners,
            programmes: p.programmes,
        })
    }

    pub(super) fn programme(&self, key: &AccountKey) -> Option<Arc<domain::Programme>> {
        self.registry.read().expect("registry lock").current(&key.programme())
    }

    /// What this partition has granted of `programme`'s issuance on `day`
    /// (as committed).
    pub(super) fn issued_in_partition(&self, programme: &ProgrammeKey, day: i64) -> Points {
        self.issued.get(&(programme.clone(), day)).copied().unwrap_or(0)
    }

    pub(super) fn record(
        &self,
        cmd: Command,
        programme_version: u64,
        fingerprint: u64,
        now: Millis,
        events: Vec<domain::Event>,
        cap_mode: CapMode,
    ) -> AccountRecord {
        AccountRecord {
            epoch: self.cursor.arbiter.epoch,
            system: cmd.body.is_system(),
            request_id: cmd.request_id,
            account: cmd.account,
            programme_version,
            at: now,
            fingerprint,
            events,
            context: cmd.context,
            cap_mode,
        }
    }
}
