//! Commit: the state a batch leaves (the writer's and the views'), with
//! the cursor it reflects, in one WriteBatch.

use super::cache::Kept;
use super::issuance::{issued_key, Granted};
use super::partition::PartitionWriter;
use crate::domain::{self, Account, AccountKey, Millis};
use crate::log::record::{AccountRecord, Balance, Position, Reply};
use crate::projection::{self, EntryPlace, Tail};
use crate::store::{self, accounts, snapshot, Batch, Cf};
use crate::FastMap;

/// State changed by one batch, not yet committed.
#[derive(Default)]
pub(super) struct Work {
    /// Accounts the batch has looked at.
    pub(super) accounts: FastMap<AccountKey, Touched>,
    /// The idempotency records' rows (key, row), built as the replies are.
    pub(super) requests: Vec<(Vec<u8>, Vec<u8>)>,
    /// Due-index rows a tick took up: deleted at commit, and each account's
    /// current due instant put back (a row can go stale when the rules that
    /// set it change, e.g. the level window).
    pub(super) ticked: Vec<(Vec<u8>, AccountKey)>,
    /// Points granted by records read back from the log (added to the
    /// shared issuance at commit).
    pub(super) issued_folded: Granted,
    /// Points granted by this batch's decisions (already in the shared
    /// issuance; taken out again if the batch fails).
    pub(super) issued_reserved: Granted,
    /// The last entries of the statement pages the batch filled (added to
    /// their rows).
    pub(super) pages: Vec<(Vec<u8>, Vec<u8>)>,
    /// Records read that every reader skips, and why (noted in the views).
    pub(super) quarantined: Quarantined,
    /// Claims and releases read, with the arbitration after each (noted in
    /// the views).
    pub(super) arbiters: Vec<(Position, crate::log::arbiter::Arbiter)>,
    /// How far the level re-evaluation walked (rows of the due column family).
    pub(super) levels_progress: super::reevaluate::Rows,
    /// The accounts the walk ticked: their due instant is put in the index
    /// afresh (the rules it follows changed).
    pub(super) evaluated: Vec<AccountKey>,
}

/// Records read that every reader skips (ARCHITECTURE.md, "A record no
/// reader can use"), and why.
pub(super) type Quarantined = Vec<(Position, String)>;

/// An account as a batch sees it.
pub(super) struct Touched {
    /// When something in it fell due before the batch (for the due index).
    pub(super) due_before: Option<Millis>,
    /// The same after the batch (set at commit).
    pub(super) due_after: Option<Millis>,
    pub(super) account: Account,
    /// What events changed (only that is written back).
    pub(super) changed: accounts::Changed,
    /// The last page of its statement, while it has room.
    pub(super) page: Option<Tail>,
    /// Its one row as last committed, when at hand (see [`Kept`]'s).
    pub(super) row: Option<Box<[u8]>>,
}

/// The idempotency record of a command's reply: the fingerprint, the
/// record's offset and the balance after it (a retry's reply is rebuilt from
/// the record); on a shared log the whole reply, as reading one record back
/// there takes a consumer of its own (and the broker's time).
pub(super) fn request_row(shared: bool, fingerprint: u64, reply: &Reply) -> Vec<u8> {
    if shared {
        snapshot::encode_stored_reply(fingerprint, reply)
    } else {
        snapshot::encode_request(fingerprint, reply.position.offset, &reply.balance)
    }
}

impl PartitionWriter {
    /// The idempotency record of a record's reply, as (key, row).
    pub(super) fn request(&self, record: &AccountRecord, reply: &Reply) -> (Vec<u8>, Vec<u8>) {
        let key = store::request_key(&record.account, &record.request_id);
        (key, request_row(self.log.shared(), record.fingerprint, reply))
    }

    /// Adds a record's statement entries (with the balance after each
    /// event) to its account's pages; the pages it fills go to `pages`.
    pub(super) fn add_entries(
        touched: &mut Touched,
        record: &AccountRecord,
        position: Position,
        balances: &[Balance],
        pages: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) {
        for (i, (event, balance)) in record.events.iter().zip(balances).enumerate() {
            let entry = projection::statement_entry(record, position, i as u16, event.clone(), balance);
            let at = EntryPlace { offset: position.offset, index: i as u16 };
            if let Some(page) = projection::push_entry(&mut touched.page, &record.account, at, entry) {
                pages.push(page);
            }
        }
    }

    /// An account as of the last committed batch, taken out of the cache
    /// (a batch that commits puts it back; one that fails leaves the store's).
    fn load(&mut self, key: &AccountKey) -> Result<Kept, store::StoreError> {
        if let Some(kept) = self.cache.take(key) {
            return Ok(kept);
        }
        let (account, changed, page) = accounts::load_with_tail(&self.store, Cf::Accounts, key)?;
        let due = domain::due_at(&account, self.programme(key).as_deref());
        Ok(Kept { account, due, changed, page, recent: false, row: None })
    }

    pub(super) fn account<'w>(
        &mut self,
        work: &'w mut Work,
        key: &AccountKey,
    ) -> Result<&'w mut Touched, store::StoreError> {
        if !work.accounts.contains_key(key) {
            let Kept { account, due, changed, page, row, .. } = self.load(key)?;
            let touched = Touched { due_before: due, due_after: due, account, changed, page, row };
            work.accounts.insert(key.clone(), touched);
        }
        Ok(work.accounts.get_mut(key).expect("just inserted"))
    }

    /// Folds accepted events into a touched account; returns its balance
    /// after each event, and after them all.
    pub(super) fn fold(touched: &mut Touched, events: &[domain::Event]) -> (Vec<Balance>, Balance) {
        let mut balances = Vec::with_capacity(events.len());
        for e in events {
            touched.account.apply(e);
            touched.changed.note(e);
            balances.push(Balance::of(&touched.account));
        }
        (balances, Balance::of(&touched.account))
    }

    /// Writes a batch's state (the writer's and the views') with the cursor
    /// it reflects, atomically, and tells the queries it is there.
    pub(super) fn commit(&mut self, mut work: Work) -> Result<(), store::StoreError> {
        let mut batch = Batch::default();
        let mut rows = Vec::new();
        for (key, t) in work.accounts.iter_mut().filter(|(_, t)| !t.changed.is_empty()) {
            let first = rows.len();
            projection::view_rows(key, &t.account, &t.changed, t.page.as_mut(), &mut rows);
            // An account stored as one row: that row is what the cache keeps of it.
            t.row = match rows.get(first) {
                Some((Cf::Accounts, _, Some(row))) if accounts::fits_one_row(&t.account) => Some(row.as_slice().into()),
                _ => None,
            };
            t.due_after = domain::due_at(&t.account, self.programme(key).as_deref());
            if t.due_before != t.due_after {
                if let Some(at) = t.due_before {
                    batch.delete(Cf::Due, &store::due_key(self.partition, at, key));
                }
                if let Some(at) = t.due_after {
                    batch.put(Cf::Due, &store::due_key(self.partition, at, key), &[]);
                }
            }
        }
        for (cf, k, v) in rows {
            batch.view_row(cf, k, v);
        }
        for (k, v) in std::mem::take(&mut work.pages) {
            batch.append_vec(Cf::Entries, k, v);
        }
        for (k, v) in std::mem::take(&mut work.levels_progress) {
            batch.put(Cf::Due, &k, &v);
        }
        self.evaluated_due(&work, &mut batch);
        for (row, key) in &work.ticked {
            batch.delete(Cf::Due, row);
            if let Some(t) = work.accounts.get_mut(key) {
                if t.changed.is_empty() {
                    // Nothing fell due after all (the rules behind the row changed).
                    t.due_after = domain::due_at(&t.account, self.programme(key).as_deref());
                }
                if let Some(at) = t.due_after {
                    batch.put(Cf::Due, &store::due_key(self.partition, at, key), &[]);
                }
            }
        }
        let mut issued = work.issued_reserved.clone();
        for (k, v) in &work.issued_folded {
            *issued.entry(k.clone()).or_default() += v;
        }
        for ((p, day), v) in issued.iter_mut() {
            *v += self.issued_in_partition(p, *day);
            batch.put(Cf::Issuance, &issued_key(self.partition, p, *day), &store::points_row(*v));
        }
        for (key, row) in std::mem::take(&mut work.requests) {
            batch.put_vec(Cf::Requests, key, row);
        }
        for (at, why) in &work.quarantined {
            projection::quarantine(&mut batch, "writer", *at, why);
        }
        for (at, arbiter) in &work.arbiters {
            projection::note_arbiter(&mut batch, *at, arbiter);
        }
        store::put_cursor(&mut batch, self.partition, &self.cursor);
        self.store.write(batch)?;
        self.issued.extend(issued);
        self.issuance.add(&work.issued_folded, 1);
        let (p, next) = (self.partition as usize, self.cursor.next);
        self.positions.send_if_modified(|v| std::mem::replace(&mut v[p], next) != next);
        let arbiter = &self.cursor.arbiter;
        if self.owners.read().expect("owners lock")[p] != *arbiter {
            self.owners.write().expect("owners lock")[p] = arbiter.clone();
        }
        let kept = work.accounts.into_iter().map(|(key, t)| {
            let changed = t.changed.written(&t.account);
            (key, Kept { account: t.account, due: t.due_after, changed, page: t.page, recent: true, row: t.row })
        });
        self.cache.put_back(kept.collect());
        self.observed.cached(self.cache.size());
        Ok(())
    }

    /// The level re-evaluation's progress of a batch that wrote no record.
    pub(super) fn write_levels_progress(&mut self, work: &mut Work) -> Result<(), store::StoreError> {
        if work.levels_progress.is_empty() && work.evaluated.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        for (k, v) in std::mem::take(&mut work.levels_progress) {
            batch.put(Cf::Due, &k, &v);
        }
        self.evaluated_due(work, &mut batch);
        self.store.write(batch)
    }

    /// The due rows of the accounts the walk ticked that nothing changed:
    /// their due instant under the rules now (a row of the old instant, if
    /// any, is taken up when it falls due and finds nothing).
    fn evaluated_due(&self, work: &Work, batch: &mut Batch) {
        for key in &work.evaluated {
            let Some(t) = work.accounts.get(key).filter(|t| t.changed.is_empty()) else { continue };
            if let Some(at) = domain::due_at(&t.account, self.programme(key).as_deref()) {
                batch.put(Cf::Due, &store::due_key(self.partition, at, key), &[]);
            }
        }
    }
}
