//! The reconciliation consumer, and the same fold from offset zero for the
//! tools (`recon`, `replay`, `verify`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::books::{check_against_views, fold, Mismatch};
use super::risk::RiskFold;
use crate::log::arbiter::{Arbiter, Home};
use crate::log::{EventLog, LogEntry, LogReader};
use crate::programmes::{Registry, SharedRegistry};
use crate::store::{self, Cf, Db};

/// The reconciliation consumer: folds every partition into the books, only
/// ever up to where the balance view stands (read from one snapshot of the
/// views), and checks the books against that snapshot when something new
/// was folded, `check_interval` after the last check at the soonest (later
/// when the check is slow: [`check_gap`]). A mismatch is logged at error
/// level and marked in the book; it is never silent.
pub struct Reconciler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Mismatches found by the latest check (empty when the books agree).
    pub last_check: Arc<Mutex<Option<Vec<Mismatch>>>>,
}

/// Records the consumer folds into one WriteBatch at most.
pub const BOOKS_BATCH_RECORDS_MAX: usize = 4096;
/// How long the consumer waits for records the views already have.
const BOOKS_POLL_WAIT_MS: u64 = 100;
/// How long the consumer waits after a failed step before trying again.
const BOOKS_RETRY_MS: u64 = 500;
/// The check against the views reads every account of the balance view, a
/// cost that grows with the members (7-8 s at 1,000,000): the next check
/// waits at least this many times as long as the last one took, so that
/// checking takes at most a twentieth of the consumer's time.
const BOOKS_CHECK_GAP_PER_CHECK: u32 = 20;
/// However slow the last check was (a stall, a compaction), the next one is
/// due this long after it at the latest (or `check_interval`, if longer).
const BOOKS_CHECK_GAP_MAX: Duration = Duration::from_secs(15 * 60);

/// When the check after one that took `took` is due: `interval` after it,
/// or later when the check itself is slow, up to [`BOOKS_CHECK_GAP_MAX`].
fn check_gap(interval: Duration, took: Duration) -> Duration {
    interval.max(took.saturating_mul(BOOKS_CHECK_GAP_PER_CHECK).min(BOOKS_CHECK_GAP_MAX))
}

impl Reconciler {
    pub fn start(
        log: Arc<dyn EventLog>,
        views: Arc<Db>,
        books: Arc<Db>,
        registry: SharedRegistry,
        check_interval: Duration,
    ) -> anyhow::Result<Reconciler> {
        let n = log.partitions();
        let mut lanes: Vec<Lane> = (0..n)
            .map(|p| store::read_cursor(&books, p).map(|cursor| Lane { cursor, risk: RiskFold::live(n) }))
            .collect::<Result<_, _>>()?;
        let mut readers =
            (0..n).map(|p| log.follower(p, lanes[p as usize].cursor.next)).collect::<Result<Vec<_>, _>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let last_check = Arc::new(Mutex::new(None));
        let thread = {
            let (stop, last_check) = (stop.clone(), last_check.clone());
            std::thread::Builder::new().name("reconciliation".into()).spawn(move || {
                let (mut last, mut gap) = (Instant::now() - check_interval, check_interval);
                let mut folded_since_check = true;
                while !stop.load(Ordering::Relaxed) {
                    let due = folded_since_check && last.elapsed() >= gap;
                    match step(&views, &books, &registry, &mut readers, &mut lanes, &stop, due) {
                        Ok((folded, checked)) => {
                            folded_since_check |= folded > 0;
                            if let Some((m, took)) = checked {
                                last = Instant::now();
                                gap = check_gap(check_interval, took);
                                tracing::debug!(
                                    took_ms = took.as_millis() as u64,
                                    next_in_s = gap.as_secs(),
                                    "books checked against the views"
                                );
                                folded_since_check = folded > 0;
                                *last_check.lock().expect("check lock") = Some(m);
                            }
                            if folded == 0 {
                                std::thread::sleep(Duration::from_millis(BOOKS_POLL_WAIT_MS));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "reconciliation consumer; retrying");
                            // What the failed step folded may not be stored.
                            lanes.iter_mut().for_each(|l| l.risk.clear());
                            std::thread::sleep(Duration::from_millis(BOOKS_RETRY_MS));
                            // The readers may have moved past what was folded.
                            match (0..n).map(|p| log.follower(p, lanes[p as usize].cursor.next)).collect() {
                                Ok(r) => readers = r,
                                Err(e) => tracing::warn!(error = %e, "reconciliation consumer cannot reopen the log"),
                            }
                        }
                    }
                }
            })?
        };
        Ok(Reconciler { stop, thread: Some(thread), last_check })
    }

    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where the consumer stands in one partition, and that partition's risk fold.
struct Lane {
    cursor: store::Cursor,
    risk: RiskFold,
}

/// A check's mismatches and how long it took.
type Checked = (Vec<Mismatch>, Duration);

/// Folds every partition up to the views' positions (one snapshot) and,
/// when `check` and every partition got there, compares the books with that
/// same snapshot. Returns the records folded and the check's mismatches and
/// how long it took.
fn step(
    views: &Db,
    books: &Db,
    registry: &SharedRegistry,
    readers: &mut [Box<dyn LogReader>],
    lanes: &mut [Lane],
    stop: &AtomicBool,
    check: bool,
) -> Result<(usize, Option<Checked>), anyhow::Error> {
    let snap = views.snapshot();
    let mut folded = 0;
    let mut all_there = true;
    let partitions = readers.len() as u32;
    for (p, reader) in readers.iter_mut().enumerate() {
        let target = snap.position(p as u32)?;
        let lane = &mut lanes[p];
        while lane.cursor.next < target && !stop.load(Ordering::Relaxed) {
            let max = BOOKS_BATCH_RECORDS_MAX.min((target - lane.cursor.next) as usize);
            let entries = reader.next_batch(max, Duration::from_millis(BOOKS_POLL_WAIT_MS))?;
            if entries.is_empty() {
                break;
            }
            let mut arbiter = lane.cursor.arbiter.clone();
            let end = entries.last().expect("non-empty").offset + 1;
            let quarantined = crate::projection::quarantined_in(&snap, p as u32, lane.cursor.next, end)?;
            let batch = fold(
                books,
                &registry.read().expect("registry lock"),
                Home { partition: p as u32, partitions },
                &mut arbiter,
                &entries,
                &quarantined,
                &mut lane.risk,
            )?;
            books.write(batch)?;
            lane.cursor = store::Cursor { next: entries.last().expect("non-empty").offset + 1, arbiter };
            folded += entries.len();
        }
        all_there &= lane.cursor.next == target;
    }
    // A partition folded behind from offset zero has rows in before its
    // position: nothing to compare with until it is done.
    if !(check && all_there) || crate::projection::rebuilding(&snap, readers.len() as u32)? {
        return Ok((folded, None));
    }
    let started = Instant::now();
    let (mismatches, batch) = check_against_views(books, snap.rows(Cf::Accounts), readers.len() as u32)?;
    books.write(batch)?;
    for m in &mismatches {
        tracing::error!(mismatch = %m, "the books do not agree with the balance view");
    }
    Ok((folded, Some((mismatches, started.elapsed()))))
}

/// Folds every partition from offset zero into `books` up to `targets`
/// (per partition; the log's current end when None), stopping at the first
/// record decided after `until_time`. Returns the records read.
fn fold_from_zero(
    events: &dyn EventLog,
    registry: &Registry,
    views: &store::Snapshot,
    books: &Db,
    targets: Option<&[u64]>,
    until_time: Option<crate::domain::Millis>,
    progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    // Partitions are independent: each writes only rows keyed by its own
    // accounts or its own partition number, so they fold in parallel and
    // the result does not depend on how they interleave.
    crate::log::fold_partitions_in_parallel(
        events.partitions(),
        |p, folded| {
            let target = match targets {
                Some(t) => t.get(p as usize).copied().unwrap_or(0),
                None => events.end_offset(p)?,
            };
            fold_partition_from_zero(events, registry, views, books, p, target, until_time, folded)
        },
        progress,
    )
}

#[allow(clippy::too_many_arguments)]
fn fold_partition_from_zero(
    events: &dyn EventLog,
    registry: &Registry,
    views: &store::Snapshot,
    books: &Db,
    p: u32,
    target: u64,
    until_time: Option<crate::domain::Millis>,
    folded: &AtomicU64,
) -> anyhow::Result<()> {
    let mut reader = events.reader(p, 0)?;
    let mut arbiter = Arbiter::default();
    let mut risk = RiskFold::rebuild();
    while reader.position() < target {
        let max = BOOKS_BATCH_RECORDS_MAX.min((target - reader.position()) as usize);
        let mut entries = crate::log::read_towards(reader.as_mut(), target, max)?;
        if entries.is_empty() {
            break;
        }
        let mut done = false;
        if let Some(t) = until_time {
            let late = |e: &LogEntry| crate::log::arbiter::decided_at(&e.payload).is_some_and(|at| at > t);
            if let Some(cut) = entries.iter().position(late) {
                entries.truncate(cut);
                done = true;
            }
        }
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            folded.fetch_add(entries.len() as u64, Ordering::Relaxed);
            let quarantined = crate::projection::quarantined_in(views, p, first.offset, last.offset + 1)?;
            let home = Home { partition: p, partitions: events.partitions() };
            books.write(fold(books, registry, home, &mut arbiter, &entries, &quarantined, &mut risk)?)?;
        }
        if done {
            break;
        }
    }
    books.ingest(Cf::Risk, &mut risk.finish())?;
    Ok(())
}

/// The books folded afresh from the log into `scratch` (a directory that
/// does not exist yet), for tools: up to exactly the positions of `views`
/// (one snapshot; then checked against them), or, when there are no views,
/// to the end of the log (with views rebuilt beside `scratch` for the
/// records they skip, unchecked). Returns the books and the check's mismatches.
pub fn rebuild(
    events: &dyn EventLog,
    registry: &Registry,
    views: Option<&Db>,
    scratch: &std::path::Path,
) -> anyhow::Result<(Db, Vec<Mismatch>)> {
    let books = Db::open_rebuild(scratch, store::BOOK_CFS)?;
    let rebuilt_dir = tempfile::tempdir()?;
    let rebuilt;
    let (views, check) = match views {
        Some(v) => (v, true),
        None => {
            rebuilt =
                crate::projection::rebuild(events, &rebuilt_dir.path().join("views"), Default::default(), |_| {})?;
            (&rebuilt.0, false)
        }
    };
    let snap = views.snapshot();
    let targets = (0..events.partitions()).map(|p| snap.position(p)).collect::<Result<Vec<_>, _>>()?;
    fold_from_zero(events, registry, &snap, &books, Some(&targets), None, |_| {})?;
    let mut mismatches = Vec::new();
    if check {
        let (m, batch) = check_against_views(&books, snap.rows(Cf::Accounts), events.partitions())?;
        books.write(batch)?;
        mismatches = m;
    }
    drop(snap);
    Ok((books, mismatches))
}

/// The books and the risk view rebuilt from offset zero into `into`, up to
/// an offset in every partition and/or an instant, for `replay`. Returns
/// the database and the records folded.
pub fn replay(
    events: &dyn EventLog,
    registry: &Registry,
    views: &Db,
    into: &std::path::Path,
    until_offset: Option<u64>,
    until_time: Option<crate::domain::Millis>,
    progress: impl FnMut(u64),
) -> anyhow::Result<(Db, u64)> {
    let books = Db::open_rebuild(into, store::BOOK_CFS)?;
    let targets = (0..events.partitions())
        .map(|p| events.end_offset(p).map(|end| until_offset.map_or(end, |u| u.min(end))))
        .collect::<Result<Vec<u64>, crate::log::LogError>>()?;
    let snap = views.snapshot();
    let folded = fold_from_zero(events, registry, &snap, &books, Some(&targets), until_time, progress)?;
    drop(snap);
    books.finish_rebuild()?;
    Ok((books, folded))
}

/// Rebuilds the books and the risk view into a temporary directory up to
/// exactly the live consumer's positions and compares them byte for byte.
/// Returns the records folded and the first difference.
pub fn verify(
    events: &dyn EventLog,
    registry: &Registry,
    views: &Db,
    live: &Db,
) -> anyhow::Result<(u64, Option<crate::tools::audit::Difference>)> {
    let targets: Vec<u64> =
        (0..events.partitions()).map(|p| store::read_position(live, p)).collect::<Result<_, _>>()?;
    let scratch = tempfile::tempdir()?;
    let rebuilt = Db::open_rebuild(&scratch.path().join("books"), store::BOOK_CFS)?;
    let snap = views.snapshot();
    let folded = fold_from_zero(events, registry, &snap, &rebuilt, Some(&targets), None, |_| {})?;
    drop(snap);
    if rebuilt.digest()? == live.digest()? {
        return Ok((folded, None));
    }
    Ok((folded, crate::tools::audit::first_difference(live, &rebuilt, store::BOOK_DIGEST_CFS)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_is_due_an_interval_after_the_last_unless_the_check_took_longer_than_a_twentieth_of_that() {
        let minute = Duration::from_secs(60);
        assert_eq!(check_gap(minute, Duration::from_millis(40)), minute);
        assert_eq!(check_gap(minute, Duration::from_secs(3)), minute);
        assert_eq!(check_gap(minute, Duration::from_secs(5)), Duration::from_secs(100));
    }

    #[test]
    fn however_slow_a_check_the_next_is_due_within_fifteen_minutes_or_the_interval() {
        let minute = Duration::from_secs(60);
        assert_eq!(check_gap(minute, Duration::from_secs(3600)), BOOKS_CHECK_GAP_MAX);
        assert_eq!(check_gap(minute, Duration::MAX), BOOKS_CHECK_GAP_MAX);
        let hour = Duration::from_secs(3600);
        assert_eq!(check_gap(hour, Duration::MAX), hour);
    }
}
