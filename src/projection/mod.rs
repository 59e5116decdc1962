//! The read side: projectors fold the log into the RocksDB views that
//! queries read (`fold`: the one fold; `rebuild`: the same from offset zero
//! into a fresh directory; `queries`: what the API reads of the views).
//!
//! Views (column families of the views database):
//! - `accounts`: each account's state, folded with the same `Account::apply`
//!   the writers use, so balances, lots, reservations and debt agree by
//!   construction;
//! - `entries`: a member's statement, one row per event with the running
//!   balance, keyed by account and log position;
//! - `expiring`: lots with points and an expiry, keyed by programme and
//!   expiry instant, for reminders without scanning every account;
//! - `meta`: the log position each partition's view has reached.
//!
//! Each batch of records becomes one WriteBatch holding the view changes and
//! the new position, so after a crash a projector resumes exactly where its
//! views stop. The broker's offsets (on Kafka) are never the source of truth.
//! [`fold`] is the one fold: the live projectors and `replay` both use it, so
//! a rebuild from offset zero gives byte-identical views.

mod fold;
pub mod queries;
mod rebuild;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

pub use fold::{
    entry_key, expiring_key, fold, parse_expiring_key, ViewCache, PROJECTOR_CACHE_ACCOUNTS, REBUILD_CACHE_ACCOUNTS,
    REBUILD_INGEST_ROWS,
};
pub use rebuild::{rebuild, Until};

use crate::log::EventLog;
use crate::store::{self, Db};

/// Records folded into one WriteBatch at most.
pub const PROJECTOR_BATCH_RECORDS_MAX: usize = 4096;
/// How long a projector waits for new records before looking at its stop flag.
pub const PROJECTOR_POLL_WAIT_MS: u64 = 100;
/// How long a projector that cannot read the log waits before trying again.
pub const PROJECTOR_READ_RETRY_MS: u64 = 500;

/// The layout of the views this build writes (statements in pages of
/// `STATEMENT_PAGE_ENTRIES`), kept in their `meta`. Views without it were
/// written by an older build: they are rebuilt from the log on start.
pub const VIEWS_FORMAT: &[u8] = b"statement-pages-16";
const VIEWS_FORMAT_KEY: &[u8] = b"format";

/// Marks `views` as written in this build's layout.
pub fn mark_format(views: &Db) -> Result<(), store::StoreError> {
    let mut batch = store::Batch::default();
    batch.put(store::Cf::Meta, VIEWS_FORMAT_KEY, VIEWS_FORMAT);
    views.write(batch)
}

/// Opens the views of a data directory in this build's layout: views an
/// older build wrote are deleted (the log is the truth; the projectors fold
/// them again from offset zero).
pub fn open_views(dir: &std::path::Path) -> anyhow::Result<Db> {
    if dir.exists() {
        let views = Db::open(dir, store::VIEW_CFS)?;
        if views.get(store::Cf::Meta, VIEWS_FORMAT_KEY)?.as_deref() == Some(VIEWS_FORMAT) {
            return Ok(views);
        }
        drop(views);
        tracing::warn!(dir = %dir.display(), "views written by an older build: rebuilding them from the log");
        std::fs::remove_dir_all(dir)?;
    }
    let views = Db::open(dir, store::VIEW_CFS)?;
    mark_format(&views)?;
    Ok(views)
}

/// The running projectors, and where each partition's views stand.
pub struct Projectors {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    positions: watch::Receiver<Vec<u64>>,
}

impl Projectors {
    pub fn start(log: Arc<dyn EventLog>, views: Arc<Db>) -> anyhow::Result<Projectors> {
        let n = log.partitions();
        let start: Vec<store::Cursor> = (0..n).map(|p| store::read_cursor(&views, p)).collect::<Result<_, _>>()?;
        let (tx, rx) = watch::channel(start.iter().map(|c| c.next).collect::<Vec<u64>>());
        let tx = Arc::new(tx);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for p in 0..n {
            let mut arbiter = start[p as usize].arbiter;
            let mut cache = ViewCache::live(PROJECTOR_CACHE_ACCOUNTS);
            let mut reader = log.reader(p, start[p as usize].next)?;
            let (views, tx, stop) = (views.clone(), tx.clone(), stop.clone());
            threads.push(std::thread::Builder::new().name(format!("projector-{p}")).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let entries = match reader
                        .next_batch(PROJECTOR_BATCH_RECORDS_MAX, Duration::from_millis(PROJECTOR_POLL_WAIT_MS))
                    {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::error!(partition = p, error = %e, "projector cannot read the log; retrying");
                            std::thread::sleep(Duration::from_millis(PROJECTOR_READ_RETRY_MS));
                            continue;
                        }
                    };
                    if entries.is_empty() {
                        continue;
                    }
                    let next = entries.last().expect("non-empty").offset + 1;
                    if let Err(e) = fold(&views, p, &mut arbiter, &entries, &mut cache).and_then(|b| views.write(b)) {
                        tracing::error!(partition = p, error = %e, "projector cannot fold; it stops");
                        return;
                    }
                    tx.send_modify(|v| v[p as usize] = next);
                }
            })?);
        }
        Ok(Projectors { stop, threads, positions: rx })
    }

    /// Next offset each partition's views will fold (everything below is in).
    pub fn positions(&self) -> watch::Receiver<Vec<u64>> {
        self.positions.clone()
    }

    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
