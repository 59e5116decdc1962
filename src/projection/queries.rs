//! What the API reads of the views: an account, its statement (paged, or
//! folded as of an instant), its level changes, and the lots expiring in a
//! programme. Returns domain types and stored rows; `api::convert` turns
//! them into what callers see.

use super::fold::{entry_key, parse_expiring_key};
use crate::domain::{Account, AccountKey, Millis};
use crate::log::codec::{self, CodecError};
use crate::proto::state;
use crate::store::{self, accounts, snapshot, Cf, Db, StoreError};

/// Events folded at most to answer an account as of an instant.
pub const AS_OF_EVENTS_MAX: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored row unreadable: {0}")]
    Codec(#[from] CodecError),
    /// `as_of` would fold more than [`AS_OF_EVENTS_MAX`] events.
    #[error(
        "the account has more than {AS_OF_EVENTS_MAX} events before that time: use `points-ledger explain --as-of`"
    )]
    HistoryTooLong,
}

/// Where a statement row sits: its record's offset and the event's index
/// in the record (a page token names the last one returned).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryAt {
    pub offset: u64,
    pub index: u16,
}

impl EntryAt {
    /// The 10 bytes a page token carries.
    pub fn to_bytes(self) -> Vec<u8> {
        let mut b = self.offset.to_be_bytes().to_vec();
        b.extend_from_slice(&self.index.to_be_bytes());
        b
    }

    /// A page token back (the same 10 bytes end an entry's key).
    pub fn from_bytes(b: &[u8]) -> Option<EntryAt> {
        EntryAt::of_key(0, b)
    }

    fn of_key(prefix_len: usize, key: &[u8]) -> Option<EntryAt> {
        let (offset, index) = store::views::entry_place(prefix_len, key)?;
        Some(EntryAt { offset, index })
    }
}

/// The account as the balance view has it.
pub fn account(views: &Db, key: &AccountKey) -> Result<Account, StoreError> {
    accounts::load(views, Cf::Accounts, key).map(|(a, _)| a)
}

/// Whether the balance view has the account.
pub fn account_exists(views: &Db, key: &AccountKey) -> Result<bool, StoreError> {
    accounts::exists(views, Cf::Accounts, key)
}

/// Statement rows one read takes at most.
const STATEMENT_ROWS_PER_READ: usize = 64;

/// The entries of one statement row (a page, or a single entry of an older
/// build, whose place in its record is in its key), with where each sits.
fn row_entries(
    prefix_len: usize,
    key: &[u8],
    value: &[u8],
) -> Result<Vec<(EntryAt, state::StatementEntry)>, QueryError> {
    let entries = snapshot::decode_statement_row(value)?;
    let keyed = EntryAt::of_key(prefix_len, key);
    let single = entries.len() == 1;
    Ok(entries
        .into_iter()
        .map(|e| {
            let index = match keyed {
                Some(k) if single && e.index == 0 => k.index,
                _ => e.index as u16,
            };
            (EntryAt { offset: e.position.as_ref().map_or(0, |p| p.offset), index }, e)
        })
        .collect())
}

/// Reads an account's statement in order from the row holding the entry
/// after `after` (from the start without), handing each later entry to
/// `take` until it says stop (false) or the statement ends. Returns whether
/// it stopped before the end.
fn read_statement(
    views: &Db,
    key: &AccountKey,
    after: Option<EntryAt>,
    mut take: impl FnMut(EntryAt, state::StatementEntry) -> Result<bool, QueryError>,
) -> Result<bool, QueryError> {
    let prefix = store::account_key(key);
    let mut start = match after {
        None => prefix.clone(),
        // The last row at or before it holds the entry (a page's key is
        // its first entry's).
        Some(a) => {
            let at = entry_key(key, a.offset, a.index);
            views.seek_prev(Cf::Entries, &prefix, &at)?.map_or(prefix.clone(), |(k, _)| k)
        }
    };
    loop {
        let rows = views.scan(Cf::Entries, &prefix, &start, STATEMENT_ROWS_PER_READ)?;
        for (k, v) in &rows {
            for (at, e) in row_entries(prefix.len(), k, v)? {
                if after.is_some_and(|a| at <= a) {
                    continue;
                }
                if !take(at, e)? {
                    return Ok(true);
                }
            }
        }
        match rows.last() {
            Some((k, _)) if rows.len() == STATEMENT_ROWS_PER_READ => {
                start = k.clone();
                start.push(0);
            }
            _ => break,
        }
    }
    Ok(false)
}

/// The account as of an instant, folded from its statement (at most
/// [`AS_OF_EVENTS_MAX`] events).
pub fn account_as_of(views: &Db, key: &AccountKey, as_of: Millis) -> Result<Account, QueryError> {
    let mut account = Account::default();
    let mut folded = 0;
    read_statement(views, key, None, |_, entry| {
        let at = entry.at.as_ref().and_then(codec::instant_millis).unwrap_or(0);
        if at > as_of {
            return Ok(false);
        }
        if folded == AS_OF_EVENTS_MAX {
            return Err(QueryError::HistoryTooLong);
        }
        account.apply(&codec::event_from_wire(entry.event.ok_or(CodecError::Missing("event"))?)?);
        folded += 1;
        Ok(true)
    })?;
    Ok(account)
}

/// Up to `size` statement entries after `after` (from the first without),
/// and whether more follow.
pub fn entries(
    views: &Db,
    key: &AccountKey,
    after: Option<EntryAt>,
    size: usize,
) -> Result<(Vec<(EntryAt, state::StatementEntry)>, bool), QueryError> {
    let mut out = Vec::with_capacity(size);
    let more = read_statement(views, key, after, |at, e| {
        if out.len() == size {
            return Ok(false);
        }
        out.push((at, e));
        Ok(true)
    })?;
    Ok((out, more))
}

/// A page of an account's level changes: up to `size` entries holding a
/// `LevelChanged` after `after`, reading at most `scan_entries_max`
/// statement entries. Returns them, the last entry read and whether the
/// statement was read to its end.
pub fn level_changes(
    views: &Db,
    key: &AccountKey,
    after: Option<EntryAt>,
    size: usize,
    scan_entries_max: usize,
) -> Result<(Vec<state::StatementEntry>, Option<EntryAt>, bool), QueryError> {
    let (mut changes, mut scanned, mut last) = (Vec::new(), 0, None);
    let stopped = read_statement(views, key, after, |at, entry| {
        if changes.len() == size || scanned == scan_entries_max {
            return Ok(false);
        }
        scanned += 1;
        last = Some(at);
        let is_change = matches!(
            entry.event.as_ref().and_then(|e| e.event.as_ref()),
            Some(crate::proto::log::ledger_event::Event::LevelChanged(_))
        );
        if is_change {
            changes.push(entry);
        }
        Ok(true)
    })?;
    Ok((changes, last, !stopped))
}

/// A lot expiring within a window, from the expiry index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiringLot {
    pub member_id: String,
    pub lot_id: String,
    pub points: i64,
    pub expires_at: Millis,
}

/// Up to `size` lots of a programme expiring in `(from, until]`, in expiry
/// order, after the index key suffix `after` (a page token) when given;
/// with the suffix of the last one and whether more follow.
pub fn expiring(
    views: &Db,
    tenant: &str,
    programme: &str,
    after: Option<&[u8]>,
    from: Millis,
    until: Millis,
    size: usize,
) -> Result<(Vec<ExpiringLot>, Vec<u8>, bool), QueryError> {
    let prefix = store::programme_prefix(tenant, programme);
    let mut start = prefix.clone();
    match after {
        None => start.extend_from_slice(&store::millis_key(from.saturating_add(1))),
        Some(a) => {
            start.extend_from_slice(a);
            start.push(0); // strictly after the last key returned
        }
    }
    let rows = views.scan(Cf::Expiring, &prefix, &start, size + 1)?;
    let (mut lots, mut last, mut more) = (Vec::new(), Vec::new(), false);
    for (k, v) in rows {
        let (member_id, at, lot_id) =
            parse_expiring_key(prefix.len(), &k).ok_or(CodecError::Missing("expiring key"))?;
        if at > until {
            break;
        }
        if lots.len() == size {
            more = true;
            break;
        }
        let points = store::views::expiring_points(&v)?;
        lots.push(ExpiringLot { member_id, lot_id, points, expires_at: at });
        last = k[prefix.len()..].to_vec();
    }
    Ok((lots, last, more))
}
