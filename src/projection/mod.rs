//! The read side: the views that queries read, and the one fold of the
//! log's records into them (`fold`), used by the writers (which fold each
//! record once, for their state and the views alike) and by `rebuild` (the
//! same from offset zero into a fresh directory), so a rebuild gives
//! byte-identical views; `queries`: what the API reads of them.
//!
//! Views (column families of the partitions' state database):
//! - `accounts`: each account's state, folded with `Account::apply`;
//! - `entries`: a member's statement in pages of `STATEMENT_PAGE_ENTRIES`
//!   entries, each with the running balance, keyed by account and the
//!   position of the page's first entry (the last page, while it has room,
//!   is kept in the account's row);
//! - `expiring`: lots with points and an expiry, keyed by programme and
//!   expiry instant, for reminders without scanning every account;
//! - `meta`: the log position each partition's state has reached, the
//!   layout's format, and the records every reader skipped (`quarantined/`
//!   rows: which, and why; the books take the views' word for them).
//!
//! Each batch of records becomes one WriteBatch holding the changes and the
//! new position, so after a crash the state resumes exactly where it stops.
//! The broker's offsets (on Kafka) are never the source of truth.

mod fold;
pub mod queries;
mod rebuild;

pub use fold::{
    entry_key, expiring_key, fold, parse_expiring_key, push_entry, statement_entry, view_rows, Beside, EntryPlace,
    Tail, ViewCache, REBUILD_CACHE_ACCOUNTS, REBUILD_INGEST_ROWS, STATEMENT_PAGE_ENTRIES,
};
pub use rebuild::{fold_behind, rebuild, Until};

use crate::log::arbiter::Arbiter;
use crate::log::record::Position;
use crate::store::{self, Db};

/// Records a rebuild folds into one WriteBatch at most.
pub const PROJECTOR_BATCH_RECORDS_MAX: usize = 4096;

pub use store::views::VIEWS_FORMAT;
use store::views::VIEWS_FORMAT_KEY;

/// Marks `views` as written in this build's layout.
pub fn mark_format(views: &Db) -> Result<(), store::StoreError> {
    let mut batch = store::Batch::default();
    batch.put(store::Cf::Meta, VIEWS_FORMAT_KEY, VIEWS_FORMAT);
    views.write(batch)
}

// Meta rows `quarantined/…` → why: a record of the partition that every
// reader skips (it does not decode, names another partition's account, or
// would break its account's invariants: ARCHITECTURE.md, "A record no
// reader can use"). Written in the batch that moves the position past it,
// by the writers and a rebuild alike, so `verify` compares the decisions
// too; the books read them from the views they never fold ahead of.

/// Skips the record at `at` for the views (`reader` names who read it):
/// names it at error level and puts its row in `batch`.
pub fn quarantine(batch: &mut store::Batch, reader: &'static str, at: Position, why: &str) {
    crate::log::arbiter::report(reader, at, why);
    batch.put(store::Cf::Meta, &store::views::quarantined_key(at.partition, at.offset), why.as_bytes());
}

/// The records of `partition` in `[from, to)` the views skipped, as of
/// `snap`: offset → why.
pub fn quarantined_in(
    snap: &store::Snapshot,
    partition: u32,
    from: u64,
    to: u64,
) -> Result<std::collections::BTreeMap<u64, String>, store::StoreError> {
    use store::views::{quarantined_key, quarantined_offset};
    let rows = snap.range(store::Cf::Meta, &quarantined_key(partition, from), &quarantined_key(partition, to))?;
    Ok(rows
        .into_iter()
        .filter_map(|(k, v)| Some((quarantined_offset(&k)?, String::from_utf8_lossy(&v).into_owned())))
        .collect())
}

// Meta rows `arbiter/…`: the arbitration after the claim or release at
// an offset, where the partition's arbitration changed. Written in the
// batch that moves the position past it, by the writers and a rebuild
// alike, so a reader starting mid-log (the feed) judges every record as the
// readers from offset zero did ([`arbiter_at`]).

/// Notes the arbitration `arbiter` took at `at` (a counted claim or release).
pub fn note_arbiter(batch: &mut store::Batch, at: Position, arbiter: &Arbiter) {
    batch.put(
        store::Cf::Meta,
        &store::views::arbiter_key(at.partition, at.offset),
        &store::views::arbiter_row(arbiter),
    );
}

/// The arbitration of `partition` just before `offset`, as the views noted
/// it (the default before any claim).
pub fn arbiter_at(views: &Db, partition: u32, offset: u64) -> Result<Arbiter, store::StoreError> {
    let Some(before) = offset.checked_sub(1) else { return Ok(Arbiter::default()) };
    let (prefix, key) = (store::views::arbiter_prefix(partition), store::views::arbiter_key(partition, before));
    match views.seek_prev(store::Cf::Meta, &prefix, &key)? {
        None => Ok(Arbiter::default()),
        // A row that does not read counts as no claim, as before any.
        Some((_, v)) => Ok(store::views::decode_arbiter_row(&v).unwrap_or_else(|e| {
            tracing::warn!(partition, offset, error = %e, "arbiter row unreadable");
            Arbiter::default()
        })),
    }
}

// Meta rows `rebuilding/…`: a partition whose state is being folded from
// offset zero behind (its rows go in as table files, the position last), so
// what the views hold of it is incomplete. Left by a fold that did not
// finish, it makes the next start rebuild the views.

/// Marks `partition` as being folded behind from offset zero (durably,
/// before any of its rows goes in), or, when `on` is false, as done.
pub fn mark_rebuilding(views: &Db, partition: u32, on: bool) -> Result<(), store::StoreError> {
    let mut batch = store::Batch::default();
    if on {
        batch.put(store::Cf::Meta, &store::views::rebuilding_key(partition), &[]);
    } else {
        batch.delete(store::Cf::Meta, &store::views::rebuilding_key(partition));
    }
    views.write(batch)?;
    if on {
        views.flush()?;
    }
    Ok(())
}

/// Whether any of `partitions` is being folded behind, as of `snap`.
pub fn rebuilding(snap: &store::Snapshot, partitions: u32) -> Result<bool, store::StoreError> {
    for p in 0..partitions {
        if snap.get(store::Cf::Meta, &store::views::rebuilding_key(p))?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Opens the views of a data directory in this build's layout: views an
/// older build wrote, or that a fold from offset zero left incomplete, are
/// deleted (the log is the truth; the writers fold them again).
pub fn open_views(dir: &std::path::Path) -> anyhow::Result<Db> {
    if dir.exists() {
        let views = Db::open(dir, store::VIEW_CFS)?;
        let current = views.get(store::Cf::Meta, VIEWS_FORMAT_KEY)?.as_deref() == Some(VIEWS_FORMAT);
        let incomplete = !views
            .scan(store::Cf::Meta, store::views::REBUILDING_PREFIX, store::views::REBUILDING_PREFIX, 1)?
            .is_empty();
        if current && !incomplete {
            return Ok(views);
        }
        drop(views);
        let why = if incomplete {
            "views left incomplete by a rebuild that did not finish: rebuilding them from the log"
        } else {
            "views written by an older build: rebuilding them from the log"
        };
        tracing::warn!(dir = %dir.display(), "{why}");
        std::fs::remove_dir_all(dir)?;
    }
    let views = Db::open(dir, store::VIEW_CFS)?;
    mark_format(&views)?;
    Ok(views)
}
