//! Rebuilding every view from offset zero into a fresh directory (`replay`,
//! `verify`): the writers' fold, written behind (each account once
//! when the cache fills and at the end) and as ingested table files.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::fold::{fold, ViewCache, REBUILD_CACHE_ACCOUNTS, REBUILD_INGEST_ROWS};
use super::PROJECTOR_BATCH_RECORDS_MAX;
use crate::domain::Millis;
use crate::log::arbiter::{decided_at, Arbiter, Home};
use crate::log::EventLog;
use crate::store::{self, Batch, Db};

/// How far to rebuild.
#[derive(Clone, Copy, Debug, Default)]
pub struct Until<'a> {
    /// Fold records with offset < this, in every partition (None: to the end).
    pub offset: Option<u64>,
    /// Per partition, fold records with offset < this (overrides `offset`).
    pub offsets: Option<&'a [u64]>,
    /// Fold records decided at or before this instant.
    pub time: Option<Millis>,
}

/// Rebuilds every view from offset zero into a fresh database at `into`,
/// stopping at the log's end as it was when the rebuild started (or `until`).
/// Partitions are folded in parallel (up to the machine's cores): each writes
/// only its own accounts' rows and its own position, so the result does not
/// depend on how they interleave. Returns the number of records folded.
pub fn rebuild(log: &dyn EventLog, into: &Path, until: Until, progress: impl FnMut(u64)) -> anyhow::Result<(Db, u64)> {
    let views = Db::open_rebuild(into, store::VIEW_CFS)?;
    let folded = crate::log::fold_partitions_in_parallel(
        log.partitions(),
        |p, folded| rebuild_partition(log, &views, p, until, folded),
        progress,
    )?;
    super::mark_format(&views)?;
    views.finish_rebuild()?;
    Ok((views, folded))
}

fn rebuild_partition(log: &dyn EventLog, views: &Db, p: u32, until: Until, folded: &AtomicU64) -> anyhow::Result<()> {
    let limit = match until.offsets {
        Some(v) => v.get(p as usize).copied().unwrap_or(0),
        None => until.offset.unwrap_or(u64::MAX),
    };
    let end = limit.min(log.end_offset(p)?);
    let mut reader = log.reader(p, 0)?;
    let mut cache = ViewCache::rebuild(REBUILD_CACHE_ACCOUNTS, REBUILD_INGEST_ROWS);
    let mut done = false;
    let next = || -> anyhow::Result<Vec<crate::log::LogEntry>> {
        if done {
            return Ok(Vec::new());
        }
        let mut entries = crate::log::read_towards(reader.as_mut(), end, PROJECTOR_BATCH_RECORDS_MAX)?;
        if let Some(t) = until.time {
            // The first record decided after `t` ends the replay (claims carry a time too).
            let cut = entries.iter().position(|e| decided_at(&e.payload).is_some_and(|at| at > t));
            if let Some(cut) = cut {
                entries.truncate(cut);
                done = true;
            }
        }
        Ok(entries)
    };
    fold_behind(views, Home { partition: p, partitions: log.partitions() }, &mut cache, folded, next)?;
    Ok(())
}

/// Folds one partition's records into `views` from offset zero, written
/// behind through `cache` (a [rebuild](ViewCache::rebuild) cache: nothing of
/// the partition is in `views` yet), each batch as `next` gives it until it
/// gives none; then writes everything out with the position reached, which
/// it returns (None when there was no record).
pub fn fold_behind(
    views: &Db,
    home: Home,
    cache: &mut ViewCache,
    folded: &AtomicU64,
    mut next: impl FnMut() -> anyhow::Result<Vec<crate::log::LogEntry>>,
) -> anyhow::Result<Option<store::Cursor>> {
    let mut arbiter = Arbiter::default();
    let mut folded_to: Option<store::Cursor> = None;
    loop {
        let entries = next()?;
        let Some(last) = entries.last() else { break };
        folded.fetch_add(entries.len() as u64, Ordering::Relaxed);
        views.write(fold(views, home, &mut arbiter, &entries, cache)?)?;
        folded_to = Some(store::Cursor { next: last.offset + 1, arbiter: arbiter.clone() });
    }
    if let Some(cursor) = &folded_to {
        let mut batch = Batch::default();
        cache.write_out(views, &mut batch, home.partition, cursor.clone())?;
        views.write(batch)?;
    }
    cache.ingest_beside(views, true)?;
    Ok(folded_to)
}
