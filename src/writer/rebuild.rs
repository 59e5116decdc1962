//! A writer's catch-up from offset zero over a long log (a start without
//! current views: a new data directory, or views an older build wrote),
//! folded behind as a rebuild folds (`projection::fold_behind`: each
//! account written once at the end, every row in as table files), the fold
//! also gathering the rows only the writers keep, as their catch-up through
//! the live path would have written them: the idempotency records, the due
//! index and the issuance. The live path commits every batch's accounts
//! through the memtables: several times slower over millions of records.

use std::sync::atomic::AtomicU64;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::commit::{request_row, Work};
use super::issuance::{self, earned_in, issued_key, Granted};
use super::partition::PartitionWriter;
use super::Msg;
use crate::domain::{self, Account, AccountKey, Millis};
use crate::log::record::{AccountRecord, Balance, Position, Reply};
use crate::log::{self as eventlog, LogEntry};
use crate::programmes::SharedRegistry;
use crate::projection::{self, Beside, ViewCache, REBUILD_CACHE_ACCOUNTS, REBUILD_INGEST_ROWS};
use crate::store::{self, Cf, TableRow};
use crate::FastMap;

/// Records in a partition from which a writer without state folds it
/// behind rather than through the live path, by default
/// ([`super::WriterConfig::bulk_catch_up_records_min`]).
pub const BULK_CATCH_UP_RECORDS_MIN: u64 = 100_000;
/// How long a failed read of the log waits before it is tried again.
const READ_RETRY_MS: u64 = 500;

/// Partitions folded behind at once, at most: one a core (each holds its
/// accounts in memory until it ends, as a rebuild does).
static SLOTS: Mutex<usize> = Mutex::new(0);
static SLOT_FREED: Condvar = Condvar::new();

struct Slot;

impl Slot {
    fn take() -> Slot {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut busy = SLOTS.lock().expect("slots lock");
        while *busy >= cores {
            busy = SLOT_FREED.wait(busy).expect("slots lock");
        }
        *busy += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *SLOTS.lock().expect("slots lock") -= 1;
        SLOT_FREED.notify_one();
    }
}

impl PartitionWriter {
    /// Folds the partition behind up to the log's end when the writer has
    /// no state yet and the log holds at least
    /// `config.bulk_catch_up_records_min` records of it (else leaves it to
    /// the live catch-up). Reads are retried until they succeed or the
    /// writer is shut down. False when the writer cannot go on: shut down
    /// meanwhile, or a write failed (the partition stays marked as
    /// rebuilding, so the next start rebuilds the views).
    pub(super) fn bulk_catch_up(&mut self, rx: &mpsc::Receiver<Msg>) -> bool {
        if self.cursor.next != 0 {
            return true;
        }
        let end = loop {
            match self.log.end_offset(self.partition) {
                Ok(end) => break end,
                Err(e) if !rx.is_closed() => {
                    tracing::warn!(partition = self.partition, error = %e, "cannot read the log's end yet; retrying");
                    std::thread::sleep(Duration::from_millis(READ_RETRY_MS));
                }
                Err(_) => return false,
            }
        };
        if end < self.config.bulk_catch_up_records_min {
            return true;
        }
        let _slot = Slot::take();
        let started = std::time::Instant::now();
        tracing::info!(
            partition = self.partition,
            records = end,
            "writer folding the partition from offset zero behind"
        );
        match self.fold_whole(end, rx) {
            Ok(Some(folded)) => {
                let ms = started.elapsed().as_millis() as u64;
                tracing::info!(
                    partition = self.partition,
                    folded,
                    elapsed_ms = ms,
                    "writer folded the partition behind"
                );
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::error!(
                    partition = self.partition,
                    error = %e,
                    "folding the partition from offset zero failed; its views stay incomplete until the service restarts and rebuilds them"
                );
                false
            }
        }
    }

    /// The fold of [`PartitionWriter::bulk_catch_up`]: Some(records folded),
    /// or None when the writer was shut down meanwhile.
    fn fold_whole(&mut self, end: u64, rx: &mpsc::Receiver<Msg>) -> anyhow::Result<Option<u64>> {
        let p = self.partition;
        projection::mark_rebuilding(&self.store, p, true)?;
        let store = self.store.clone();
        let load = BulkLoad::begin(&store)?;
        let rows = WriterRows {
            partition: p,
            shared: self.log.shared(),
            registry: self.registry.clone(),
            requests: Vec::new(),
            due: Vec::new(),
            due_before: FastMap::default(),
            issued: Granted::new(),
        };
        let mut cache = ViewCache::rebuild_with(REBUILD_CACHE_ACCOUNTS, REBUILD_INGEST_ROWS, Box::new(rows));
        let (log, folded) = (self.log.clone(), AtomicU64::new(0));
        let mut reader = log.reader(p, 0)?;
        let mut stopped = false;
        let next = || -> anyhow::Result<Vec<LogEntry>> {
            loop {
                match eventlog::read_towards(reader.as_mut(), end, projection::PROJECTOR_BATCH_RECORDS_MAX) {
                    Ok(entries) => return Ok(entries),
                    Err(e) if !rx.is_closed() => {
                        tracing::warn!(partition = p, error = %e, "cannot read the log; retrying");
                        std::thread::sleep(Duration::from_millis(READ_RETRY_MS));
                        reader = log.reader(p, reader.position())?;
                    }
                    Err(_) => {
                        stopped = true;
                        return Ok(Vec::new());
                    }
                }
            }
        };
        let home = crate::log::arbiter::Home { partition: p, partitions: self.log.partitions() };
        let cursor = projection::fold_behind(&self.store, home, &mut cache, &folded, next)?;
        if stopped {
            return Ok(None);
        }
        load.end()?;
        if let Some(cursor) = cursor {
            self.cursor = cursor;
        }
        let issued = issuance::load(&self.store, p)?;
        self.issuance.add(&issued, 1);
        self.issued = issued;
        // The position as the live path tells it (the queries, the owners).
        self.commit(Work::default())?;
        projection::mark_rebuilding(&self.store, p, false)?;
        Ok(Some(folded.into_inner()))
    }
}

/// A bulk load of the views database going on ([`store::Db::begin_bulk_load`]),
/// ended when dropped if not before. At its end the views queries read are
/// compacted before the partition serves; the writers' own rows (read by
/// key, through bloom filters) are left to the background.
struct BulkLoad<'a> {
    db: &'a store::Db,
    ended: bool,
}

impl<'a> BulkLoad<'a> {
    fn begin(db: &'a store::Db) -> Result<BulkLoad<'a>, store::StoreError> {
        db.begin_bulk_load()?;
        Ok(BulkLoad { db, ended: false })
    }

    fn end(mut self) -> Result<(), store::StoreError> {
        self.ended = true;
        self.db.end_bulk_load(store::VIEW_DIGEST_CFS)
    }
}

impl Drop for BulkLoad<'_> {
    fn drop(&mut self) {
        if !self.ended {
            if let Err(e) = self.db.end_bulk_load(&[]) {
                tracing::error!(error = %e, "cannot resume the views' compactions after a bulk load");
            }
        }
    }
}

/// What a partition's writer keeps beside the views, gathered from the fold.
struct WriterRows {
    partition: u32,
    shared: bool,
    registry: SharedRegistry,
    requests: Vec<TableRow>,
    due: Vec<TableRow>,
    /// The due instant of accounts written out earlier and read back.
    due_before: FastMap<AccountKey, Option<Millis>>,
    issued: Granted,
}

impl WriterRows {
    fn due_at(&self, key: &AccountKey, account: &Account) -> Option<Millis> {
        let programme = self.registry.read().expect("registry lock").current(&key.programme());
        domain::due_at(account, programme.as_deref())
    }
}

impl Beside for WriterRows {
    fn record(&mut self, record: &AccountRecord, position: Position, account: &Account) {
        earned_in(&record.account, &record.events, &mut self.issued);
        if !record.system {
            let reply = Reply::for_record(record, position, Balance::of(account));
            let key = store::request_key(&record.account, &record.request_id);
            self.requests.push((key, Some(request_row(self.shared, record.fingerprint, &reply))));
        }
    }

    fn loaded(&mut self, key: &AccountKey, account: &Account) {
        let due = self.due_at(key, account);
        self.due_before.insert(key.clone(), due);
    }

    fn written(&mut self, key: &AccountKey, account: &Account) {
        let before = self.due_before.remove(key).flatten();
        let after = self.due_at(key, account);
        if before != after {
            if let Some(at) = before {
                self.due.push((store::due_key(self.partition, at, key), None));
            }
            if let Some(at) = after {
                self.due.push((store::due_key(self.partition, at, key), Some(Vec::new())));
            }
        }
    }

    fn pending(&self) -> usize {
        self.requests.len() + self.due.len()
    }

    fn take_rows(&mut self, last: bool) -> Vec<(Cf, Vec<TableRow>)> {
        let mut requests = std::mem::take(&mut self.requests);
        // A request id twice in the log (an append retried after its
        // acknowledgement was lost): the later record's row wins, as the
        // writers' commits would have left it.
        requests.reverse();
        requests.sort_by(|a, b| a.0.cmp(&b.0));
        requests.dedup_by(|a, b| a.0 == b.0);
        let mut out = vec![(Cf::Requests, requests), (Cf::Due, std::mem::take(&mut self.due))];
        if last {
            let issued = std::mem::take(&mut self.issued);
            let rows = issued
                .into_iter()
                .map(|((p, day), v)| (issued_key(self.partition, &p, day), Some(store::points_row(v).to_vec())))
                .collect();
            out.push((Cf::Issuance, rows));
        }
        out
    }
}
