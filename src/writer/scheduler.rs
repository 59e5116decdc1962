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
    // Rows of another layout (a level walk's progress) sort after every
    // due instant, so the first row that is not a due key ends the scan.
    Ok(rows
        .into_iter()
        .map_while(|(k, _)| store::writer::parse_due_key(&k).map(|(at, a)| (k, at, a)))
        .take_while(|(_, at, _)| *at <= now)
        .map(|(k, _, a)| (k, a))
        .collect())
}
