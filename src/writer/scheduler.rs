//! The scheduler: time-driven changes (lots expiring, holds timing out,
//! growth leaving the level window) are commands the writers issue
//! themselves, so they land in the log as events and replays reproduce them.
//! A ticker asks every writer to look at its due index; a writer turns each
//! account due by its `now` into a `Tick` command in its next batch.

use std::time::Duration;

use tokio::sync::mpsc;

use super::Msg;
use crate::domain::{AccountKey, Millis};
use crate::store::{self, Cf, Db};

/// Asks every writer to settle what is due every `interval_ms`, until the
/// writers are gone. A full queue is skipped: it is busy enough, and the
/// next tick comes.
pub(super) fn start_ticker(senders: &[mpsc::Sender<Msg>], interval_ms: u64) {
    let weak: Vec<_> = senders.iter().map(|s| s.downgrade()).collect();
    let every = Duration::from_millis(interval_ms.max(1));
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let mut alive = false;
            for s in &weak {
                if let Some(s) = s.upgrade() {
                    alive = true;
                    let _ = s.try_send(Msg::Tick(None));
                }
            }
            if !alive {
                break;
            }
        }
    });
}

/// Due-index rows of `partition` at or before `now` (at most `max`), with
/// their accounts.
pub(super) fn due_accounts(
    db: &Db,
    partition: u32,
    now: Millis,
    max: usize,
) -> Result<Vec<(Vec<u8>, AccountKey)>, store::StoreError> {
    let prefix = store::writer::due_prefix(partition);
    let rows = db.scan(Cf::Due, &prefix, &prefix, max)?;
    // The level walk's progress rows sort after every due instant (their
    // instant bytes are all 0xff), so the instant alone ends the scan; a row
    // whose account does not read is passed over.
    Ok(rows
        .into_iter()
        .take_while(|(k, _)| store::writer::due_instant(k).is_some_and(|at| at <= now))
        .filter_map(|(k, _)| store::writer::parse_due_key(&k).map(|(_, a)| (k, a)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_row_that_does_not_read_is_passed_over_and_the_walks_progress_ends_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), store::VIEW_CFS).unwrap();
        let (a, b) = (AccountKey::new("t", "p", "a"), AccountKey::new("t", "p", "b"));
        let mut batch = store::Batch::default();
        batch.put(Cf::Due, &store::due_key(0, 10, &a), &[]);
        let mut unreadable = store::writer::due_prefix(0).to_vec();
        unreadable.extend_from_slice(&store::millis_key(20));
        unreadable.extend_from_slice(b"no account here");
        batch.put(Cf::Due, &unreadable, &[]);
        batch.put(Cf::Due, &store::due_key(0, 30, &b), &[]);
        batch.put(Cf::Due, &store::writer::levels_progress_key(0, &a.programme()), b"\0\0\0\0\0\0\0\x01");
        batch.put(Cf::Due, &store::due_key(1, 5, &b), &[]);
        db.write(batch).unwrap();

        let due: Vec<AccountKey> = due_accounts(&db, 0, 100, 10).unwrap().into_iter().map(|(_, k)| k).collect();
        assert_eq!(due, [a.clone(), b.clone()], "the row that does not read is skipped, not an end");
        let due: Vec<AccountKey> = due_accounts(&db, 0, 15, 10).unwrap().into_iter().map(|(_, k)| k).collect();
        assert_eq!(due, [a], "only what is due by now");
    }
}
