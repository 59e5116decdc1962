//! How an account is kept in the `accounts` column family (the writers'
//! state and the balance view alike).
//!
//! A small account is one row at the account's key: the whole account, its
//! lots, earns, spends and reservations included. Most members have a few of
//! each, and one row per command is what a command costs to store at the
//! least (a row through a memtable is the dearest thing a command does).
//!
//! Once an account holds more than [`INLINE_PIECES_MAX`] pieces, it is a
//! header row at the account's key and one row per lot, earn, spend and
//! reservation at the key, a tag byte and the piece's id. A command names
//! every piece it changes (the lots that paid, the spend, the earn), so a
//! batch writes the header and those pieces only: what a command costs to
//! store no longer grows with the member's history. Loading an account (on a
//! cache miss) reads the key's row, then, unless that row is the whole
//! account, its pieces with one prefix scan.
//!
//! How an account is stored depends on the account alone (so a rebuild
//! writes the same rows as the live fold): the write that takes it past
//! [`INLINE_PIECES_MAX`] puts every piece and a header without lists. Pieces
//! are never taken out of an account, so that happens once and, for
//! accounts written by this code, never the other way; an account stored as
//! pieces by an earlier version while it is small goes back to one row when
//! it next changes (its maps name every piece row, which that write deletes).

use std::collections::BTreeSet;

use super::snapshot::{self as codec, Piece};
use crate::domain::{Account, AccountKey, Event, Id, Millis};
use crate::log::codec::CodecError;
use crate::store::packed::Packed;
use crate::store::{self, Cf, Db, Row, StoreError};

/// Pieces an account kept as one row holds at most. 32 rather than 12: at
/// 1,000,000 members most commands load their account from the database,
/// and a large account's load is a lookup and a prefix scan; the last minute
/// of a 10-minute run went from 0.45 to 0.53-0.54 of the first (BENCHMARKS.md).
pub const INLINE_PIECES_MAX: usize = 32;

/// How an account is stored, and the pieces of it changed since it was last
/// written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    /// Stored as one row (or not stored at all).
    inline: bool,
    /// Every piece is to be written (a rebuild).
    all: bool,
    pieces: BTreeSet<(Piece, Id)>,
    /// Whether events were folded at all (the header changes with each).
    any: bool,
}

// An account at rest as the writers keep it in memory once they let its
// decoded form go ([`kept_row`]): a row of a [`PackedSet`], found by `key`;
// its value a byte of flags (how it is stored, whether it has a due
// instant), the due instant, and the account's row (with its statement's
// last page) as stored.
const KEPT_INLINE: u8 = 1;
const KEPT_ALL: u8 = 2;
const KEPT_DUE: u8 = 4;
const KEPT_ROW_AT: usize = 1 + 8;

/// An account at rest kept as its stored `row`, with its due instant and
/// how it is stored; `None` when it has changes not written.
pub fn kept_row(key: &[u8], changed: &Changed, due: Option<Millis>, row: &[u8]) -> Option<Packed> {
    let (inline, all) = changed.at_rest()?;
    let flags = [(inline, KEPT_INLINE), (all, KEPT_ALL), (due.is_some(), KEPT_DUE)];
    let flags = flags.iter().filter(|(on, _)| *on).fold(0, |f, (_, bit)| f | bit);
    Some(Packed::new(key, &[&[flags], &due.unwrap_or(0).to_le_bytes(), row]))
}

/// What [`kept_row`] kept: how the account is stored, its due instant and
/// its row; `None` when the value is too short to be one.
pub fn read_kept_row(kept: &Packed) -> Option<(Changed, Option<Millis>, &[u8])> {
    let v = kept.value();
    let flags = *v.first()?;
    let due = i64::from_le_bytes(v.get(1..KEPT_ROW_AT)?.try_into().ok()?);
    let changed = Changed::from_rest(flags & KEPT_INLINE != 0, flags & KEPT_ALL != 0);
    Some((changed, (flags & KEPT_DUE != 0).then_some(due), &v[KEPT_ROW_AT..]))
}

impl Default for Changed {
    /// An account not stored yet: nothing changed.
    fn default() -> Changed {
        Changed { inline: true, all: false, pieces: BTreeSet::new(), any: false }
    }
}

impl Changed {
    /// The same account, stored as it is, with every piece to be written
    /// when it is next written (a rebuild, which does not note pieces).
    pub fn everything(&self) -> Changed {
        Changed { inline: self.inline, all: true, pieces: BTreeSet::new(), any: false }
    }

    /// Nothing changed since `a` was written as [`rows`] said (or, when
    /// nothing had changed, left as it is stored).
    pub fn written(&self, a: &Account) -> Changed {
        let inline = if self.any { fits_one_row(a) } else { self.inline };
        Changed { inline, all: self.all, pieces: BTreeSet::new(), any: false }
    }

    /// Whether the account is stored as one row.
    pub fn is_inline(&self) -> bool {
        self.inline
    }

    /// What an account at rest (nothing changed since it was written) keeps
    /// of it: whether it is stored as one row, and whether every piece is
    /// to be written next time; `None` when something changed.
    pub fn at_rest(&self) -> Option<(bool, bool)> {
        (!self.any && self.pieces.is_empty()).then_some((self.inline, self.all))
    }

    /// The account at rest that [`Changed::at_rest`] gave.
    fn from_rest(inline: bool, all: bool) -> Changed {
        Changed { inline, all, pieces: BTreeSet::new(), any: false }
    }

    pub fn is_empty(&self) -> bool {
        !self.any
    }

    /// Notes the pieces `event` changes.
    pub fn note(&mut self, event: &Event) {
        self.any = true;
        if self.all {
            return;
        }
        let set = &mut self.pieces;
        let mut piece = |p: Piece, id: &str| {
            set.insert((p, Id::of(id)));
        };
        match event {
            Event::PointsEarned { lot_id, .. } => {
                piece(Piece::Lot, lot_id);
                piece(Piece::Earn, lot_id);
            }
            Event::PointsSpent { spend_id, lots, .. } | Event::SpendRefunded { spend_id, lots, .. } => {
                piece(Piece::Spend, spend_id);
                lots.iter().for_each(|l| piece(Piece::Lot, &l.lot_id));
            }
            Event::PointsReserved { reservation_id, lots, .. }
            | Event::ReservationReleased { reservation_id, lots, .. } => {
                piece(Piece::Reservation, reservation_id);
                lots.iter().for_each(|l| piece(Piece::Lot, &l.lot_id));
            }
            Event::ReservationCaptured { reservation_id, spend_id, lots, released_lots, .. } => {
                piece(Piece::Reservation, reservation_id);
                piece(Piece::Spend, spend_id);
                lots.iter().chain(released_lots).for_each(|l| piece(Piece::Lot, &l.lot_id));
            }
            Event::EarnReversed { earn_id, taken, .. } => {
                piece(Piece::Earn, earn_id);
                taken.iter().for_each(|l| piece(Piece::Lot, &l.lot_id));
            }
            Event::PointsRecovered { lots, .. } => lots.iter().for_each(|l| piece(Piece::Lot, &l.lot_id)),
            Event::PointsExpired { lots, .. } => lots.iter().for_each(|l| piece(Piece::Lot, &l.lot_id)),
            Event::ExpiryReminderDue { lots, .. } => lots.iter().for_each(|l| piece(Piece::Lot, &l.lot_id)),
            Event::PendingPointsReleased { lots, .. } | Event::PendingPointsForfeited { lots, .. } => {
                lots.iter().for_each(|l| piece(Piece::Lot, &l.lot_id))
            }
            Event::AlertRaised { .. }
            | Event::EarningsHeld { .. }
            | Event::EarningsUnheld { .. }
            | Event::AdjustmentRequested { .. }
            | Event::AdjustmentApproved { .. }
            | Event::AdjustmentRejected { .. } => {}
            Event::PointsAdjusted { adjustment_id, lots, .. } => {
                piece(Piece::Lot, adjustment_id);
                lots.iter().for_each(|l| piece(Piece::Lot, &l.lot_id));
            }
            Event::GrowthExpired { earns, .. } => earns.iter().for_each(|e| piece(Piece::Earn, &e.lot_id)),
            Event::PenaltyApplied { taken, growth_earns, .. } => {
                taken.iter().for_each(|l| piece(Piece::Lot, &l.lot_id));
                growth_earns.iter().for_each(|e| piece(Piece::Earn, &e.lot_id));
            }
            Event::AccountFrozen { .. }
            | Event::AccountUnfrozen { .. }
            | Event::LevelChanged { .. }
            | Event::SettlementSetAside { .. }
            | Event::ActivityRecorded { .. }
            | Event::GrowthEvaluated { .. }
            | Event::LevelHeld { .. } => {}
            Event::GrowthAdjusted { adjustment_id, growth, earns, .. } => {
                if *growth > 0 {
                    piece(Piece::Earn, adjustment_id);
                }
                earns.iter().for_each(|e| piece(Piece::Earn, &e.lot_id));
            }
        }
    }

    /// The ids of the lots changed, or `None` for every lot.
    pub fn lots(&self) -> Option<impl Iterator<Item = &Id>> {
        (!self.all).then(|| self.pieces.iter().filter(|(p, _)| *p == Piece::Lot).map(|(_, id)| id))
    }
}

/// The first key after an account's row and its piece rows (every piece
/// tag is below 0xff).
pub fn after_account_rows(account: &AccountKey) -> Vec<u8> {
    let mut k = super::account_key(account);
    k.push(0xff);
    k
}

/// The key of one piece row.
pub fn piece_key(account: &[u8], piece: Piece, id: &Id) -> Vec<u8> {
    let mut k = Vec::with_capacity(account.len() + 1 + id.len());
    k.extend_from_slice(account);
    k.push(piece.tag());
    id.with_str(|s| k.extend_from_slice(s.as_bytes()));
    k
}

fn piece_count(a: &Account) -> usize {
    a.lots.len() + a.earns.len() + a.spends.len() + a.reservations.len()
}

/// Whether `a` is stored as one row.
pub fn fits_one_row(a: &Account) -> bool {
    piece_count(a) <= INLINE_PIECES_MAX
}

/// The rows that store what `changed` names of `a`, in key order, as (key,
/// value or `None` to delete): the whole account in one row while it is
/// small, else the header and each changed piece it has (every piece when it
/// moves from one row to pieces).
pub fn rows(key: &AccountKey, a: &Account, changed: &Changed) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    rows_with(key, a, changed, None)
}

/// [`rows`], with the last page of the account's statement in its row (the
/// views' accounts).
pub fn rows_with(
    key: &AccountKey,
    a: &Account,
    changed: &Changed,
    tail: Option<&codec::Tail>,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let prefix = store::account_key(key);
    if fits_one_row(a) {
        let mut out = vec![(prefix.clone(), Some(codec::encode_account_with(a, tail)))];
        if !changed.inline {
            // Stored as pieces (by an earlier version): the maps name every
            // piece row, as pieces are never taken out of an account.
            let mut delete = |p: Piece, id: &Id| out.push((piece_key(&prefix, p, id), None));
            a.lots.keys().for_each(|id| delete(Piece::Lot, id));
            a.earns.keys().for_each(|id| delete(Piece::Earn, id));
            a.spends.keys().for_each(|id| delete(Piece::Spend, id));
            a.reservations.keys().for_each(|id| delete(Piece::Reservation, id));
            out.sort_unstable_by(|x, y| x.0.cmp(&y.0));
        }
        return out;
    }
    let mut out = Vec::with_capacity(1 + changed.pieces.len());
    out.push((prefix.clone(), Some(codec::encode_account_header_with(a, tail))));
    if changed.all || changed.inline {
        codec::encode_every_piece(a, |p, id, v| out.push((piece_key(&prefix, p, id), Some(v))));
    } else {
        for (p, id) in &changed.pieces {
            if let Some(v) = codec::encode_piece(a, *p, id) {
                out.push((piece_key(&prefix, *p, id), Some(v)));
            }
        }
    }
    out.sort_unstable_by(|x, y| x.0.cmp(&y.0));
    out
}

/// An account from its rows (the header first, then its pieces, as a prefix
/// scan returns them), and how it is stored (nothing changed yet).
pub fn decode(prefix_len: usize, rows: &[Row]) -> Result<(Account, Changed), CodecError> {
    match rows.split_first() {
        Some(((_, header), pieces)) => decode_parts(prefix_len, codec::decode_account(header)?, pieces),
        None => Ok((Account::default(), Changed::default())),
    }
}

/// `a` is a header as `codec::decode_account*` gives it (counted).
fn decode_parts(prefix_len: usize, mut a: Account, pieces: &[Row]) -> Result<(Account, Changed), CodecError> {
    // One row is the whole account; pieces are only ever written with a
    // header without lists.
    let changed = Changed { inline: pieces.is_empty(), ..Changed::default() };
    for (k, v) in pieces {
        let (&tag, id) = k.get(prefix_len..).and_then(<[u8]>::split_first).ok_or(CodecError::Missing("piece tag"))?;
        let piece = Piece::from_tag(tag).ok_or(CodecError::Missing("known piece tag"))?;
        let id = std::str::from_utf8(id).map_err(|_| CodecError::Missing("utf-8 piece id"))?;
        codec::decode_piece_into(&mut a, piece, Id::of(id), v)?;
    }
    if !pieces.is_empty() {
        // The header came counted.
        a.recount();
    }
    Ok((a, changed))
}

/// Whether `cf` of `db` has the account (one point read).
pub fn exists(db: &Db, cf: Cf, key: &AccountKey) -> Result<bool, StoreError> {
    Ok(db.get(cf, &store::account_key(key))?.is_some())
}

/// Loads an account from `cf` of `db` (the default account when it has no rows).
pub fn load(db: &Db, cf: Cf, key: &AccountKey) -> Result<(Account, Changed), StoreError> {
    load_with_tail(db, cf, key).map(|(a, c, _)| (a, c))
}

/// [`load`], and the last page of the account's statement its row keeps.
pub fn load_with_tail(
    db: &Db,
    cf: Cf,
    key: &AccountKey,
) -> Result<(Account, Changed, Option<codec::Tail>), StoreError> {
    let prefix = store::account_key(key);
    // A point lookup first: the bloom filters answer "no such account" (a
    // member's first command) without the seek through every level a scan
    // makes. Pieces are only ever written with their header.
    let Some(header) = db.get(cf, &prefix)? else {
        return Ok((Account::default(), Changed::default(), None));
    };
    let (header, tail) = codec::decode_account_with_tail(&header)?;
    if codec::header_has_lists(&header) {
        // The whole account in one row: it has no pieces.
        let (a, changed) = decode_parts(prefix.len(), header, &[])?;
        return Ok((a, changed, tail));
    }
    // Then the pieces: every key after the header's that starts with it.
    let mut after = prefix.clone();
    after.push(0);
    let pieces = db.scan(cf, &prefix, &after, usize::MAX)?;
    let (a, changed) = decode_parts(prefix.len(), header, &pieces)?;
    Ok((a, changed, tail))
}

/// Every account in `rows` (a column family's rows in key order), whole.
pub fn each(
    rows: impl Iterator<Item = Result<Row, StoreError>>,
) -> impl Iterator<Item = Result<(AccountKey, Account), StoreError>> {
    Each { rows: rows.peekable() }
}

struct Each<I: Iterator<Item = Result<Row, StoreError>>> {
    rows: std::iter::Peekable<I>,
}

impl<I: Iterator<Item = Result<Row, StoreError>>> Iterator for Each<I> {
    type Item = Result<(AccountKey, Account), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let first = match self.rows.next()? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let Some((key, rest)) = store::parse_account_key(&first.0) else {
            return Some(Err(CodecError::Missing("account key").into()));
        };
        if !rest.is_empty() {
            return Some(Err(CodecError::Missing("account header").into()));
        }
        let prefix = first.0.clone();
        let mut group = vec![first];
        while let Some(Ok((k, _))) = self.rows.peek() {
            if k.len() <= prefix.len() || !k.starts_with(&prefix) {
                break;
            }
            match self.rows.next() {
                Some(Ok(r)) => group.push(r),
                _ => unreachable!("peeked"),
            }
        }
        Some(decode(prefix.len(), &group).map(|(a, _)| (key, a)).map_err(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{decide, Command, CommandBody, LotAmount, Programme};
    use crate::store::Batch;

    const T0: i64 = 1_773_100_800_000;
    const DAY: i64 = 86_400_000;

    #[test]
    fn a_kept_row_gives_back_how_the_account_is_stored_its_due_instant_and_its_row() {
        for (inline, all, due) in [(true, false, Some(-7)), (false, true, None), (true, true, Some(i64::MAX))] {
            let changed = Changed::from_rest(inline, all);
            let kept = kept_row(b"key", &changed, due, b"the row").unwrap();
            let (back, due_back, row) = read_kept_row(&kept).unwrap();
            assert_eq!(
                (back.at_rest(), due_back, row, kept.key()),
                (Some((inline, all)), due, &b"the row"[..], &b"key"[..])
            );
        }
        let short = Packed::new(b"key", &[&[1, 2, 3]]);
        assert!(read_kept_row(&short).is_none(), "cut short");
        let mut changed = Changed::default();
        changed.note(&Event::AccountFrozen {
            earning: true,
            spending: false,
            operator: "o".into(),
            reason: "r".into(),
        });
        assert!(kept_row(b"key", &changed, None, b"row").is_none(), "changes not written");
    }

    /// Commands on one member that make every kind of piece and change each
    /// again later: lots with and without expiry, spends and their refunds,
    /// reservations captured and released, a reversal, adjustments.
    fn script() -> Vec<(String, CommandBody)> {
        let earn = |points, expires_at| CommandBody::Earn {
            points,
            reason: "purchase".into(),
            order_ref: None,
            growth: points / 10,
            expires_at,
        };
        let body = vec![
            ("e1", earn(500, Some(T0 + 30 * DAY))),
            ("e2", earn(300, None)),
            ("e3", earn(200, Some(T0 + 10 * DAY))),
            ("s1", CommandBody::Spend { points: 250, order_ref: None, order_cash_amount: None }),
            (
                "h1",
                CommandBody::Reserve {
                    points: 100,
                    order_ref: "o1".into(),
                    timeout_seconds: 600,
                    order_cash_amount: None,
                },
            ),
            (
                "h2",
                CommandBody::Reserve {
                    points: 50,
                    order_ref: "o2".into(),
                    timeout_seconds: 600,
                    order_cash_amount: None,
                },
            ),
            ("c1", CommandBody::Capture { reservation_id: "h1".into(), points: Some(80) }),
            ("r1", CommandBody::Release { reservation_id: "h2".into() }),
            ("f1", CommandBody::Refund { spend_id: "s1".into(), points: 100 }),
            ("v1", CommandBody::ReverseEarn { earn_id: "e2".into(), points: 50, growth: 5 }),
            ("a1", CommandBody::Adjust { points: 40, operator: "ops".into(), reason: "goodwill".into() }),
            ("a2", CommandBody::Adjust { points: -30, operator: "ops".into(), reason: "correction".into() }),
            ("s2", CommandBody::Spend { points: 120, order_ref: None, order_cash_amount: None }),
            ("f2", CommandBody::Refund { spend_id: "s2".into(), points: 20 }),
            ("e4", earn(70, Some(T0 + 5 * DAY))),
        ];
        // Enough small earns (a lot and an earn each) for more pieces than
        // one row keeps.
        let small = (0..INLINE_PIECES_MAX / 2).map(|i| (format!("x{i}"), earn(10, None)));
        body.into_iter().map(|(id, b)| (id.to_string(), b)).chain(small).collect()
    }

    /// Folds the script into `member`, writing the changed rows every
    /// `every` commands; returns the account as folded in memory.
    fn fold_and_write(db: &Db, member: &str, every: usize) -> Account {
        let programme = Programme::example("shop", "points");
        let key = AccountKey::new("shop", "points", member);
        let (mut account, mut changed) = (Account::default(), Changed::default());
        let mut accepted = 0;
        for (i, (id, body)) in script().into_iter().enumerate() {
            let cmd = Command { request_id: id, account: key.clone(), body, context: Default::default() };
            if let Ok(events) = decide(Some(&programme), &account, &cmd, T0 + i as i64 * 1000) {
                accepted += 1;
                for e in &events {
                    account.apply(e);
                    changed.note(e);
                }
            }
            if (i + 1) % every == 0 && !changed.is_empty() {
                let mut batch = Batch::default();
                rows(&key, &account, &changed).into_iter().for_each(|(k, v)| batch.put_or_delete(Cf::Accounts, k, v));
                db.write(batch).unwrap();
                changed = changed.written(&account);
            }
        }
        assert_eq!(accepted, script().len(), "every command of the script is accepted");
        // Growth leaving the window names earns only.
        let e = Event::GrowthExpired { earns: vec![LotAmount::new("e1", 10)], growth: 10 };
        account.apply(&e);
        changed.note(&e);
        let mut batch = Batch::default();
        rows(&key, &account, &changed).into_iter().for_each(|(k, v)| batch.put_or_delete(Cf::Accounts, k, v));
        db.write(batch).unwrap();
        account
    }

    #[test]
    fn the_rows_of_changed_pieces_add_up_to_the_account() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), store::VIEW_CFS).unwrap();
        // "m1" is a prefix of "m10": their rows must not mix.
        let one = fold_and_write(&db, "m1", 1);
        let ten = fold_and_write(&db, "m10", 4);
        assert_eq!(one, ten);
        assert!(
            one.spends[&Id::of("s1")].refundable() < 250
                && one.earns[&Id::of("e2")].reversed == 50
                && one.earns[&Id::of("e1")].growth_expired == 10
        );
        for member in ["m1", "m10"] {
            let (loaded, changed) = load(&db, Cf::Accounts, &AccountKey::new("shop", "points", member)).unwrap();
            assert_eq!(loaded, one);
            assert!(changed.is_empty());
        }
        let all: Vec<_> = each(db.rows(Cf::Accounts)).map(Result::unwrap).collect();
        assert_eq!(all.iter().map(|(k, _)| k.member_id.as_str()).collect::<Vec<_>>(), ["m1", "m10"]);
        assert!(all.iter().all(|(_, a)| a == &one));
        // One row per piece and a header per account.
        let pieces = one.lots.len() + one.earns.len() + one.spends.len() + one.reservations.len();
        assert_eq!(db.all(Cf::Accounts).unwrap().len(), 2 * (1 + pieces));
        // An unknown account loads as the empty one.
        assert_eq!(load(&db, Cf::Accounts, &AccountKey::new("shop", "points", "m2")).unwrap().0, Account::default());
    }

    fn earned(lot_id: &str) -> Event {
        Event::PointsEarned {
            lot_id: lot_id.into(),
            reason: "purchase".into(),
            order_ref: None,
            requested: 10,
            granted: 10,
            forfeited: 0,
            debt_repaid: 0,
            expires_at: None,
            growth: 1,
            day: 0,
            pending: false,
        }
    }

    #[test]
    fn a_small_account_is_one_row_until_it_outgrows_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), store::VIEW_CFS).unwrap();
        let key = AccountKey::new("shop", "points", "m1");
        let (mut a, mut changed) = load(&db, Cf::Accounts, &key).unwrap();
        assert!(changed.is_inline(), "an account not stored yet starts as one row");
        let mut rows_after = Vec::new();
        for i in 0..INLINE_PIECES_MAX {
            // Each earn adds a lot and an earn: two pieces.
            let e = earned(&format!("e{i:02}"));
            a.apply(&e);
            changed.note(&e);
            let mut batch = Batch::default();
            rows(&key, &a, &changed).into_iter().for_each(|(k, v)| batch.put_or_delete(Cf::Accounts, k, v));
            db.write(batch).unwrap();
            changed = changed.written(&a);
            rows_after.push(db.all(Cf::Accounts).unwrap().len());
            let (loaded, stored) = load(&db, Cf::Accounts, &key).unwrap();
            assert_eq!(loaded, a);
            assert_eq!(stored, changed, "loading tells how the account is stored, as the write left it");
        }
        let pieces = 2 * INLINE_PIECES_MAX;
        let moved = INLINE_PIECES_MAX / 2;
        // One row while the account has at most INLINE_PIECES_MAX pieces,
        // then a header and every piece.
        assert!(rows_after[..moved].iter().all(|&n| n == 1), "{rows_after:?}");
        assert_eq!(rows_after[moved], 1 + 2 * (moved + 1));
        assert_eq!(*rows_after.last().unwrap(), 1 + pieces);
        assert!(!changed.is_inline());
        let header = db.get(Cf::Accounts, &store::account_key(&key)).unwrap().unwrap();
        assert!(!codec::header_has_lists(&codec::decode_account(&header).unwrap()));
    }

    #[test]
    fn a_small_account_stored_as_pieces_goes_back_to_one_row_when_it_changes() {
        // As the version before one-row accounts wrote every account.
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), store::VIEW_CFS).unwrap();
        let key = AccountKey::new("shop", "points", "m1");
        let prefix = store::account_key(&key);
        let mut a = Account::default();
        for i in 0..3 {
            a.apply(&earned(&format!("e{i}")));
        }
        let mut batch = Batch::default();
        batch.put(Cf::Accounts, &prefix, &codec::encode_account_header(&a));
        codec::encode_every_piece(&a, |p, id, v| batch.put_vec(Cf::Accounts, piece_key(&prefix, p, id), v));
        db.write(batch).unwrap();
        assert_eq!(db.all(Cf::Accounts).unwrap().len(), 7);
        let (loaded, mut changed) = load(&db, Cf::Accounts, &key).unwrap();
        assert_eq!(loaded, a);
        assert!(!changed.is_inline());
        let e = earned("e3");
        a.apply(&e);
        changed.note(&e);
        let mut batch = Batch::default();
        rows(&key, &a, &changed).into_iter().for_each(|(k, v)| batch.put_or_delete(Cf::Accounts, k, v));
        db.write(batch).unwrap();
        assert_eq!(db.all(Cf::Accounts).unwrap().len(), 1, "one row, the pieces deleted");
        let (b, stored) = load(&db, Cf::Accounts, &key).unwrap();
        assert_eq!((b, &stored), (a.clone(), &changed.written(&a)));
        assert!(stored.is_inline());
    }

    #[test]
    fn a_large_account_in_one_row_moves_to_pieces_when_it_changes() {
        // As a header written before accounts had pieces, or by a build
        // with a larger INLINE_PIECES_MAX.
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), store::VIEW_CFS).unwrap();
        let whole = fold_and_write(&db, "m1", 3);
        let key = AccountKey::new("shop", "points", "legacy");
        let mut batch = Batch::default();
        batch.put(Cf::Accounts, &store::account_key(&key), &codec::encode_account(&whole));
        db.write(batch).unwrap();
        let (mut a, mut changed) = load(&db, Cf::Accounts, &key).unwrap();
        assert_eq!(a, whole);
        assert!(changed.is_inline() && piece_count(&a) > INLINE_PIECES_MAX);
        // Left unchanged, it stays as it is stored.
        assert!(changed.written(&a).is_inline());
        // The next change writes every piece, and a header without lists.
        let e = Event::AccountFrozen { earning: true, spending: false, operator: "ops".into(), reason: "x".into() };
        a.apply(&e);
        changed.note(&e);
        let mut batch = Batch::default();
        rows(&key, &a, &changed).into_iter().for_each(|(k, v)| batch.put_or_delete(Cf::Accounts, k, v));
        db.write(batch).unwrap();
        let (b, stored) = load(&db, Cf::Accounts, &key).unwrap();
        assert_eq!((b, &stored), (a.clone(), &changed.written(&a)));
        assert!(!stored.is_inline());
        let header = db.get(Cf::Accounts, &store::account_key(&key)).unwrap().unwrap();
        assert!(!codec::header_has_lists(&codec::decode_account(&header).unwrap()));
    }
}
