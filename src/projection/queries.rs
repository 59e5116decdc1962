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

    pub fn from_bytes(b: &[u8]) -> Option<EntryAt> {
        if b.len() != 10 {
            return None;
        }
        Some(EntryAt {
            offset: u64::from_be_bytes(b[..8].try_into().ok()?),
            index: u16::from_be_bytes(b[8..].try_into().ok()?),
        })
    }

    fn of_key(prefix_len: usize, key: &[u8]) -> Option<EntryAt> {
        EntryAt::from_bytes(key.get(prefix_len..)?)
    }
}

/// The account as the balance view has it.
pub fn account(views: &Db, key: &AccountKey) -> Result<Account, StoreError> {
    accounts::load(views, Cf::Accounts, key).map(|(a, _)| a)
}

/// The account as of an instant, folded from its statement.
pub fn account_as_of(views: &Db, key: &AccountKey, as_of: Millis) -> Result<Account, QueryError> {
    let prefix = store::account_key(key);
    let rows = views.scan(Cf::Entries, &prefix, &prefix, AS_OF_EVENTS_MAX)?;
    let mut account = Account::default();
    for (_, v) in rows {
        let entry = snapshot::decode_statement_entry(&v)?;
        let at = entry.at.as_ref().and_then(codec::instant_millis).unwrap_or(0);
        if at > as_of {
            break;
        }
        let event = codec::event_from_wire(entry.event.ok_or(CodecError::Missing("event"))?)?;
        account.apply(&event);
    }
    Ok(account)
}

/// The first statement key at or after the row following `after`.
fn start_after(key: &AccountKey, after: Option<EntryAt>) -> Vec<u8> {
    match after {
        None => store::account_key(key),
        Some(a) => match a.index.checked_add(1) {
            Some(i) => entry_key(key, a.offset, i),
            None => entry_key(key, a.offset + 1, 0),
        },
    }
}

/// Up to `size` statement rows after `after` (from the first without), and
/// whether more follow.
pub fn entries(
    views: &Db,
    key: &AccountKey,
    after: Option<EntryAt>,
    size: usize,
) -> Result<(Vec<(EntryAt, state::StatementEntry)>, bool), QueryError> {
    let prefix = store::account_key(key);
    let rows = views.scan(Cf::Entries, &prefix, &start_after(key, after), size + 1)?;
    let more = rows.len() > size;
    let mut out = Vec::with_capacity(size.min(rows.len()));
    for (k, v) in rows.into_iter().take(size) {
        let at = EntryAt::of_key(prefix.len(), &k).ok_or(CodecError::Missing("statement key"))?;
        out.push((at, snapshot::decode_statement_entry(&v)?));
    }
    Ok((out, more))
}

/// A page of an account's level changes: up to `size` rows holding a
/// `LevelChanged` after `after`, reading at most `scan_rows_max` statement
/// rows (in chunks of `chunk_rows`). Returns the rows, the last row read
/// and whether the statement was read to its end.
pub fn level_changes(
    views: &Db,
    key: &AccountKey,
    after: Option<EntryAt>,
    size: usize,
    scan_rows_max: usize,
    chunk_rows: usize,
) -> Result<(Vec<state::StatementEntry>, Option<EntryAt>, bool), QueryError> {
    let prefix = store::account_key(key);
    let mut start = start_after(key, after);
    let (mut changes, mut scanned, mut last) = (Vec::new(), 0, None);
    while changes.len() < size && scanned < scan_rows_max {
        let rows = views.scan(Cf::Entries, &prefix, &start, chunk_rows)?;
        let chunk_was_full = rows.len() == chunk_rows;
        for (k, v) in rows {
            scanned += 1;
            let entry = snapshot::decode_statement_entry(&v)?;
            let is_change = matches!(
                entry.event.as_ref().and_then(|e| e.event.as_ref()),
                Some(crate::proto::log::ledger_event::Event::LevelChanged(_))
            );
            if is_change {
                changes.push(entry);
            }
            start = k.clone();
            start.push(0);
            last = EntryAt::of_key(prefix.len(), &k);
            if changes.len() == size {
                break;
            }
        }
        if !chunk_was_full && changes.len() < size {
            return Ok((changes, last, true));
        }
    }
    Ok((changes, last, false))
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
        let points =
            i64::from_be_bytes(v.get(..8).and_then(|b| b.try_into().ok()).ok_or(CodecError::Missing("points"))?);
        lots.push(ExpiringLot { member_id, lot_id, points, expires_at: at });
        last = k[prefix.len()..].to_vec();
    }
    Ok((lots, last, more))
}
