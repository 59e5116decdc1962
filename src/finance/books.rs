//! Finance reconciliation: daily books per programme, folded from the log.
//!
//! The reconciliation consumer reads the account partitions with its own
//! positions (the `meta` column family of its own database, `books/`) and
//! keeps one *partial book* per programme, partition and programme day: the
//! movements of that day's records in that partition, the balances they lead
//! to, and a hash chain over the records. A day's book is the sum of its
//! partials; a partition without records that day contributes its latest
//! closing balance as both opening and closing.
//!
//! Balances are available + reserved (points), debt is apart. The books
//! balance when `opening - opening_debt + issued - spent + refunded -
//! reversed - expired + adjusted_up - adjusted_down = closing - debt`; the
//! movements come from the events' headline amounts, the balances from the
//! lot amounts, so the identity checks the events against each other. The other check compares
//! the running closing balance and debt with the sums of the balance view at
//! exactly the same log position ([`check_against_views`]): the consumer
//! folds only up to where the views stand, so the two can be compared.
//!
//! Days: a record counts for the programme day of its decision time in the
//! programme's time zone (the rules of the version it was decided under),
//! but never for a day before one its partition already reached for that
//! programme, so books only ever grow at the end, also across a writer
//! change with a clock a little behind. Replays give the same books.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

use super::risk::RiskFold;
use crate::domain::{calendar, AccountKey, Event, Points, ProgrammeKey};
use crate::hex;
use crate::log::arbiter::{report, Admitted, Arbiter, Home};
use crate::log::codec::CodecError;
use crate::log::record::{partition_for, AccountRecord, Balance, Position};
use crate::log::LogEntry;
use crate::programmes::Registry;
use crate::proto::state;
use crate::store::{self, Batch, Cf, Db};

#[derive(Debug, thiserror::Error)]
pub enum BooksError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("record at offset {offset}: {0}", offset = .1)]
    Codec(CodecError, u64),
    /// The control stream has not delivered this version yet; retry later.
    #[error("programme {0:?} version {1} is not known yet")]
    UnknownVersion(ProgrammeKey, u64),
    #[error("book arithmetic overflowed for {0:?}")]
    Overflow(ProgrammeKey),
}

pub use store::books::BOOKS_FORMAT;
use store::books::{book_key, book_partition_prefix, parse_book_key, BOOKS_FORMAT_KEY};

/// Opens the books of a data directory in this build's layout: the derived
/// rows of books an older build wrote are deleted (the consumer folds them
/// again from offset zero), the delivery state (`outbox`) stays.
pub fn open_books(dir: &std::path::Path) -> Result<Db, store::StoreError> {
    let books = Db::open(dir, store::BOOK_CFS)?;
    if books.get(Cf::Outbox, BOOKS_FORMAT_KEY)?.as_deref() != Some(BOOKS_FORMAT) {
        if books.get(Cf::Meta, &store::position_key(0))?.is_some() || books.get(Cf::Outbox, BOOKS_FORMAT_KEY)?.is_some()
        {
            tracing::warn!(dir = %dir.display(), "books written by an older build: folding them again from the log");
        }
        for cf in store::BOOK_DIGEST_CFS {
            books.clear(*cf)?;
        }
        let mut batch = Batch::default();
        batch.put(Cf::Outbox, BOOKS_FORMAT_KEY, BOOKS_FORMAT);
        books.write(batch)?;
    }
    Ok(books)
}

/// The latest partial of a partition at or before `day`, with its day.
pub fn partial_at_or_before(
    books: &Db,
    key: &ProgrammeKey,
    partition: u32,
    day: i64,
) -> Result<Option<(i64, state::DailyBook)>, BooksError> {
    let prefix = book_partition_prefix(&key.tenant_id, &key.programme_id, partition);
    let at = book_key(&key.tenant_id, &key.programme_id, partition, day);
    match books.seek_prev(Cf::Books, &prefix, &at)? {
        Some((k, v)) => {
            let book: state::DailyBook = store::decode_row(&v).map_err(|e| BooksError::Codec(e, 0))?;
            Ok(Some((parse_book_key(&k)?.2, book)))
        }
        None => Ok(None),
    }
}

/// The chain head before any record: 32 zero bytes.
fn chain_start() -> String {
    hex(&[0u8; 32])
}

/// One step of a partition's chain: sha256(previous head, offset, record).
fn chain_step(head: &str, offset: u64, payload: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(head.as_bytes());
    h.update(offset.to_be_bytes());
    h.update(payload);
    hex(&h.finalize())
}

/// A partial that opens where `previous` (an earlier day's) closed.
fn opening_partial(previous: Option<&state::DailyBook>, partition: u32) -> state::DailyBook {
    let mut b = state::DailyBook::default();
    if let Some(p) = previous {
        b.opening_balance = p.closing_balance;
        b.opening_debt = p.debt;
        b.closing_balance = p.closing_balance;
        b.debt = p.debt;
        b.reserved = p.reserved;
        b.opening_pending = p.pending;
        b.pending = p.pending;
    }
    b.partitions = vec![state::BookPartition { partition, chain: chain_start(), ..Default::default() }];
    b
}

/// The partials one fold is changing: (programme, partition) → (day, book).
type Open = HashMap<ProgrammeKey, (i64, state::DailyBook)>;

/// The figures of a partial that records move, apart from the partial, so
/// that a record's events are applied all or none (`None`: a sum would
/// overflow).
#[derive(Clone, Copy)]
struct Movements {
    issued: Points,
    spent: Points,
    refunded: Points,
    reversed: Points,
    written_off: Points,
    expired: Points,
    adjusted_up: Points,
    adjusted_down: Points,
    penalized: Points,
    closing_balance: Points,
    debt: Points,
    reserved: Points,
    pending: Points,
    pending_earned: Points,
    pending_released: Points,
    pending_forfeited: Points,
    spent_with_cash: Points,
    orders_points_only: u64,
    orders_with_cash: u64,
}

impl Movements {
    fn of(b: &state::DailyBook) -> Movements {
        Movements {
            issued: b.issued,
            spent: b.spent,
            refunded: b.refunded,
            reversed: b.reversed,
            written_off: b.written_off,
            expired: b.expired,
            adjusted_up: b.adjusted_up,
            adjusted_down: b.adjusted_down,
            penalized: b.penalized,
            closing_balance: b.closing_balance,
            debt: b.debt,
            reserved: b.reserved,
            pending: b.pending,
            pending_earned: b.pending_earned,
            pending_released: b.pending_released,
            pending_forfeited: b.pending_forfeited,
            spent_with_cash: b.spent_with_cash,
            orders_points_only: b.orders_points_only,
            orders_with_cash: b.orders_with_cash,
        }
    }

    fn write(self, b: &mut state::DailyBook) {
        b.issued = self.issued;
        b.spent = self.spent;
        b.refunded = self.refunded;
        b.reversed = self.reversed;
        b.written_off = self.written_off;
        b.expired = self.expired;
        b.adjusted_up = self.adjusted_up;
        b.adjusted_down = self.adjusted_down;
        b.penalized = self.penalized;
        b.closing_balance = self.closing_balance;
        b.debt = self.debt;
        b.reserved = self.reserved;
        b.pending = self.pending;
        b.pending_earned = self.pending_earned;
        b.pending_released = self.pending_released;
        b.pending_forfeited = self.pending_forfeited;
        b.spent_with_cash = self.spent_with_cash;
        b.orders_points_only = self.orders_points_only;
        b.orders_with_cash = self.orders_with_cash;
    }

    /// Counts a redemption (a spend or a capture) by its kind of order.
    fn order(&mut self, points: Points, order_cash_minor: i64) -> Option<()> {
        if order_cash_minor > 0 {
            add(&mut self.spent_with_cash, points)?;
            self.orders_with_cash = self.orders_with_cash.checked_add(1)?;
        } else {
            self.orders_points_only = self.orders_points_only.checked_add(1)?;
        }
        Some(())
    }
}

/// Applies an event of pending points (`None` for any other event).
fn apply_pending(b: &mut Movements, event: &Event) -> Option<Option<()>> {
    let mut applied = || -> Option<()> {
        match event {
            Event::PointsEarned { granted, pending: true, .. } => {
                add(&mut b.pending_earned, *granted)?;
                add(&mut b.pending, *granted)
            }
            Event::PendingPointsReleased { points, lots: l, .. } => {
                add(&mut b.issued, *points)?;
                add(&mut b.pending_released, *points)?;
                add(&mut b.closing_balance, lots(l)?)?;
                add(&mut b.pending, lots(l)?.checked_neg()?)
            }
            Event::PendingPointsForfeited { points, lots: l, .. } => {
                add(&mut b.pending_forfeited, *points)?;
                add(&mut b.pending, lots(l)?.checked_neg()?)
            }
            _ => None,
        }
    };
    match event {
        Event::PointsEarned { pending: true, .. }
        | Event::PendingPointsReleased { .. }
        | Event::PendingPointsForfeited { .. } => Some(applied()),
        _ => None,
    }
}

/// Applies one event's movements and balance changes to a partial's figures.
fn lots(l: &[crate::domain::LotAmount]) -> Option<Points> {
    l.iter().try_fold(0i64, |s, x| s.checked_add(x.points))
}

fn add(x: &mut i64, d: i64) -> Option<()> {
    *x = x.checked_add(d)?;
    Some(())
}

/// A manual adjustment: a credit (repaying debt first) or a debit.
fn adjusted(b: &mut Movements, points: Points, l: &[crate::domain::LotAmount], debt_repaid: Points) -> Option<()> {
    if points > 0 {
        add(&mut b.adjusted_up, points)?;
        add(&mut b.closing_balance, lots(l)?)?;
        add(&mut b.debt, -debt_repaid)
    } else {
        add(&mut b.adjusted_down, points.checked_neg()?)?;
        add(&mut b.closing_balance, -lots(l)?)
    }
}

fn apply(b: &mut Movements, event: &Event) -> Option<()> {
    if let Some(applied) = apply_pending(b, event) {
        return applied;
    }
    match event {
        Event::PointsEarned { granted, debt_repaid, .. } => {
            add(&mut b.issued, *granted)?;
            add(&mut b.closing_balance, granted.checked_sub(*debt_repaid)?)?;
            add(&mut b.debt, -debt_repaid)?;
        }
        Event::PointsSpent { points, lots: l, order_cash_minor, .. } => {
            add(&mut b.spent, *points)?;
            add(&mut b.closing_balance, -lots(l)?)?;
            b.order(*points, *order_cash_minor)?;
        }
        Event::PointsReserved { lots: l, .. } => add(&mut b.reserved, lots(l)?)?,
        Event::ReservationCaptured { points, lots: l, released_lots, order_cash_minor, .. } => {
            add(&mut b.spent, *points)?;
            b.order(*points, *order_cash_minor)?;
            add(&mut b.closing_balance, -lots(l)?)?;
            add(&mut b.reserved, -(lots(l)?.checked_add(lots(released_lots)?)?))?;
        }
        Event::ReservationReleased { lots: l, .. } => add(&mut b.reserved, -lots(l)?)?,
        Event::SpendRefunded { points, lots: l, .. } => {
            add(&mut b.refunded, *points)?;
            add(&mut b.closing_balance, lots(l)?)?;
        }
        Event::EarnReversed { points, taken, debt_added, written_off, .. } => {
            add(&mut b.reversed, points.checked_sub(*written_off)?)?;
            add(&mut b.written_off, *written_off)?;
            add(&mut b.closing_balance, -lots(taken)?)?;
            add(&mut b.debt, *debt_added)?;
        }
        Event::PointsRecovered { lots: l, debt_repaid, written_off, .. } => {
            // A written-off reversal recovered: reversed now, no longer
            // written off (a day's written_off is net of recoveries).
            add(&mut b.reversed, *written_off)?;
            add(&mut b.written_off, -written_off)?;
            add(&mut b.closing_balance, -lots(l)?)?;
            add(&mut b.debt, -debt_repaid)?;
        }
        Event::PointsExpired { points, lots: l, .. } => {
            add(&mut b.expired, *points)?;
            add(&mut b.closing_balance, -lots(l)?)?;
        }
        Event::PointsAdjusted { points, lots: l, debt_repaid, .. } => adjusted(b, *points, l, *debt_repaid)?,
        Event::PenaltyApplied { taken, debt_added, .. } => {
            add(&mut b.penalized, lots(taken)?.checked_add(*debt_added)?)?;
            add(&mut b.closing_balance, -lots(taken)?)?;
            add(&mut b.debt, *debt_added)?;
        }
        Event::AccountFrozen { .. }
        | Event::AccountUnfrozen { .. }
        | Event::GrowthExpired { .. }
        | Event::LevelChanged { .. }
        | Event::SettlementSetAside { .. }
        | Event::ActivityRecorded { .. }
        | Event::GrowthEvaluated { .. }
        | Event::GrowthAdjusted { .. }
        | Event::LevelHeld { .. }
        | Event::ExpiryReminderDue { .. }
        | Event::AlertRaised { .. }
        | Event::EarningsHeld { .. }
        | Event::EarningsUnheld { .. }
        | Event::AdjustmentRequested { .. }
        | Event::AdjustmentApproved { .. }
        | Event::AdjustmentRejected { .. }
        | Event::PendingPointsReleased { .. }
        | Event::PendingPointsForfeited { .. } => {}
    }
    Some(())
}

/// The record `entry` holds if it counts and is money; a quarantined one
/// is named and raised as an alert instead.
fn counted(
    arbiter: &mut Arbiter,
    home: Home,
    entry: &LogEntry,
    quarantined: &BTreeMap<u64, String>,
    risk: &mut RiskFold,
) -> Option<AccountRecord> {
    let (record, why) = match arbiter.admit_bytes(&entry.payload, home) {
        Admitted::Record(r) => match quarantined.get(&entry.offset) {
            Some(why) => (Some(Box::new(r)), why.clone()),
            None => return Some(r),
        },
        Admitted::Quarantined(q) => (q.record, q.why),
        Admitted::Claim(_) | Admitted::Released(_) | Admitted::Void => return None,
    };
    report("books", Position { partition: home.partition, offset: entry.offset }, &why);
    risk.quarantined(home.partition, entry.offset, record.as_deref(), &why);
    None
}

/// Folds consecutive records of one partition into a WriteBatch of partial
/// books and the consumer's new position.
///
/// A record every reader skips (ARCHITECTURE.md, "A record no reader can
/// use") is no money: it is named at error level and raised as an alert,
/// and moves nothing. The arbiter finds those that do not decode or name
/// another partition; those that would break their account the views found
/// (`quarantined`: offset → why, their rows for these entries: the books
/// never fold past the views).
pub fn fold(
    books: &Db,
    registry: &Registry,
    home: Home,
    arbiter: &mut Arbiter,
    entries: &[LogEntry],
    quarantined: &BTreeMap<u64, String>,
    risk: &mut RiskFold,
) -> Result<Batch, BooksError> {
    let partition = home.partition;
    let mut open: Open = HashMap::new();
    // Partials finished within this fold (a later day began), to store too.
    let mut done: Vec<(ProgrammeKey, i64, state::DailyBook)> = Vec::new();
    let mut batch = Batch::default();
    for entry in entries {
        let Some(record) = counted(arbiter, home, entry, quarantined, risk) else { continue };
        super::audit::put_acts(&mut batch, &record, partition, entry.offset);
        let key = ProgrammeKey {
            tenant_id: record.account.tenant_id.clone(),
            programme_id: record.account.programme_id.clone(),
        };
        let programme = registry
            .version(&key, record.programme_version)
            .ok_or_else(|| BooksError::UnknownVersion(key.clone(), record.programme_version))?;
        if !open.contains_key(&key) {
            let latest = partial_at_or_before(books, &key, partition, i64::MAX)?;
            let (day, book) = latest.unwrap_or_else(|| (i64::MIN, opening_partial(None, partition)));
            open.insert(key.clone(), (day, book));
        }
        let (day, book) = open.get_mut(&key).expect("loaded");
        let record_day = calendar::programme_day(programme.time_zone, record.at).max(*day);
        if record_day > *day {
            let next = opening_partial(Some(book), partition);
            let finished = std::mem::replace(book, next);
            if *day != i64::MIN {
                done.push((key.clone(), *day, finished));
            }
            *day = record_day;
        }
        risk.record(books, &programme, partition, entry.offset, &record, *day)?;
        book.points_per_cash_unit = programme.points_per_cash_unit;
        let mut moved = Movements::of(book);
        if record.events.iter().try_for_each(|e| apply(&mut moved, e)).is_some() {
            moved.write(book);
            book.event_count += record.events.len() as u64;
            let part = &mut book.partitions[0];
            if part.event_count == 0 {
                part.first_offset = entry.offset;
            }
            part.event_count += record.events.len() as u64;
        } else {
            // Never a consumer stopped by one record: it is left out of the
            // book, which says so (unbalanced), named and raised as an alert.
            let why = "its amounts would overflow the day's book: left out of the books";
            tracing::error!(partition, offset = entry.offset, account = %record.account, "{why}");
            book.mismatch = format!("record at offset {}: {why}", entry.offset);
            risk.quarantined(partition, entry.offset, Some(&record), why);
        }
        let part = &mut book.partitions[0];
        part.last_offset = entry.offset;
        part.chain = chain_step(&part.chain, entry.offset, &entry.payload);
    }
    let finished = done.into_iter().chain(open.into_iter().map(|(k, (d, b))| (k, d, b)));
    for (key, day, book) in finished {
        if day == i64::MIN {
            continue;
        }
        batch.put(Cf::Books, &book_key(&key.tenant_id, &key.programme_id, partition, day), &store::encode_row(&book));
    }
    risk.write(&mut batch, partition);
    if let Some(last) = entries.last() {
        store::put_cursor(&mut batch, partition, &store::Cursor { next: last.offset + 1, arbiter: arbiter.clone() });
    }
    Ok(batch)
}

/// The running closing of every (programme, partition) with a partial.
/// (programme, partition) → (day, partial).
type Partials = HashMap<(ProgrammeKey, u32), (i64, state::DailyBook)>;

fn running(books: &Db) -> Result<Partials, BooksError> {
    let mut out = Partials::new();
    for row in books.rows(Cf::Books) {
        let (k, v) = row?;
        let (key, partition, day) = parse_book_key(&k)?;
        let book: state::DailyBook = store::decode_row(&v).map_err(|e| BooksError::Codec(e, 0))?;
        // Rows come in key order: the last per (programme, partition) wins.
        out.insert((key, partition), (day, book));
    }
    Ok(out)
}

/// A disagreement between the books and the balance view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub programme: ProgrammeKey,
    pub partition: u32,
    pub day: i64,
    pub message: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} partition {}: {}",
            self.programme.tenant_id, self.programme.programme_id, self.partition, self.message
        )
    }
}

/// Compares each (programme, partition)'s running closing balance, debt and
/// reservations with the sums of the balance view (`views`' accounts), which
/// must stand at exactly the positions the books were folded to. Marks each
/// disagreeing latest partial with the mismatch (in the returned batch) and
/// returns them all; an empty list means the books agree with the view.
pub fn check_against_views(
    books: &Db,
    view_accounts: impl Iterator<Item = Result<store::Row, store::StoreError>>,
    partitions: u32,
) -> Result<(Vec<Mismatch>, Batch), BooksError> {
    #[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
    struct Sums {
        balance: i64,
        debt: i64,
        reserved: i64,
    }
    let mut view: HashMap<(ProgrammeKey, u32), Sums> = HashMap::new();
    for row in store::accounts::each(view_accounts) {
        let (account, a) = row?;
        let b = Balance::of(&a);
        let p = partition_for(&account, partitions);
        let s = view.entry((programme_of(&account), p)).or_default();
        s.balance = s.balance.saturating_add(b.available.saturating_add(b.reserved));
        s.debt = s.debt.saturating_add(b.debt);
        s.reserved = s.reserved.saturating_add(b.reserved);
    }
    let books_now = running(books)?;
    let mut keys: Vec<_> = view.keys().chain(books_now.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    let mut batch = Batch::default();
    for key in keys {
        let v = view.get(&key).copied().unwrap_or_default();
        let (day, book) = books_now.get(&key).cloned().unwrap_or((i64::MIN, state::DailyBook::default()));
        let b = Sums { balance: book.closing_balance, debt: book.debt, reserved: book.reserved };
        if v == b {
            continue;
        }
        let message = format!(
            "books close at balance {} debt {} reserved {}, the balance view sums to balance {} debt {} reserved {}",
            b.balance, b.debt, b.reserved, v.balance, v.debt, v.reserved
        );
        if day != i64::MIN && book.mismatch != message {
            let mut marked = book.clone();
            marked.mismatch = message.clone();
            batch.put(
                Cf::Books,
                &book_key(&key.0.tenant_id, &key.0.programme_id, key.1, day),
                &store::encode_row(&marked),
            );
        }
        out.push(Mismatch { programme: key.0, partition: key.1, day, message });
    }
    Ok((out, batch))
}

fn programme_of(a: &AccountKey) -> ProgrammeKey {
    ProgrammeKey { tenant_id: a.tenant_id.clone(), programme_id: a.programme_id.clone() }
}

/// Whether a book's movements lead from its opening to its closing.
pub fn identity_holds(b: &state::DailyBook) -> bool {
    let holds = || -> Option<bool> {
        let lhs =
            [b.issued, -b.spent, b.refunded, -b.reversed, -b.expired, b.adjusted_up, -b.adjusted_down, -b.penalized]
                .iter()
                .try_fold(b.opening_balance.checked_sub(b.opening_debt)?, |s, x| s.checked_add(*x));
        let pending = [b.pending_earned, -b.pending_released, -b.pending_forfeited]
            .iter()
            .try_fold(b.opening_pending, |s, x| s.checked_add(*x));
        Some(lhs? == b.closing_balance.checked_sub(b.debt)? && pending? == b.pending)
    };
    holds().unwrap_or(false)
}

/// The day's book of a programme: the sum of its partitions' partials.
pub fn daily_book(
    books: &Db,
    programme: &crate::domain::Programme,
    partitions: u32,
    day: i64,
) -> Result<state::DailyBook, BooksError> {
    let key = programme.key();
    let mut total = state::DailyBook {
        tenant_id: key.tenant_id.clone(),
        programme_id: key.programme_id.clone(),
        date: calendar::day_to_date(day).map(|d| d.to_string()).unwrap_or_default(),
        points_per_cash_unit: programme.points_per_cash_unit,
        ..Default::default()
    };
    let mut digest = Sha256::new();
    let mut mismatches = Vec::new();
    let overflow = || BooksError::Overflow(key.clone());
    for p in 0..partitions {
        let Some((d, partial)) = partial_at_or_before(books, &key, p, day)? else { continue };
        let sum = |x: &mut i64, y: i64| -> Result<(), BooksError> {
            *x = x.checked_add(y).ok_or_else(overflow)?;
            Ok(())
        };
        if d == day {
            sum(&mut total.opening_balance, partial.opening_balance)?;
            sum(&mut total.opening_debt, partial.opening_debt)?;
            sum(&mut total.opening_pending, partial.opening_pending)?;
            for (t, x) in [
                (&mut total.pending_earned, partial.pending_earned),
                (&mut total.pending_released, partial.pending_released),
                (&mut total.pending_forfeited, partial.pending_forfeited),
                (&mut total.spent_with_cash, partial.spent_with_cash),
                (&mut total.issued, partial.issued),
                (&mut total.spent, partial.spent),
                (&mut total.refunded, partial.refunded),
                (&mut total.reversed, partial.reversed),
                (&mut total.expired, partial.expired),
                (&mut total.adjusted_up, partial.adjusted_up),
                (&mut total.adjusted_down, partial.adjusted_down),
                (&mut total.penalized, partial.penalized),
                (&mut total.written_off, partial.written_off),
            ] {
                sum(t, x)?;
            }
            total.event_count += partial.event_count;
            total.orders_points_only = total.orders_points_only.saturating_add(partial.orders_points_only);
            total.orders_with_cash = total.orders_with_cash.saturating_add(partial.orders_with_cash);
            for part in &partial.partitions {
                digest.update(part.chain.as_bytes());
                let position = |offset| Some(state::Position { partition: p, offset });
                if total.first_position.is_none() {
                    total.first_position = position(part.first_offset);
                }
                total.last_position = position(part.last_offset);
                total.partitions.push(part.clone());
            }
            if !partial.mismatch.is_empty() {
                mismatches.push(format!("partition {p}: {}", partial.mismatch));
            }
        } else {
            sum(&mut total.opening_balance, partial.closing_balance)?;
            sum(&mut total.opening_debt, partial.debt)?;
            sum(&mut total.opening_pending, partial.pending)?;
        }
        sum(&mut total.pending, partial.pending)?;
        sum(&mut total.closing_balance, partial.closing_balance)?;
        sum(&mut total.debt, partial.debt)?;
        sum(&mut total.reserved, partial.reserved)?;
    }
    total.digest = hex(&digest.finalize());
    total.liability_cash_minor = liability_minor(total.closing_balance, programme.points_per_cash_unit);
    if !identity_holds(&total) {
        mismatches.push("opening + movements != closing".into());
    }
    total.balanced = mismatches.is_empty();
    total.mismatch = mismatches.join("; ");
    Ok(total)
}

/// The book of a calendar date of a programme, with the cash ratio of the
/// rules in force at the end of that day.
pub fn book_for_date(
    books: &Db,
    registry: &Registry,
    current: &crate::domain::Programme,
    partitions: u32,
    date: chrono::NaiveDate,
) -> Result<state::DailyBook, BooksError> {
    let day = calendar::days_since_epoch(date);
    let end = date.succ_opt().and_then(|d| calendar::start_of_day(current.time_zone, d));
    let rules = end.and_then(|at| registry.in_force_at(&current.key(), at - 1));
    let rules = rules.as_deref().unwrap_or(current);
    let mut book = daily_book(books, rules, partitions, day)?;
    // The day the cash ratio changed is marked with the ratio before it.
    let start = calendar::start_of_day(current.time_zone, date);
    let before = start.and_then(|at| registry.in_force_at(&current.key(), at - 1));
    if let Some(b) = before.filter(|b| b.points_per_cash_unit != rules.points_per_cash_unit) {
        book.ratio_changed_from = b.points_per_cash_unit;
    }
    Ok(book)
}

/// Points in cash minor units (100 per cash unit), rounded down.
pub fn liability_minor(points: i64, points_per_cash_unit: i64) -> i64 {
    if points_per_cash_unit <= 0 {
        return 0;
    }
    (i128::from(points) * 100 / i128::from(points_per_cash_unit)).clamp(i64::MIN.into(), i64::MAX.into()) as i64
}
