//! The one fold of records into the views. The writers write each changed
//! account's rows with [`view_rows`] and [`push_entry`] as they commit; a
//! rebuild runs [`fold`] over the log's entries with a [`ViewCache`], which
//! writes the same rows, only later and differently (write-behind, ingested
//! table files), so a rebuild from offset zero gives byte-identical views.

use crate::domain::{Account, AccountKey, Id, Lot};
use crate::log::arbiter::{Admitted, Arbiter, Home};
use crate::log::record::{AccountRecord, Balance, Position};
use crate::log::LogEntry;
use crate::store::{self, accounts, snapshot, Batch, Cf, Db};
use crate::FastMap;

/// The decoded accounts of a fold over log entries between batches, each
/// with the pieces changed since its rows were written, so a batch neither
/// re-reads nor re-decodes the accounts it touches and writes only what
/// changed. The views database is the truth: the cache only ever holds what
/// was written there (or, for a rebuild, what will be).
pub struct ViewCache {
    /// Boxed: a map's free slots then cost a pointer each instead of an
    /// account, and growing it moves pointers (a rebuild's map of 500,000
    /// accounts grows from empty).
    accounts: FastMap<AccountKey, Box<Cached>>,
    /// Accounts kept at most; over it, the cache starts again empty.
    max: usize,
    /// For a fresh rebuild: account and expiring rows are written only when
    /// the cache is full and at the end ([`ViewCache::write_out`]), once per
    /// account instead of once per batch, and every row goes into the
    /// database as ingested table files rather than through the memtable.
    deferred: bool,
    /// Accounts changed since their rows were last written.
    dirty: Vec<AccountKey>,
    /// Statement rows a deferred cache has not ingested yet.
    entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Statement rows a deferred cache gathers before ingesting them.
    ingest_rows: usize,
    /// A fresh rebuild whose cache has not written an account out yet: an
    /// account it does not hold is not in the database either, so it is not
    /// looked up (at 1,000,000 accounts those lookups, which never found a
    /// row, were ~7 % of a replay's CPU).
    nothing_written: bool,
    /// The writer's own rows a fold behind from offset zero writes too.
    beside: Option<Box<dyn Beside>>,
}

/// What a writer folding its partition behind from offset zero (a start
/// without state) writes besides the views: its own rows (idempotency
/// records, due index, issuance), gathered from the same fold. The views
/// know nothing of them; the writers' side implements this.
pub trait Beside: Send {
    /// A record of the partition, just folded into `account`.
    fn record(&mut self, record: &AccountRecord, position: Position, account: &Account);
    /// An account read back from the database (written out earlier in the
    /// same rebuild), as it was written.
    fn loaded(&mut self, key: &AccountKey, account: &Account);
    /// An account being written out, as it is now.
    fn written(&mut self, key: &AccountKey, account: &Account);
    /// Rows gathered and not taken yet.
    fn pending(&self) -> usize;
    /// The rows gathered since the last call, to ingest now (each key at
    /// most once a column family); `last` at the rebuild's end.
    fn take_rows(&mut self, last: bool) -> Vec<(Cf, Vec<store::TableRow>)>;
}

/// A view row to write: (column family, key, value or `None` to delete; in
/// a column family that [appends](Cf::appends), the bytes to add at the
/// row's end).
pub type ViewRow = (Cf, Vec<u8>, Option<Vec<u8>>);

struct Cached {
    account: Account,
    /// What changed since the account's rows were last written.
    changed: accounts::Changed,
    /// Listed in `dirty`.
    dirty: bool,
    /// The last page of the account's statement while it has room.
    page: Option<Tail>,
}

pub use crate::store::snapshot::{Tail, STATEMENT_PAGE_ENTRIES};

/// Adds a statement entry (encoded) to an account's last page, starting a
/// page at the entry's position when there is none. Returns the row to add
/// the page's unwritten entries to when this one filled it (the next entry
/// starts a new page).
pub fn push_entry(
    page: &mut Option<Tail>,
    account: &AccountKey,
    at: EntryPlace,
    entry: Vec<u8>,
) -> Option<(Vec<u8>, Vec<u8>)> {
    let tail = page.get_or_insert_with(|| Tail::new(at.offset, at.index));
    tail.push(&entry);
    if usize::from(tail.entries) < STATEMENT_PAGE_ENTRIES {
        return None;
    }
    let full = page.take().expect("the last page");
    Some((entry_key(account, full.offset, full.index), full.bytes))
}

/// Where an event sits in the log: its record's offset and its index there.
#[derive(Clone, Copy, Debug)]
pub struct EntryPlace {
    pub offset: u64,
    pub index: u16,
}

/// The statement entry of the `index`-th event of `record` (at `position`),
/// with the balance right after it.
pub fn statement_entry(
    record: &crate::log::record::AccountRecord,
    position: Position,
    index: u16,
    event: crate::domain::Event,
    balance: &Balance,
) -> Vec<u8> {
    let delta = event.net_delta();
    snapshot::encode_statement_entry(position, index, &record.request_id, record.at, event, delta, balance)
}

/// Appends the view rows of a changed account to `rows`: its account rows
/// (what `changed` names; the row keeps where its statement's last page
/// starts), the entries its last page has not written yet (added to the
/// page's row, see [`Cf::appends`]), and the expiring rows of its changed
/// lots. The caller marks it written (`changed.written`).
pub fn view_rows(
    key: &AccountKey,
    account: &Account,
    changed: &accounts::Changed,
    page: Option<&mut Tail>,
    rows: &mut Vec<ViewRow>,
) {
    if let Err(violation) = account.check_invariants() {
        tracing::error!(account = %key, %violation, "ledger invariant violated in the balance view");
    }
    for (k, v) in accounts::rows_with(key, account, changed, page.as_deref()) {
        rows.push((Cf::Accounts, k, v));
    }
    if let Some(page) = page.filter(|p| !p.bytes.is_empty()) {
        rows.push((Cf::Entries, entry_key(key, page.offset, page.index), Some(std::mem::take(&mut page.bytes))));
    }
    // Each changed lot with an expiry has a row while it has points (its
    // expiry never changes, so neither does its key).
    let mut expiring = |id: &Id, lot: &Lot| {
        if let Some(at) = lot.expires_at {
            let value = (lot.spendable() > 0).then(|| store::points_row(lot.spendable()).to_vec());
            rows.push((Cf::Expiring, expiring_key(key, at, id), value));
        }
    };
    match changed.lots() {
        Some(ids) => ids.for_each(|id| {
            if let Some(lot) = account.lots.get(id) {
                expiring(id, lot)
            }
        }),
        None => account.lots.iter().for_each(|(id, lot)| expiring(id, lot)),
    }
}

/// Accounts a rebuild keeps in memory per partition before writing them out.
/// An account written out and met again is read back from table files not
/// compacted yet (slow: every level-0 file is looked at), so a partition's
/// accounts should fit: about 1 KB each with its last statement page, so up
/// to ~500 MB per partition folded at once (two at a time on two cores).
pub const REBUILD_CACHE_ACCOUNTS: usize = 500_000;
/// Statement rows a rebuild gathers per partition before ingesting them as
/// one table file.
pub const REBUILD_INGEST_ROWS: usize = 250_000;

impl ViewCache {
    /// Write-through: every batch carries the rows of the accounts it
    /// changed (as the writers write them; the criterion bench and the tests
    /// fold this way).
    pub fn live(max: usize) -> ViewCache {
        ViewCache {
            accounts: FastMap::default(),
            max,
            deferred: false,
            dirty: Vec::new(),
            entries: Vec::new(),
            ingest_rows: 0,
            nothing_written: false,
            beside: None,
        }
    }

    /// Write-behind, for a rebuild into an empty database: see
    /// [`ViewCache::write_out`]. Statement rows go in as table files of
    /// `ingest_rows` rows.
    pub fn rebuild(max: usize, ingest_rows: usize) -> ViewCache {
        ViewCache {
            accounts: FastMap::default(),
            max,
            deferred: true,
            dirty: Vec::new(),
            entries: Vec::new(),
            ingest_rows,
            nothing_written: true,
            beside: None,
        }
    }

    /// [`ViewCache::rebuild`] that also writes what `beside` gathers.
    pub fn rebuild_with(max: usize, ingest_rows: usize, beside: Box<dyn Beside>) -> ViewCache {
        ViewCache { beside: Some(beside), ..ViewCache::rebuild(max, ingest_rows) }
    }

    fn load<'c>(
        accounts: &'c mut FastMap<AccountKey, Box<Cached>>,
        views: &Db,
        key: &AccountKey,
        deferred: bool,
        nothing_written: bool,
        beside: Option<&mut Box<dyn Beside>>,
    ) -> Result<&'c mut Cached, store::StoreError> {
        if !accounts.contains_key(key) {
            let (account, mut changed, page) =
                if nothing_written { Default::default() } else { accounts::load_with_tail(views, Cf::Accounts, key)? };
            if let Some(b) = beside.filter(|_| !nothing_written) {
                b.loaded(key, &account);
            }
            if deferred {
                // A rebuild writes an account's rows once or a few times:
                // all of them, rather than noting each piece on the way.
                changed = changed.everything();
            }
            accounts.insert(key.clone(), Box::new(Cached { account, changed, dirty: false, page }));
        }
        Ok(accounts.get_mut(key).expect("loaded"))
    }

    /// Appends the view rows of a changed account to `rows` and marks it
    /// written.
    fn changed_rows(&mut self, key: &AccountKey, rows: &mut Vec<ViewRow>) {
        let c = self.accounts.get_mut(key).expect("a dirty account is cached");
        if let Some(b) = self.beside.as_mut() {
            b.written(key, &c.account);
        }
        view_rows(key, &c.account, &c.changed, c.page.as_mut(), rows);
        c.changed = c.changed.written(&c.account);
        c.dirty = false;
    }

    /// Writes every account not yet written (into `batch` for a
    /// write-through fold, as ingested table files for a rebuild) and puts
    /// the move of the position to `cursor` into `batch` (the end of a
    /// rebuild, a full cache, or every batch of a write-through fold).
    pub fn write_out(
        &mut self,
        views: &Db,
        batch: &mut Batch,
        partition: u32,
        cursor: store::Cursor,
    ) -> Result<(), store::StoreError> {
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut rows = Vec::new();
        if self.deferred {
            self.nothing_written = false;
            views.ingest(Cf::Entries, &mut self.entries)?;
            // In key order, a table file per `ingest_rows` rows or so: the
            // files of the accounts column family do not overlap, and only
            // one file's rows are in memory at a time.
            dirty.sort_unstable();
            let (mut accounts, mut expiring, mut pages) = (Vec::new(), Vec::new(), Vec::new());
            for (i, key) in dirty.iter().enumerate() {
                self.changed_rows(key, &mut rows);
                // Every key at most once (one row per account, per piece
                // and per page).
                for (cf, k, v) in rows.drain(..) {
                    match cf {
                        Cf::Accounts => &mut accounts,
                        Cf::Entries => &mut pages,
                        _ => &mut expiring,
                    }
                    .push((k, v));
                }
                if accounts.len() + expiring.len() + pages.len() >= self.ingest_rows || i + 1 == dirty.len() {
                    views.ingest(Cf::Accounts, &mut accounts)?;
                    views.ingest(Cf::Expiring, &mut expiring)?;
                    views.ingest(Cf::Entries, &mut pages)?;
                }
            }
            self.ingest_beside(views, false)?;
        } else {
            for key in &dirty {
                self.changed_rows(key, &mut rows);
            }
            for (cf, k, v) in rows {
                batch.view_row(cf, k, v);
            }
        }
        store::put_cursor(batch, partition, &cursor);
        Ok(())
    }

    /// Ingests the rows [`Beside`] gathered (every one of them when `last`).
    pub fn ingest_beside(&mut self, views: &Db, last: bool) -> Result<(), store::StoreError> {
        let Some(b) = self.beside.as_mut() else { return Ok(()) };
        for (cf, mut rows) in b.take_rows(last) {
            views.ingest(cf, &mut rows)?;
        }
        Ok(())
    }

    /// Forgets every account (after a failed write the views may hold less
    /// than the cache).
    pub fn clear(&mut self) {
        self.accounts.clear();
        self.dirty.clear();
    }
}

/// Folds consecutive records of one partition into a WriteBatch of view
/// changes and the new position, reading the accounts it touches through
/// `cache`. `arbiter` is the log's arbitration as of the first entry (records
/// of a superseded writer are void and leave no trace); it moves past the last.
/// A deferred (rebuild) cache puts account rows and the position only when it
/// writes out; statement rows are put in every batch.
pub fn fold(
    views: &Db,
    home: Home,
    arbiter: &mut Arbiter,
    entries: &[LogEntry],
    cache: &mut ViewCache,
) -> Result<Batch, store::StoreError> {
    let partition = home.partition;
    let mut batch = Batch::default();
    for entry in entries {
        let position = Position { partition, offset: entry.offset };
        let mut record = match arbiter.admit_bytes(&entry.payload, home) {
            Admitted::Record(r) => r,
            Admitted::Quarantined(q) => {
                super::quarantine(&mut batch, "views", position, &q.why);
                continue;
            }
            Admitted::Claim(_) | Admitted::Released(_) => {
                super::note_arbiter(&mut batch, position, arbiter);
                continue;
            }
            Admitted::Void => continue,
        };
        let cached = ViewCache::load(
            &mut cache.accounts,
            views,
            &record.account,
            cache.deferred,
            cache.nothing_written,
            cache.beside.as_mut(),
        )?;
        if let Err(why) = crate::domain::admissible(&cached.account, &record.events) {
            super::quarantine(&mut batch, "views", position, &format!("account {}: {why}", record.account));
            continue;
        }
        if !cached.dirty && !record.events.is_empty() {
            cached.dirty = true;
            cache.dirty.push(record.account.clone());
        }
        let events = std::mem::take(&mut record.events);
        let kept = if cache.beside.is_some() { events.clone() } else { Vec::new() };
        for (i, event) in events.into_iter().enumerate() {
            cached.account.apply(&event);
            cached.changed.note(&event);
            let row = statement_entry(&record, position, i as u16, event, &Balance::of(&cached.account));
            let at = EntryPlace { offset: entry.offset, index: i as u16 };
            if let Some((key, page)) = push_entry(&mut cached.page, &record.account, at, row) {
                if cache.deferred {
                    cache.entries.push((key, Some(page)));
                } else {
                    batch.append_vec(Cf::Entries, key, page);
                }
            }
        }
        if let Some(b) = cache.beside.as_mut() {
            record.events = kept;
            b.record(&record, position, &cached.account);
        }
    }
    let Some(last) = entries.last() else { return Ok(batch) };
    let cursor = store::Cursor { next: last.offset + 1, arbiter: arbiter.clone() };
    let full = cache.accounts.len() > cache.max;
    if !cache.deferred || full {
        cache.write_out(views, &mut batch, partition, cursor)?;
    } else {
        if cache.entries.len() >= cache.ingest_rows {
            views.ingest(Cf::Entries, &mut cache.entries)?;
        }
        if cache.beside.as_ref().is_some_and(|b| b.pending() >= cache.ingest_rows) {
            cache.ingest_beside(views, false)?;
        }
    }
    if full {
        cache.clear();
    }
    Ok(batch)
}

/// An account's lots with points and an expiry: (expires_at, lot id) → points.
#[cfg(test)]
type ExpiringLots = std::collections::BTreeMap<(crate::domain::Millis, Id), i64>;

#[cfg(test)]
fn expiring_lots(a: &Account) -> ExpiringLots {
    a.lots
        .iter()
        .filter(|(_, l)| l.spendable() > 0)
        .filter_map(|(id, l)| Some(((l.expires_at?, id.clone()), l.spendable())))
        .collect()
}

pub use crate::store::views::{entry_key, expiring_key, parse_expiring_key};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{decide, Command, CommandBody, Programme};
    use crate::log::codec;
    use crate::log::record::AccountRecord;
    use crate::store::Row;

    const T0: crate::domain::Millis = 1_773_100_800_000;
    /// One partition: every account is at home in it.
    const HOME: Home = Home { partition: 0, partitions: 1 };

    /// Records on 13 accounts: earns (most with an expiry) and spends that
    /// take points out of lots, so expiring rows are put, changed and deleted.
    fn log() -> Vec<LogEntry> {
        let programme = Programme::example("shop", "points");
        let mut accounts: FastMap<AccountKey, Account> = FastMap::default();
        (0..400u64)
            .filter_map(|i| {
                let key = AccountKey::new("shop", "points", &format!("m{}", i % 13));
                let body = if i % 3 == 2 {
                    CommandBody::Spend { points: 25, order_ref: None, order_cash_amount: None }
                } else {
                    CommandBody::Earn {
                        points: 10 + (i % 40) as i64,
                        reason: "purchase".into(),
                        order_ref: None,
                        growth: 1,
                        expires_at: (i % 5 != 0).then_some(T0 + 86_400_000 * (1 + (i % 7) as i64)),
                    }
                };
                let cmd =
                    Command { request_id: format!("r{i}"), account: key.clone(), body, context: Default::default() };
                let account = accounts.entry(key.clone()).or_default();
                let events = decide(Some(&programme), account, &cmd, T0 + i as i64).ok()?;
                events.iter().for_each(|e| account.apply(e));
                Some(AccountRecord {
                    epoch: 0,
                    request_id: cmd.request_id,
                    account: key,
                    programme_version: 1,
                    at: T0 + i as i64,
                    fingerprint: i,
                    system: false,
                    events,
                    context: Default::default(),
                    cap_mode: Default::default(),
                })
            })
            .enumerate()
            .map(|(offset, r)| LogEntry { offset: offset as u64, payload: codec::encode_account_record(&r) })
            .collect()
    }

    fn fold_all(views: &Db, entries: &[LogEntry], mut cache: ViewCache) {
        let mut arbiter = Arbiter::default();
        let mut cursor = None;
        for chunk in entries.chunks(37) {
            views.write(fold(views, HOME, &mut arbiter, chunk, &mut cache).unwrap()).unwrap();
            cursor = Some(store::Cursor { next: chunk.last().unwrap().offset + 1, arbiter: arbiter.clone() });
        }
        let mut batch = Batch::default();
        cache.write_out(views, &mut batch, 0, cursor.unwrap()).unwrap();
        views.write(batch).unwrap();
    }

    #[test]
    fn a_deferred_rebuild_writes_the_same_views_as_the_live_fold() {
        let entries = log();
        assert!(entries.len() > 300, "most commands are accepted");
        let dir = tempfile::tempdir().unwrap();
        let live = Db::open(&dir.path().join("live"), store::VIEW_CFS).unwrap();
        // A small live cache is cleared several times on the way.
        fold_all(&live, &entries, ViewCache::live(5));
        // Tiny limits: the rebuild writes out and forgets accounts many times
        // and ingests many small table files.
        let rebuilt = Db::open_rebuild(&dir.path().join("rebuilt"), store::VIEW_CFS).unwrap();
        fold_all(&rebuilt, &entries, ViewCache::rebuild(3, 50));
        // Compacted once at the end (the files stacked up uncompacted till then).
        rebuilt.finish_rebuild().unwrap();
        let (a, b) = (live.digest().unwrap(), rebuilt.digest().unwrap());
        assert_eq!(a, b);
        let expiring = a.iter().find(|(cf, _, _)| *cf == "expiring").unwrap().2;
        assert!(expiring > 0, "the log leaves lots with an expiry");
        // Both equal one write-through fold of everything with no cache limit.
        let whole = Db::open(&dir.path().join("whole"), store::VIEW_CFS).unwrap();
        let mut cache = ViewCache::live(usize::MAX);
        whole.write(fold(&whole, HOME, &mut Arbiter::default(), &entries, &mut cache).unwrap()).unwrap();
        assert_eq!(whole.digest().unwrap(), a);
        // And the expiring rows are exactly the lots with points and an
        // expiry of the final accounts, with their points now.
        let mut expected: Vec<Row> = Vec::new();
        for row in crate::store::accounts::each(whole.rows(Cf::Accounts)) {
            let (key, account) = row.unwrap();
            for ((at, lot), points) in expiring_lots(&account) {
                expected.push((expiring_key(&key, at, &lot), points.to_be_bytes().to_vec()));
            }
        }
        expected.sort();
        assert_eq!(whole.all(Cf::Expiring).unwrap(), expected);
        assert_eq!(live.all(Cf::Expiring).unwrap(), expected);
    }
}
