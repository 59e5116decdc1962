//! Projectors: fold the log into the RocksDB views that queries read.
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

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prost::Message;
use tokio::sync::watch;

use crate::codec;
use crate::domain::{Account, AccountKey, Millis};
use crate::log::{EventLog, LogEntry};
use crate::proto as pb;
use crate::record::{Admitted, Arbiter, Balance, PartitionRecord, Position};
use crate::store::{self, Batch, Cf, Db};

/// Records folded into one WriteBatch at most.
pub const PROJECTOR_BATCH_RECORDS_MAX: usize = 4096;
/// How long a projector waits for new records before looking at its stop flag.
pub const PROJECTOR_POLL_WAIT_MS: u64 = 100;

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
                            std::thread::sleep(Duration::from_millis(500));
                            continue;
                        }
                    };
                    if entries.is_empty() {
                        continue;
                    }
                    let next = entries.last().expect("non-empty").offset + 1;
                    if let Err(e) = fold(&views, p, &mut arbiter, &entries).and_then(|b| views.write(b)) {
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

/// Folds consecutive records of one partition into a WriteBatch of view
/// changes and the new position. Reads current view rows from `views`.
/// `arbiter` is the log's arbitration as of the first entry (records of a
/// superseded writer are void and leave no trace); it moves past the last.
pub fn fold(
    views: &Db,
    partition: u32,
    arbiter: &mut Arbiter,
    entries: &[LogEntry],
) -> Result<Batch, store::StoreError> {
    let mut accounts: HashMap<AccountKey, (Account, Account)> = HashMap::new();
    let mut batch = Batch::default();
    for entry in entries {
        let record = match arbiter.admit_bytes(&entry.payload)? {
            Admitted::Record(r) => r,
            Admitted::Claim(_) | Admitted::Void => continue,
        };
        if !accounts.contains_key(&record.account) {
            let a = match views.get(Cf::Accounts, &store::account_key(&record.account))? {
                Some(b) => codec::decode_account(&b)?,
                None => Account::default(),
            };
            accounts.insert(record.account.clone(), (a.clone(), a));
        }
        let (_, account) = accounts.get_mut(&record.account).expect("loaded");
        let position = Position { partition, offset: entry.offset };
        for (i, event) in record.events.iter().enumerate() {
            account.apply(event);
            let row = pb::Entry {
                position: Some(codec::position_to_pb(position)),
                request_id: record.request_id.clone(),
                at: Some(codec::timestamp(record.at)),
                event: Some(codec::event_to_pb(event)),
                delta: event.net_delta(),
                balance: Some(codec::balance_to_pb(&Balance::of(account))),
            };
            batch.put(Cf::Entries, &entry_key(&record.account, entry.offset, i as u16), &row.encode_to_vec());
        }
    }
    let mut keys: Vec<_> = accounts.keys().cloned().collect();
    keys.sort();
    for key in keys {
        let (before, after) = &accounts[&key];
        if let Err(violation) = after.check_invariants() {
            tracing::error!(account = %key, %violation, "ledger invariant violated in the balance view");
        }
        batch.put(Cf::Accounts, &store::account_key(&key), &codec::encode_account(after));
        let (old, new) = (expiring_lots(before), expiring_lots(after));
        for (at, lot, _) in old.difference(&new) {
            batch.delete(Cf::Expiring, &expiring_key(&key, *at, lot));
        }
        for (at, lot, points) in new.difference(&old) {
            batch.put(Cf::Expiring, &expiring_key(&key, *at, lot), &points.to_be_bytes());
        }
    }
    if let Some(last) = entries.last() {
        store::put_cursor(&mut batch, partition, store::Cursor { next: last.offset + 1, arbiter: *arbiter });
    }
    Ok(batch)
}

fn expiring_lots(a: &Account) -> BTreeSet<(Millis, String, i64)> {
    a.lots
        .iter()
        .filter(|(_, l)| l.remaining > 0)
        .filter_map(|(id, l)| Some((l.expires_at?, id.clone(), l.remaining)))
        .collect()
}

/// `account, offset BE, event index BE`: a member's statement in log order.
pub fn entry_key(account: &AccountKey, offset: u64, index: u16) -> Vec<u8> {
    let mut k = store::account_key(account);
    k.extend_from_slice(&offset.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// `tenant \0 programme \0, expires_at, member \0, lot id`.
pub fn expiring_key(account: &AccountKey, at: Millis, lot_id: &str) -> Vec<u8> {
    let mut k = store::programme_prefix(&account.tenant_id, &account.programme_id);
    k.extend_from_slice(&store::millis_key(at));
    k.extend_from_slice(account.member_id.as_bytes());
    k.push(0);
    k.extend_from_slice(lot_id.as_bytes());
    k
}

/// Parses an expiring key back into (member, expires_at, lot id).
pub fn parse_expiring_key(prefix_len: usize, k: &[u8]) -> Option<(String, Millis, String)> {
    let at = store::millis_from_key(k.get(prefix_len..prefix_len + 8)?);
    let rest = &k[prefix_len + 8..];
    let i = rest.iter().position(|&b| b == 0)?;
    Some((String::from_utf8(rest[..i].to_vec()).ok()?, at, String::from_utf8(rest[i + 1..].to_vec()).ok()?))
}

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
pub fn rebuild(
    log: &dyn EventLog,
    into: &Path,
    until: Until,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<(Db, u64)> {
    let views = Db::open_rebuild(into, store::VIEW_CFS)?;
    let folded = AtomicU64::new(0);
    let next = AtomicU32::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(log.partitions() as usize).max(1);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let p = next.fetch_add(1, Ordering::Relaxed);
                        if p >= log.partitions() {
                            return Ok(());
                        }
                        rebuild_partition(log, &views, p, until, &folded)?;
                    }
                })
            })
            .collect();
        while !handles.iter().all(|h| h.is_finished()) {
            progress(folded.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(50));
        }
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a rebuild thread panicked"))??;
        }
        Ok(())
    })?;
    let folded = folded.into_inner();
    progress(folded);
    views.flush()?;
    Ok((views, folded))
}

fn rebuild_partition(log: &dyn EventLog, views: &Db, p: u32, until: Until, folded: &AtomicU64) -> anyhow::Result<()> {
    let limit = match until.offsets {
        Some(v) => v.get(p as usize).copied().unwrap_or(0),
        None => until.offset.unwrap_or(u64::MAX),
    };
    let end = limit.min(log.end_offset(p)?);
    let mut reader = log.reader(p, 0)?;
    let mut arbiter = Arbiter::default();
    loop {
        let mut entries = crate::log::read_towards(reader.as_mut(), end, PROJECTOR_BATCH_RECORDS_MAX)?;
        if entries.is_empty() {
            return Ok(());
        }
        let mut done = false;
        if let Some(t) = until.time {
            // The first record decided after `t` ends the replay (claims carry a time too).
            let cut = entries.iter().position(|e| {
                codec::decode_partition_record(&e.payload)
                    .map(|r| match r {
                        PartitionRecord::Account(r) => r.at > t,
                        PartitionRecord::Claim(c) => c.at > t,
                    })
                    .unwrap_or(true)
            });
            if let Some(cut) = cut {
                entries.truncate(cut);
                done = true;
            }
        }
        if !entries.is_empty() {
            folded.fetch_add(entries.len() as u64, Ordering::Relaxed);
            views.write(fold(views, p, &mut arbiter, &entries)?)?;
        }
        if done {
            return Ok(());
        }
    }
}
