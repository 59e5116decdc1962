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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::codec::hex;
use crate::domain::{calendar, AccountKey, Event, Points, ProgrammeKey};
use crate::log::{EventLog, LogEntry, LogReader};
use crate::programmes::{Registry, SharedRegistry};
use crate::proto as pb;
use crate::record::{partition_for, Admitted, Arbiter, Balance};
use crate::risk::RiskFold;
use crate::store::{self, Batch, Cf, Db};

#[derive(Debug, thiserror::Error)]
pub enum BooksError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("record at offset {offset}: {0}", offset = .1)]
    Codec(crate::codec::CodecError, u64),
    /// The control stream has not delivered this version yet; retry later.
    #[error("programme {0:?} version {1} is not known yet")]
    UnknownVersion(ProgrammeKey, u64),
    #[error("book arithmetic overflowed for {0:?}")]
    Overflow(ProgrammeKey),
}

/// `tenant \0 programme \0 partition(be32)`: one partition's partials.
fn partition_prefix(tenant: &str, programme: &str, partition: u32) -> Vec<u8> {
    let mut k = store::programme_prefix(tenant, programme);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Partial book key: partition prefix, then the day (sign-flipped be64).
pub fn book_key(tenant: &str, programme: &str, partition: u32, day: i64) -> Vec<u8> {
    let mut k = partition_prefix(tenant, programme, partition);
    k.extend_from_slice(&store::millis_key(day));
    k
}

fn day_of_key(key: &[u8]) -> i64 {
    store::millis_from_key(&key[key.len() - 8..])
}

/// The latest partial of a partition at or before `day`, with its day.
pub fn partial_at_or_before(
    books: &Db,
    key: &ProgrammeKey,
    partition: u32,
    day: i64,
) -> Result<Option<(i64, pb::DailyBook)>, BooksError> {
    let prefix = partition_prefix(&key.tenant_id, &key.programme_id, partition);
    let at = book_key(&key.tenant_id, &key.programme_id, partition, day);
    match books.seek_prev(Cf::Books, &prefix, &at)? {
        Some((k, v)) => {
            let book = pb::DailyBook::decode(&v[..]).map_err(|e| BooksError::Codec(e.into(), 0))?;
            Ok(Some((day_of_key(&k), book)))
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
fn opening_partial(previous: Option<&pb::DailyBook>, partition: u32) -> pb::DailyBook {
    let mut b = pb::DailyBook::default();
    if let Some(p) = previous {
        b.opening_balance = p.closing_balance;
        b.opening_debt = p.debt;
        b.closing_balance = p.closing_balance;
        b.debt = p.debt;
        b.reserved = p.reserved;
    }
    b.partitions = vec![pb::BookPartition { partition, chain: chain_start(), ..Default::default() }];
    b
}

/// The partials one fold is changing: (programme, partition) → (day, book).
type Open = HashMap<ProgrammeKey, (i64, pb::DailyBook)>;

/// Applies one event's movements and balance changes to a partial.
fn apply(b: &mut pb::DailyBook, event: &Event) -> Option<()> {
    fn lots(l: &[crate::domain::LotAmount]) -> Option<Points> {
        l.iter().try_fold(0i64, |s, x| s.checked_add(x.points))
    }
    fn add(x: &mut i64, d: i64) -> Option<()> {
        *x = x.checked_add(d)?;
        Some(())
    }
    match event {
        Event::PointsEarned { granted, debt_repaid, .. } => {
            add(&mut b.issued, *granted)?;
            add(&mut b.closing_balance, granted.checked_sub(*debt_repaid)?)?;
            add(&mut b.debt, -debt_repaid)?;
        }
        Event::PointsSpent { points, lots: l, .. } => {
            add(&mut b.spent, *points)?;
            add(&mut b.closing_balance, -lots(l)?)?;
        }
        Event::PointsReserved { lots: l, .. } => add(&mut b.reserved, lots(l)?)?,
        Event::ReservationCaptured { points, lots: l, released_lots, .. } => {
            add(&mut b.spent, *points)?;
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
        Event::PointsExpired { points, lots: l, .. } => {
            add(&mut b.expired, *points)?;
            add(&mut b.closing_balance, -lots(l)?)?;
        }
        Event::PointsAdjusted { points, lots: l, debt_repaid, .. } => {
            if *points > 0 {
                add(&mut b.adjusted_up, *points)?;
                add(&mut b.closing_balance, lots(l)?)?;
                add(&mut b.debt, -debt_repaid)?;
            } else {
                add(&mut b.adjusted_down, points.checked_neg()?)?;
                add(&mut b.closing_balance, -lots(l)?)?;
            }
        }
        Event::AccountFrozen { .. }
        | Event::AccountUnfrozen { .. }
        | Event::GrowthExpired { .. }
        | Event::LevelChanged { .. } => {}
    }
    Some(())
}

/// Folds consecutive records of one partition into a WriteBatch of partial
/// books and the consumer's new position.
pub fn fold(
    books: &Db,
    registry: &Registry,
    partition: u32,
    arbiter: &mut Arbiter,
    entries: &[LogEntry],
    risk: &mut RiskFold,
) -> Result<Batch, BooksError> {
    let mut open: Open = HashMap::new();
    // Partials finished within this fold (a later day began), to store too.
    let mut done: Vec<(ProgrammeKey, i64, pb::DailyBook)> = Vec::new();
    for entry in entries {
        let record = match arbiter.admit_bytes(&entry.payload).map_err(|e| BooksError::Codec(e, entry.offset))? {
            Admitted::Record(r) => r,
            Admitted::Claim(_) | Admitted::Void => continue,
        };
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
        for event in &record.events {
            apply(book, event).ok_or_else(|| BooksError::Overflow(key.clone()))?;
            book.event_count += 1;
        }
        let part = &mut book.partitions[0];
        if part.event_count == 0 {
            part.first_offset = entry.offset;
        }
        part.last_offset = entry.offset;
        part.event_count += record.events.len() as u64;
        part.chain = chain_step(&part.chain, entry.offset, &entry.payload);
    }
    let mut batch = Batch::default();
    let finished = done.into_iter().chain(open.into_iter().map(|(k, (d, b))| (k, d, b)));
    for (key, day, book) in finished {
        if day == i64::MIN {
            continue;
        }
        batch.put(Cf::Books, &book_key(&key.tenant_id, &key.programme_id, partition, day), &book.encode_to_vec());
    }
    risk.write(&mut batch, partition);
    if let Some(last) = entries.last() {
        store::put_cursor(&mut batch, partition, store::Cursor { next: last.offset + 1, arbiter: *arbiter });
    }
    Ok(batch)
}

/// The running closing of every (programme, partition) with a partial.
/// (programme, partition) → (day, partial).
type Partials = HashMap<(ProgrammeKey, u32), (i64, pb::DailyBook)>;

fn running(books: &Db) -> Result<Partials, BooksError> {
    let mut out = Partials::new();
    for row in books.rows(Cf::Books) {
        let (k, v) = row?;
        let (tenant, rest) = split_nul(&k);
        let (programme, rest) = split_nul(rest);
        let partition = u32::from_be_bytes(rest[..4].try_into().expect("partition in key"));
        let book = pb::DailyBook::decode(&v[..]).map_err(|e| BooksError::Codec(e.into(), 0))?;
        // Rows come in key order: the last per (programme, partition) wins.
        let key = ProgrammeKey { tenant_id: tenant, programme_id: programme };
        out.insert((key, partition), (day_of_key(&k), book));
    }
    Ok(out)
}

fn split_nul(b: &[u8]) -> (String, &[u8]) {
    let i = b.iter().position(|&x| x == 0).unwrap_or(b.len());
    (String::from_utf8_lossy(&b[..i]).into_owned(), b.get(i + 1..).unwrap_or_default())
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
    for row in crate::accounts::each(view_accounts) {
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
        let (day, book) = books_now.get(&key).cloned().unwrap_or((i64::MIN, pb::DailyBook::default()));
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
            batch.put(Cf::Books, &book_key(&key.0.tenant_id, &key.0.programme_id, key.1, day), &marked.encode_to_vec());
        }
        out.push(Mismatch { programme: key.0, partition: key.1, day, message });
    }
    Ok((out, batch))
}

fn programme_of(a: &AccountKey) -> ProgrammeKey {
    ProgrammeKey { tenant_id: a.tenant_id.clone(), programme_id: a.programme_id.clone() }
}

/// Whether a book's movements lead from its opening to its closing.
pub fn identity_holds(b: &pb::DailyBook) -> bool {
    let holds = || -> Option<bool> {
        let lhs = [b.issued, -b.spent, b.refunded, -b.reversed, -b.expired, b.adjusted_up, -b.adjusted_down]
            .iter()
            .try_fold(b.opening_balance.checked_sub(b.opening_debt)?, |s, x| s.checked_add(*x));
        Some(lhs? == b.closing_balance.checked_sub(b.debt)?)
    };
    holds().unwrap_or(false)
}

/// The day's book of a programme: the sum of its partitions' partials.
pub fn daily_book(
    books: &Db,
    programme: &crate::domain::Programme,
    partitions: u32,
    day: i64,
) -> Result<pb::DailyBook, BooksError> {
    let key = programme.key();
    let mut total = pb::DailyBook {
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
            for (t, x) in [
                (&mut total.issued, partial.issued),
                (&mut total.spent, partial.spent),
                (&mut total.refunded, partial.refunded),
                (&mut total.reversed, partial.reversed),
                (&mut total.expired, partial.expired),
                (&mut total.adjusted_up, partial.adjusted_up),
                (&mut total.adjusted_down, partial.adjusted_down),
                (&mut total.written_off, partial.written_off),
            ] {
                sum(t, x)?;
            }
            total.event_count += partial.event_count;
            for part in &partial.partitions {
                digest.update(part.chain.as_bytes());
                let position = |offset| Some(pb::LogPosition { partition: p, offset });
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
        }
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
) -> Result<pb::DailyBook, BooksError> {
    let day = calendar::days_since_epoch(date);
    let end = date.succ_opt().and_then(|d| calendar::start_of_day(current.time_zone, d));
    let rules = end.and_then(|at| registry.in_force_at(&current.key(), at - 1));
    daily_book(books, rules.as_deref().unwrap_or(current), partitions, day)
}

/// The reconciliation consumer: folds every partition into the books, only
/// ever up to where the balance view stands (read from one snapshot of the
/// views), and checks the books against that snapshot every
/// `check_interval` when something new was folded. A mismatch is logged at
/// error level and marked in the book; it is never silent.
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
            .map(|p| store::read_cursor(&books, p).map(|cursor| Lane { cursor, risk: RiskFold::default() }))
            .collect::<Result<_, _>>()?;
        let mut readers =
            (0..n).map(|p| log.reader(p, lanes[p as usize].cursor.next)).collect::<Result<Vec<_>, _>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let last_check = Arc::new(Mutex::new(None));
        let thread = {
            let (stop, last_check) = (stop.clone(), last_check.clone());
            std::thread::Builder::new().name("reconciliation".into()).spawn(move || {
                let mut last = Instant::now() - check_interval;
                let mut folded_since_check = true;
                while !stop.load(Ordering::Relaxed) {
                    let due = folded_since_check && last.elapsed() >= check_interval;
                    match step(&views, &books, &registry, &mut readers, &mut lanes, &stop, due) {
                        Ok((folded, checked)) => {
                            folded_since_check |= folded > 0;
                            if let Some(m) = checked {
                                last = Instant::now();
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
                            std::thread::sleep(Duration::from_millis(500));
                            // The readers may have moved past what was folded.
                            match (0..n).map(|p| log.reader(p, lanes[p as usize].cursor.next)).collect() {
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

/// Folds every partition up to the views' positions (one snapshot) and,
/// when `check` and every partition got there, compares the books with that
/// same snapshot. Returns the records folded and the check's mismatches.
fn step(
    views: &Db,
    books: &Db,
    registry: &SharedRegistry,
    readers: &mut [Box<dyn LogReader>],
    lanes: &mut [Lane],
    stop: &AtomicBool,
    check: bool,
) -> Result<(usize, Option<Vec<Mismatch>>), anyhow::Error> {
    let snap = views.snapshot();
    let mut folded = 0;
    let mut all_there = true;
    for (p, reader) in readers.iter_mut().enumerate() {
        let target = snap.position(p as u32)?;
        let lane = &mut lanes[p];
        while lane.cursor.next < target && !stop.load(Ordering::Relaxed) {
            let max = BOOKS_BATCH_RECORDS_MAX.min((target - lane.cursor.next) as usize);
            let entries = reader.next_batch(max, Duration::from_millis(BOOKS_POLL_WAIT_MS))?;
            if entries.is_empty() {
                break;
            }
            let mut arbiter = lane.cursor.arbiter;
            let batch = fold(
                books,
                &registry.read().expect("registry lock"),
                p as u32,
                &mut arbiter,
                &entries,
                &mut lane.risk,
            )?;
            books.write(batch)?;
            lane.cursor = store::Cursor { next: entries.last().expect("non-empty").offset + 1, arbiter };
            folded += entries.len();
        }
        all_there &= lane.cursor.next == target;
    }
    if !(check && all_there) {
        return Ok((folded, None));
    }
    let (mismatches, batch) = check_against_views(books, snap.rows(Cf::Accounts), readers.len() as u32)?;
    books.write(batch)?;
    for m in &mismatches {
        tracing::error!(mismatch = %m, "the books do not agree with the balance view");
    }
    Ok((folded, Some(mismatches)))
}

/// Folds every partition from offset zero into `books` up to `targets`
/// (per partition; the log's current end when None), stopping at the first
/// record decided after `until_time`. Returns the records read.
fn fold_from_zero(
    events: &dyn EventLog,
    registry: &Registry,
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
            fold_partition_from_zero(events, registry, books, p, target, until_time, folded)
        },
        progress,
    )
}

fn fold_partition_from_zero(
    events: &dyn EventLog,
    registry: &Registry,
    books: &Db,
    p: u32,
    target: u64,
    until_time: Option<crate::domain::Millis>,
    folded: &AtomicU64,
) -> anyhow::Result<()> {
    let mut reader = events.reader(p, 0)?;
    let mut arbiter = Arbiter::default();
    let mut risk = RiskFold::default();
    while reader.position() < target {
        let max = BOOKS_BATCH_RECORDS_MAX.min((target - reader.position()) as usize);
        let mut entries = crate::log::read_towards(reader.as_mut(), target, max)?;
        if entries.is_empty() {
            break;
        }
        let mut done = false;
        if let Some(t) = until_time {
            let late = |e: &LogEntry| match crate::codec::decode_partition_record(&e.payload) {
                Ok(crate::record::PartitionRecord::Account(r)) => r.at > t,
                Ok(crate::record::PartitionRecord::Claim(c)) => c.at > t,
                Err(_) => true,
            };
            if let Some(cut) = entries.iter().position(late) {
                entries.truncate(cut);
                done = true;
            }
        }
        if !entries.is_empty() {
            folded.fetch_add(entries.len() as u64, Ordering::Relaxed);
            books.write(fold(books, registry, p, &mut arbiter, &entries, &mut risk)?)?;
        }
        if done {
            break;
        }
    }
    Ok(())
}

/// The books folded afresh from the log into `scratch` (a directory that
/// does not exist yet), for tools: up to exactly the positions of `views`
/// (one snapshot; then checked against them), or to the end of the log when
/// there are no views. Returns the books and the check's mismatches.
pub fn rebuild(
    events: &dyn EventLog,
    registry: &Registry,
    views: Option<&Db>,
    scratch: &std::path::Path,
) -> anyhow::Result<(Db, Vec<Mismatch>)> {
    let books = Db::open_rebuild(scratch, store::BOOK_CFS)?;
    let snap = views.map(|v| v.snapshot());
    let targets = match &snap {
        Some(s) => Some((0..events.partitions()).map(|p| s.position(p)).collect::<Result<Vec<_>, _>>()?),
        None => None,
    };
    fold_from_zero(events, registry, &books, targets.as_deref(), None, |_| {})?;
    let mismatches = match &snap {
        Some(s) => {
            let (m, batch) = check_against_views(&books, s.rows(Cf::Accounts), events.partitions())?;
            books.write(batch)?;
            m
        }
        None => Vec::new(),
    };
    drop(snap);
    Ok((books, mismatches))
}

/// The books and the risk view rebuilt from offset zero into `into`, up to
/// an offset in every partition and/or an instant, for `replay`. Returns
/// the database and the records folded.
pub fn replay(
    events: &dyn EventLog,
    registry: &Registry,
    into: &std::path::Path,
    until_offset: Option<u64>,
    until_time: Option<crate::domain::Millis>,
    progress: impl FnMut(u64),
) -> anyhow::Result<(Db, u64)> {
    let books = Db::open_rebuild(into, store::BOOK_CFS)?;
    let targets = (0..events.partitions())
        .map(|p| events.end_offset(p).map(|end| until_offset.map_or(end, |u| u.min(end))))
        .collect::<Result<Vec<u64>, crate::log::LogError>>()?;
    let folded = fold_from_zero(events, registry, &books, Some(&targets), until_time, progress)?;
    books.finish_rebuild()?;
    Ok((books, folded))
}

/// Rebuilds the books and the risk view into a temporary directory up to
/// exactly the live consumer's positions and compares them byte for byte.
/// Returns the records folded and the first difference.
pub fn verify(
    events: &dyn EventLog,
    registry: &Registry,
    live: &Db,
) -> anyhow::Result<(u64, Option<crate::audit::Difference>)> {
    let targets: Vec<u64> =
        (0..events.partitions()).map(|p| store::read_position(live, p)).collect::<Result<_, _>>()?;
    let scratch = tempfile::tempdir()?;
    let rebuilt = Db::open_rebuild(&scratch.path().join("books"), store::BOOK_CFS)?;
    let folded = fold_from_zero(events, registry, &rebuilt, Some(&targets), None, |_| {})?;
    if rebuilt.digest()? == live.digest()? {
        return Ok((folded, None));
    }
    Ok((folded, crate::audit::first_difference(live, &rebuilt)?))
}

/// Points in cash minor units (100 per cash unit), rounded down.
pub fn liability_minor(points: i64, points_per_cash_unit: i64) -> i64 {
    if points_per_cash_unit <= 0 {
        return 0;
    }
    (i128::from(points) * 100 / i128::from(points_per_cash_unit)).clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

/// Periods books roll up into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
    Quarter,
    Year,
}

impl Period {
    /// The label of the period a date falls in: `2026-03-10`, `2026-03`,
    /// `2026-Q1`, `2026`.
    pub fn label(self, date: chrono::NaiveDate) -> String {
        use chrono::Datelike;
        match self {
            Period::Day => date.to_string(),
            Period::Month => format!("{:04}-{:02}", date.year(), date.month()),
            Period::Quarter => format!("{:04}-Q{}", date.year(), (date.month() - 1) / 3 + 1),
            Period::Year => format!("{:04}", date.year()),
        }
    }
}

/// Rolls consecutive daily books (one programme's, in date order) up into
/// periods: movements and event counts add up, the opening is the first
/// day's, the closing the last day's, `date` holds the period's label, the
/// digest is sha256 over the days' digests, and a period balances when every
/// day in it does. Days outside the given range are not fetched: a period
/// cut by the range covers only its days in it.
pub fn roll_up(days: &[pb::DailyBook], period: Period) -> Result<Vec<pb::DailyBook>, BooksError> {
    if period == Period::Day {
        return Ok(days.to_vec());
    }
    let mut out: Vec<pb::DailyBook> = Vec::new();
    let mut digests: Vec<Sha256> = Vec::new();
    for d in days {
        let date = chrono::NaiveDate::parse_from_str(&d.date, "%Y-%m-%d").unwrap_or_default();
        let label = period.label(date);
        let same = out
            .last()
            .is_some_and(|p| p.date == label && p.programme_id == d.programme_id && p.tenant_id == d.tenant_id);
        if !same {
            out.push(pb::DailyBook {
                tenant_id: d.tenant_id.clone(),
                programme_id: d.programme_id.clone(),
                date: label,
                opening_balance: d.opening_balance,
                opening_debt: d.opening_debt,
                first_position: d.first_position,
                balanced: true,
                ..Default::default()
            });
            digests.push(Sha256::new());
        }
        let p = out.last_mut().expect("pushed");
        let overflow = || {
            BooksError::Overflow(ProgrammeKey { tenant_id: d.tenant_id.clone(), programme_id: d.programme_id.clone() })
        };
        for (t, x) in [
            (&mut p.issued, d.issued),
            (&mut p.spent, d.spent),
            (&mut p.refunded, d.refunded),
            (&mut p.reversed, d.reversed),
            (&mut p.expired, d.expired),
            (&mut p.adjusted_up, d.adjusted_up),
            (&mut p.adjusted_down, d.adjusted_down),
            (&mut p.written_off, d.written_off),
        ] {
            *t = t.checked_add(x).ok_or_else(overflow)?;
        }
        p.event_count += d.event_count;
        p.closing_balance = d.closing_balance;
        p.debt = d.debt;
        p.reserved = d.reserved;
        p.liability_cash_minor = d.liability_cash_minor;
        p.points_per_cash_unit = d.points_per_cash_unit;
        if d.last_position.is_some() {
            p.last_position = d.last_position;
        }
        if p.first_position.is_none() {
            p.first_position = d.first_position;
        }
        if !d.balanced {
            p.balanced = false;
            p.mismatch = if p.mismatch.is_empty() {
                format!("{}: {}", d.date, d.mismatch)
            } else {
                format!("{}; {}: {}", p.mismatch, d.date, d.mismatch)
            };
        }
        digests.last_mut().expect("pushed").update(d.digest.as_bytes());
    }
    for (p, h) in out.iter_mut().zip(digests) {
        p.digest = hex(&h.finalize());
    }
    Ok(out)
}

/// Points due to expire per future day (in the programme's time zone), from
/// the balance view's expiring-lots index: (date, points, lots) for every
/// day from `from` on, `days` days long, that has points due.
pub fn expiry_forecast(
    views: &Db,
    programme: &crate::domain::Programme,
    from: chrono::NaiveDate,
    days: u32,
) -> Result<Vec<(chrono::NaiveDate, i64, u64)>, BooksError> {
    let prefix = store::programme_prefix(&programme.tenant_id, &programme.programme_id);
    let start_ms = calendar::start_of_day(programme.time_zone, from).unwrap_or(i64::MIN);
    let end_ms = from
        .checked_add_days(chrono::Days::new(u64::from(days)))
        .and_then(|d| calendar::start_of_day(programme.time_zone, d))
        .unwrap_or(i64::MAX);
    let mut start = prefix.clone();
    start.extend_from_slice(&store::millis_key(start_ms));
    let mut out: Vec<(chrono::NaiveDate, i64, u64)> = Vec::new();
    // The index is read in pages, so a large programme is never held whole.
    const PAGE_ROWS: usize = 4096;
    loop {
        let rows = views.scan(Cf::Expiring, &prefix, &start, PAGE_ROWS)?;
        let Some((last, _)) = rows.last() else { break };
        let mut next = last.clone();
        next.push(0);
        let full = rows.len() == PAGE_ROWS;
        for (k, v) in rows {
            let at = store::millis_from_key(&k[prefix.len()..prefix.len() + 8]);
            if at >= end_ms {
                return Ok(out);
            }
            let points = i64::from_be_bytes(v[..8].try_into().expect("stored points"));
            let day = calendar::day_to_date(calendar::programme_day(programme.time_zone, at)).unwrap_or(from);
            match out.last_mut() {
                Some((d, p, n)) if *d == day => {
                    *p = p.saturating_add(points);
                    *n += 1;
                }
                _ => out.push((day, points, 1)),
            }
        }
        if !full {
            break;
        }
        start = next;
    }
    Ok(out)
}

/// The columns of a book in exports, in order.
pub const BOOK_COLUMNS: &[&str] = &[
    "tenant_id",
    "programme_id",
    "date",
    "opening_balance",
    "opening_debt",
    "issued",
    "spent",
    "refunded",
    "reversed",
    "expired",
    "adjusted_up",
    "adjusted_down",
    "written_off",
    "closing_balance",
    "debt",
    "reserved",
    "liability_cash_minor",
    "points_per_cash_unit",
    "event_count",
    "first_position",
    "last_position",
    "digest",
    "balanced",
    "mismatch",
];

fn position_text(p: &Option<pb::LogPosition>) -> String {
    p.as_ref().map(|p| format!("{}:{}", p.partition, p.offset)).unwrap_or_default()
}

/// A book's values as text, in [`BOOK_COLUMNS`] order.
pub fn book_values(b: &pb::DailyBook) -> Vec<String> {
    let n = |x: i64| x.to_string();
    vec![
        b.tenant_id.clone(),
        b.programme_id.clone(),
        b.date.clone(),
        n(b.opening_balance),
        n(b.opening_debt),
        n(b.issued),
        n(b.spent),
        n(b.refunded),
        n(b.reversed),
        n(b.expired),
        n(b.adjusted_up),
        n(b.adjusted_down),
        n(b.written_off),
        n(b.closing_balance),
        n(b.debt),
        n(b.reserved),
        n(b.liability_cash_minor),
        n(b.points_per_cash_unit),
        b.event_count.to_string(),
        position_text(&b.first_position),
        position_text(&b.last_position),
        b.digest.clone(),
        b.balanced.to_string(),
        b.mismatch.clone(),
    ]
}

/// A book as a JSON object with [`BOOK_COLUMNS`] keys (numbers as numbers).
pub fn book_json(b: &pb::DailyBook) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in BOOK_COLUMNS.iter().zip(book_values(b)) {
        let value = match v.parse::<i64>() {
            Ok(x) if !matches!(*k, "date" | "tenant_id" | "programme_id" | "digest" | "mismatch") => x.into(),
            _ if *k == "balanced" => (v == "true").into(),
            _ => v.into(),
        };
        m.insert((*k).to_string(), value);
    }
    serde_json::Value::Object(m)
}

/// RFC 4180 CSV with a header row.
pub fn books_csv(books: &[pb::DailyBook]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = BOOK_COLUMNS.join(",") + "\r\n";
    for b in books {
        out += &book_values(b).iter().map(|v| field(v)).collect::<Vec<_>>().join(",");
        out += "\r\n";
    }
    out
}

/// A table for people: the main figures, one book per line.
pub fn books_table(books: &[pb::DailyBook]) -> String {
    let mut out = format!(
        "{:<12} {:<12} {:<10} {:>12} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>8} {:>14} {:>7}  {}\n",
        "tenant",
        "programme",
        "date",
        "opening",
        "issued",
        "spent",
        "refunded",
        "reversed",
        "expired",
        "adj+",
        "adj-",
        "closing",
        "debt",
        "liability",
        "events",
        "balanced"
    );
    for b in books {
        out += &format!(
            "{:<12} {:<12} {:<10} {:>12} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>8} {:>14} {:>7}  {}\n",
            b.tenant_id,
            b.programme_id,
            b.date,
            b.opening_balance,
            b.issued,
            b.spent,
            b.refunded,
            b.reversed,
            b.expired,
            b.adjusted_up,
            b.adjusted_down,
            b.closing_balance,
            b.debt,
            b.liability_cash_minor,
            b.event_count,
            if b.balanced { "yes".to_string() } else { format!("NO: {}", b.mismatch) }
        );
    }
    out
}
