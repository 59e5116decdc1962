//! An account's state and the fold of events into it.

use super::{Event, ExpiryCause, Id, LotAmount, Millis, Points, ReleaseCause, VecMap};

/// One earn (or credit adjustment) with its own expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lot {
    /// Points the lot was created with.
    pub earned: Points,
    /// Points still spendable in it (never negative).
    pub remaining: Points,
    /// `None`: never expires. Spendable while `now < expires_at`.
    pub expires_at: Option<Millis>,
    /// An `ExpiryReminderDue` named it (a lot is reminded once).
    pub reminded: bool,
    /// Earned while the member's earns were held: `remaining` is pending,
    /// neither spendable nor due, until released (or forfeited).
    pub pending: bool,
}

impl Lot {
    /// Still to be reminded of its expiry: it has points left (not pending),
    /// an expiry and no reminder yet.
    pub fn to_remind(&self) -> Option<Millis> {
        self.expires_at.filter(|_| self.remaining > 0 && !self.reminded && !self.pending)
    }

    /// Points that can be spent (or expire): the rest, unless pending.
    pub fn spendable(&self) -> Points {
        if self.pending {
            0
        } else {
            self.remaining
        }
    }

    /// Its expiry while it has spendable points.
    fn due(&self) -> Option<Millis> {
        self.expires_at.filter(|_| self.spendable() > 0)
    }
}

/// Why the member's new earns are held (`EarningsHeld`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EarningsHold {
    pub rule: String,
    pub alert_id: String,
}

/// A manual adjustment waiting for a second admin client (maker-checker).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingAdjustment {
    pub points: Points,
    pub operator: String,
    pub reason: String,
    /// The client that asked for it (who may not approve it).
    pub client: String,
}

/// Adjustments that may wait for approval on one account at most.
pub const PENDING_ADJUSTMENTS_MAX: usize = 100;

/// What a later `ReverseEarn` needs to know about an earn.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EarnRecord {
    pub points: Points,
    pub reversed: Points,
    pub growth: i64,
    pub growth_reversed: i64,
    /// Programme day of the earn (the level window counts from it).
    pub day: i64,
    /// Growth that left the level window (`GrowthExpired`).
    pub growth_expired: i64,
}

impl EarnRecord {
    /// What this earn still adds to the growth in the level window.
    pub fn growth_in_window(&self) -> i64 {
        (self.growth - self.growth_reversed - self.growth_expired).max(0)
    }
}

/// A lot's share in a spend or a hold: the account's own copy of an event's
/// [`LotAmount`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    pub lot: Id,
    pub points: Points,
}

impl Share {
    pub fn of(lots: &[LotAmount]) -> Vec<Share> {
        lots.iter().map(|l| Share { lot: Id::of(&l.lot_id), points: l.points }).collect()
    }

    /// As an event names them.
    pub fn amounts(shares: &[Share]) -> Vec<LotAmount> {
        shares.iter().map(|s| LotAmount { lot_id: s.lot.to_string(), points: s.points }).collect()
    }

    pub fn sum(shares: &[Share]) -> Points {
        shares.iter().map(|s| s.points).sum()
    }
}

/// What a later `Refund` needs to know about a spend (or a capture).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpendRecord {
    /// The lots that paid, in the order they were consumed.
    pub lots: Vec<Share>,
    /// Refunded so far, per lot.
    pub refunded: VecMap<Id, Points>,
}

impl SpendRecord {
    pub fn refundable(&self) -> Points {
        Share::sum(&self.lots) - self.refunded.values().sum::<Points>()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationStatus {
    Open,
    Captured,
    Released,
    TimedOut,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationRecord {
    pub order_ref: String,
    /// The order's cash part in minor units (0: points only).
    pub order_cash_minor: i64,
    /// The held points, by the lot they were taken from.
    pub lots: Vec<Share>,
    pub expires_at: Millis,
    pub status: ReservationStatus,
}

impl ReservationRecord {
    pub fn held(&self) -> Points {
        if self.status == ReservationStatus::Open {
            Share::sum(&self.lots)
        } else {
            0
        }
    }
}

/// Purchases in one calendar month (`month`: year × 12 + month − 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurchaseMonth {
    pub month: i64,
    pub count: i64,
    pub amount_minor: i64,
}

/// How many months of purchases an account keeps (the longest RFM period).
pub const PURCHASE_MONTHS_KEPT: i64 = 12;

/// Running totals of every movement, for the conservation invariant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub issued: Points,
    pub spent: Points,
    pub refunded: Points,
    /// Taken from lots or turned into debt by reversals, and written-off
    /// reversals once recovered (`PointsRecovered`); not what is written off.
    pub reversed: Points,
    pub expired: Points,
    pub adjusted_up: Points,
    pub adjusted_down: Points,
    /// Taken from lots or turned into debt by penalties (not what is
    /// written off).
    pub penalized: Points,
    /// Earned while held (pending), released (then also `issued`) and
    /// forfeited: held − released − forfeited is what is pending.
    pub held: Points,
    pub released: Points,
    pub forfeited: Points,
}

impl Totals {
    /// The totals once `event` is folded, or `None` when one would overflow
    /// (`decide` refuses a command whose events would do that).
    pub fn after(&self, event: &Event) -> Option<Totals> {
        let mut t = self.clone();
        let add = |x: &mut Points, d: Points| -> Option<()> {
            *x = x.checked_add(d)?;
            Some(())
        };
        match event {
            Event::PointsEarned { granted, pending: false, .. } => add(&mut t.issued, *granted)?,
            Event::PointsEarned { granted, pending: true, .. } => add(&mut t.held, *granted)?,
            Event::PendingPointsReleased { points, .. } => {
                add(&mut t.released, *points)?;
                add(&mut t.issued, *points)?
            }
            Event::PendingPointsForfeited { points, .. } => add(&mut t.forfeited, *points)?,
            Event::PointsSpent { points, .. } | Event::ReservationCaptured { points, .. } => {
                add(&mut t.spent, *points)?
            }
            Event::SpendRefunded { points, .. } => add(&mut t.refunded, *points)?,
            Event::EarnReversed { taken, debt_added, .. } => {
                add(&mut t.reversed, super::sum(taken).checked_add(*debt_added)?)?
            }
            // What was written off and is now taken counts as reversed.
            Event::PointsRecovered { written_off, .. } => add(&mut t.reversed, *written_off)?,
            Event::PointsExpired { points, .. } => add(&mut t.expired, *points)?,
            Event::PointsAdjusted { points, .. } if *points > 0 => add(&mut t.adjusted_up, *points)?,
            Event::PointsAdjusted { points, .. } => add(&mut t.adjusted_down, points.checked_neg()?)?,
            Event::PenaltyApplied { taken, debt_added, .. } => {
                add(&mut t.penalized, super::sum(taken).checked_add(*debt_added)?)?
            }
            Event::PointsReserved { .. }
            | Event::ReservationReleased { .. }
            | Event::AdjustmentRequested { .. }
            | Event::AdjustmentApproved { .. }
            | Event::AdjustmentRejected { .. }
            | Event::ActivityRecorded { .. }
            | Event::GrowthEvaluated { .. }
            | Event::GrowthAdjusted { .. }
            | Event::LevelHeld { .. }
            | Event::AccountFrozen { .. }
            | Event::AccountUnfrozen { .. }
            | Event::GrowthExpired { .. }
            | Event::LevelChanged { .. }
            | Event::SettlementSetAside { .. }
            | Event::ExpiryReminderDue { .. }
            | Event::AlertRaised { .. }
            | Event::EarningsHeld { .. }
            | Event::EarningsUnheld { .. } => {}
        }
        Some(t)
    }
}

/// Up to how many lots `apply` checks every invariant after every event in
/// debug builds (a check that counts every lot).
const DEBUG_FULL_CHECK_LOTS_MAX: usize = 2_000;

/// The state of one account, as folded from its events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    /// Every lot by id (the earn's or credit's request id).
    pub lots: VecMap<Id, Lot>,
    pub earns: VecMap<Id, EarnRecord>,
    pub spends: VecMap<Id, SpendRecord>,
    pub reservations: VecMap<Id, ReservationRecord>,
    /// Clawed-back points the member owes; earns and credits repay it first.
    pub debt: Points,
    pub growth: i64,
    pub earning_frozen: bool,
    pub spending_frozen: bool,
    pub totals: Totals,
    /// The programme day `day_earned` and `day_actions` count for.
    pub day: i64,
    pub day_earned: Points,
    pub day_actions: VecMap<Id, Points>,
    /// Events folded so far.
    pub events: u64,
    /// The member's level as of the last `LevelChanged` ("" before any).
    pub level: String,
    /// What many members never have ([`Extra`]).
    pub extra: Extra,
    /// What `available`, `reserved`, `growth_in_window` and the due instants
    /// are made of, kept as lots, reservations and earns change, so they
    /// cost the same however long the member's history (every lot, earn and
    /// reservation ever made stays in the maps). Whoever fills the maps other
    /// than through [`Account::apply`] calls [`Account::recount`].
    sums: Sums,
}

/// The part of an account that only some members have: a write-off, a
/// level held by hand, held earns, adjustments waiting, and what only some
/// programmes count (earning rules' daily limits, RFM purchases, expiry
/// reminders).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtraState {
    /// Reversed points that were written off (the member had spent, held or
    /// lost them, `CLAWBACK_POLICY_WITHIN_BALANCE`) and not recovered since.
    /// A write-off forgives points that are gone, never points that come
    /// back: refunded and released points are taken for it first
    /// (`PointsRecovered`), so a refund after a reversal mints nothing.
    pub written_off_open: Points,
    /// Until when a level set by hand is held against evaluation.
    pub level_held_until: Option<Millis>,
    /// The programme day `rule_days` count for.
    pub rules_day: i64,
    /// Each earning rule's occurrences and points on `rules_day`.
    pub rule_days: VecMap<Id, super::RuleDay>,
    /// RFM: the programme day of the last purchase (`ActivityRecorded` with
    /// `purchase`).
    pub last_purchase_day: Option<i64>,
    /// RFM: purchases and their amount by calendar month of the programme
    /// day, ascending, the months of the last [`PURCHASE_MONTHS_KEPT`] before
    /// the newest purchase (a period is at most 12 months, and only the
    /// newest purchase's period is ever still to be evaluated). Kept by
    /// month so that folding needs no rules.
    pub purchase_months: Vec<PurchaseMonth>,
    /// Programme day of the last `ExpiryReminderDue` (one a day at most).
    pub reminded_day: Option<i64>,
    /// While set, new earns land as pending lots.
    pub held: Option<EarningsHold>,
    /// Adjustments waiting for a second admin client, by approval id.
    pub adjustments: VecMap<String, PendingAdjustment>,
    /// RFM growth as of the last `GrowthEvaluated` (0 before any).
    pub rfm_growth: i64,
    /// Programme day of the first day of the last period evaluated.
    pub rfm_evaluated: Option<i64>,
}

/// An account's [`ExtraState`] behind one pointer, none while it is all
/// defaults: a member without any of it keeps 8 bytes for it, not ~220. It
/// reads as its state (the defaults when there is none) and is made on the
/// first write; [`Account::apply`] lets it go again once it is back to the
/// defaults, and accounts compare by what they hold, not by whether it is
/// allocated.
#[derive(Clone, Default)]
pub struct Extra(Option<Box<ExtraState>>);

static NO_EXTRA: ExtraState = ExtraState {
    written_off_open: 0,
    level_held_until: None,
    rules_day: 0,
    rule_days: VecMap::new(),
    last_purchase_day: None,
    purchase_months: Vec::new(),
    reminded_day: None,
    held: None,
    adjustments: VecMap::new(),
    rfm_growth: 0,
    rfm_evaluated: None,
};

impl Extra {
    /// `state`, allocated only when it is not all defaults.
    pub fn of(state: ExtraState) -> Extra {
        Extra((state != NO_EXTRA).then(|| Box::new(state)))
    }

    /// Lets the state go once it is back to the defaults.
    fn tidy(&mut self) {
        if self.0.as_deref() == Some(&NO_EXTRA) {
            self.0 = None;
        }
    }
}

impl std::ops::Deref for Extra {
    type Target = ExtraState;

    fn deref(&self) -> &ExtraState {
        self.0.as_deref().unwrap_or(&NO_EXTRA)
    }
}

impl std::ops::DerefMut for Extra {
    fn deref_mut(&mut self) -> &mut ExtraState {
        self.0.get_or_insert_with(Default::default)
    }
}

impl PartialEq for Extra {
    fn eq(&self, other: &Extra) -> bool {
        **self == **other
    }
}

impl Eq for Extra {}

impl std::fmt::Debug for Extra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Sums {
    available: Points,
    reserved: Points,
    /// In pending lots.
    pending: Points,
    /// Lots with points left, pending ones too (`LOTS_WITH_POINTS_MAX`
    /// bounds it).
    lots_with_points: usize,
    growth_in_window: i64,
    /// How many lots with points left expire at each instant, open holds
    /// time out at each instant, and earns with growth in the level window
    /// were made on each day, and lots with points left not reminded yet
    /// expire at each instant: one small sorted vector for the four (few
    /// distinct keys, since expiries fall on period ends; every cached
    /// account carries one).
    due: Vec<Counted>,
}

/// `count` of `what` at `at` (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counted {
    at: i64,
    count: u32,
    what: Due,
}

const _: () = assert!(std::mem::size_of::<Counted>() == 16);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Expiry,
    Hold,
    GrowthDay,
    /// Expiries of lots with points left not reminded yet.
    Reminder,
}

impl Sums {
    fn find(&self, what: Due, at: i64) -> Result<usize, usize> {
        self.due.binary_search_by(|c| (c.what, c.at).cmp(&(what, at)))
    }

    fn count_in(&mut self, what: Due, at: i64) {
        match self.find(what, at) {
            Ok(i) => self.due[i].count += 1,
            Err(i) => self.due.insert(i, Counted { at, count: 1, what }),
        }
    }

    fn count_out(&mut self, what: Due, at: i64) {
        match self.find(what, at) {
            Ok(i) if self.due[i].count == 1 => {
                self.due.remove(i);
            }
            Ok(i) => self.due[i].count -= 1,
            Err(_) => panic!("kept counts out of step with the account"),
        }
    }

    /// The least instant (or day) counted for `what`.
    fn first(&self, what: Due) -> Option<i64> {
        let i = self.due.partition_point(|c| c.what < what);
        self.due.get(i).filter(|c| c.what == what).map(|c| c.at)
    }
}

impl Account {
    /// What the account holds in memory, about, in constant time: its own
    /// size and its maps' entries, a spend's or a hold's lots as one share
    /// each, ids and texts at their inline size (an id of more than 22
    /// bytes, a hold's order reference and a spend's refunds hold more).
    /// What the writers' cache budget counts.
    pub fn bytes(&self) -> usize {
        use std::mem::size_of;
        let share = size_of::<Share>();
        let mut n = size_of::<Account>()
            + self.lots.heap_bytes()
            + self.earns.heap_bytes()
            + self.spends.heap_bytes()
            + self.spends.len() * share
            + self.reservations.heap_bytes()
            + self.reservations.len() * share
            + self.day_actions.heap_bytes()
            + self.level.capacity()
            + self.sums.due.capacity() * size_of::<Counted>();
        if let Some(x) = &self.extra.0 {
            n += size_of::<ExtraState>()
                + x.rule_days.heap_bytes()
                + x.purchase_months.capacity() * size_of::<PurchaseMonth>()
                + x.adjustments.heap_bytes();
        }
        n
    }

    /// Spendable now: the sum of lots.
    pub fn available(&self) -> Points {
        self.sums.available
    }

    /// Held by open reservations.
    pub fn reserved(&self) -> Points {
        self.sums.reserved
    }

    /// In pending lots (earned while held).
    pub fn pending(&self) -> Points {
        self.sums.pending
    }

    /// The pending lots, by id.
    pub fn pending_lots(&self) -> impl Iterator<Item = (&Id, &Lot)> {
        self.lots.iter().filter(|(_, l)| l.pending && l.remaining > 0)
    }

    /// How many lots have points left.
    pub fn lots_with_points(&self) -> usize {
        self.sums.lots_with_points
    }

    /// The soonest expiry of a lot with points left.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.sums.first(Due::Expiry)
    }

    /// The soonest timeout of an open reservation.
    pub fn next_hold_timeout(&self) -> Option<Millis> {
        self.sums.first(Due::Hold)
    }

    /// The soonest expiry of a lot with points left that was not reminded.
    pub fn next_unreminded_expiry(&self) -> Option<Millis> {
        self.sums.first(Due::Reminder)
    }

    /// The programme day of the oldest earn whose growth is still in the
    /// level window.
    pub fn oldest_growth_day(&self) -> Option<i64> {
        self.sums.first(Due::GrowthDay)
    }

    /// The sums as the lots, reservations and earns give them, counted afresh.
    fn counted(&self) -> Sums {
        let mut s = Sums {
            available: self.lots.values().map(Lot::spendable).sum(),
            pending: self.lots.values().filter(|l| l.pending).map(|l| l.remaining).sum(),
            reserved: self.reservations.values().map(ReservationRecord::held).sum(),
            lots_with_points: self.lots.values().filter(|l| l.remaining > 0).count(),
            growth_in_window: self.earns.values().map(EarnRecord::growth_in_window).sum(),
            ..Sums::default()
        };
        for at in self.lots.values().filter_map(Lot::due) {
            s.count_in(Due::Expiry, at);
        }
        for at in self.lots.values().filter_map(Lot::to_remind) {
            s.count_in(Due::Reminder, at);
        }
        for r in self.reservations.values().filter(|r| r.status == ReservationStatus::Open) {
            s.count_in(Due::Hold, r.expires_at);
        }
        for e in self.earns.values().filter(|e| e.growth_in_window() > 0) {
            s.count_in(Due::GrowthDay, e.day);
        }
        s
    }

    /// Counts the kept sums afresh: after the maps were filled directly
    /// (decoding a stored account).
    pub fn recount(&mut self) {
        self.sums = self.counted();
    }

    /// Lots with points in them, soonest-expiring first (never-expiring last).
    pub fn lots_fefo(&self) -> Vec<(&Id, &Lot)> {
        let mut lots: Vec<_> = self.lots.iter().filter(|(_, l)| l.spendable() > 0).collect();
        lots.sort_unstable_by_key(|(id, l)| (l.expires_at.unwrap_or(Millis::MAX), *id));
        lots
    }

    /// Growth earned within the level window (lifetime growth when the
    /// programme has no window: nothing ever leaves it).
    pub fn growth_in_window(&self) -> i64 {
        self.sums.growth_in_window
    }

    /// Earned today (programme day `day`) in all, and for one action.
    pub fn earned_on(&self, day: i64, action: &str) -> (Points, Points) {
        if self.day != day {
            return (0, 0);
        }
        (self.day_earned, self.day_actions.get(&Id::of(action)).copied().unwrap_or(0))
    }

    /// An earning rule's counters on programme day `day`.
    pub fn rule_day(&self, rule_id: &str, day: i64) -> super::RuleDay {
        if self.extra.rules_day != day {
            return super::RuleDay::default();
        }
        self.extra.rule_days.get(&Id::of(rule_id)).copied().unwrap_or_default()
    }

    /// Folds one event. Cannot fail: a history that takes more from a lot than
    /// it holds is a bug, and it panics here rather than bend the books.
    pub fn apply(&mut self, event: &Event) {
        self.totals = self.totals.after(event).expect("a total overflows: decide refuses such commands");
        match event {
            Event::PointsEarned { lot_id, reason, granted, debt_repaid, expires_at, growth, day, pending, .. } => {
                if *pending {
                    self.credit_pending(lot_id, *granted, *expires_at);
                } else {
                    self.credit_lot(lot_id, granted - debt_repaid, *expires_at);
                }
                self.debt -= debt_repaid;
                self.growth += growth;
                let earn = EarnRecord {
                    points: *granted,
                    reversed: 0,
                    growth: *growth,
                    growth_reversed: 0,
                    day: *day,
                    growth_expired: 0,
                };
                self.count_growth(&earn, 1);
                self.earns.insert(Id::of(lot_id), earn);
                if self.day != *day {
                    self.day = *day;
                    self.day_earned = 0;
                    self.day_actions.clear();
                }
                self.day_earned += granted;
                *self.day_actions.entry_or_default(Id::of(reason)) += granted;
            }
            Event::PointsSpent { spend_id, lots, .. } => {
                self.take(lots);
                self.spends.insert(Id::of(spend_id), SpendRecord { lots: Share::of(lots), refunded: VecMap::new() });
            }
            Event::PointsReserved { reservation_id, order_ref, lots, expires_at, order_cash_minor, .. } => {
                self.take(lots);
                self.sums.reserved += super::sum(lots);
                self.sums.count_in(Due::Hold, *expires_at);
                self.reservations.insert(
                    Id::of(reservation_id),
                    ReservationRecord {
                        order_ref: order_ref.clone(),
                        order_cash_minor: *order_cash_minor,
                        lots: Share::of(lots),
                        expires_at: *expires_at,
                        status: super::ReservationStatus::Open,
                    },
                );
            }
            Event::ReservationCaptured { reservation_id, spend_id, lots, released_lots, .. } => {
                self.settle(reservation_id, ReservationStatus::Captured);
                self.give(released_lots);
                self.spends.insert(Id::of(spend_id), SpendRecord { lots: Share::of(lots), refunded: VecMap::new() });
            }
            Event::ReservationReleased { reservation_id, lots, cause, .. } => {
                let status = match cause {
                    ReleaseCause::TimedOut => ReservationStatus::TimedOut,
                    ReleaseCause::Requested | ReleaseCause::Recycled => ReservationStatus::Released,
                };
                self.settle(reservation_id, status);
                self.give(lots);
            }
            Event::SpendRefunded { spend_id, lots, .. } => {
                self.give(lots);
                let spend = self.spends.get_mut(&Id::of(spend_id)).expect("refund of a recorded spend");
                for l in lots {
                    *spend.refunded.entry_or_default(Id::of(&l.lot_id)) += l.points;
                }
            }
            Event::EarnReversed { earn_id, points, taken, debt_added, written_off, growth, .. } => {
                self.take(taken);
                self.debt += debt_added;
                if *written_off != 0 {
                    self.extra.written_off_open += written_off;
                }
                self.growth -= growth;
                let earn = self.earns.get_mut(&Id::of(earn_id)).expect("reversal of a recorded earn");
                let before = earn.clone();
                earn.reversed += points;
                earn.growth_reversed += growth;

                let after = earn.clone();
                self.count_growth(&before, -1);
                self.count_growth(&after, 1);
            }
            Event::PointsRecovered { lots, debt_repaid, written_off, .. } => {
                self.take(lots);
                assert!(*debt_repaid >= 0 && *debt_repaid <= self.debt, "debt over-repaid");
                assert!(*written_off >= 0 && *written_off <= self.extra.written_off_open, "write-off over-recovered");
                self.debt -= debt_repaid;
                if *written_off != 0 {
                    self.extra.written_off_open -= written_off;
                }
            }
            Event::PointsExpired { lots, cause, .. } => {
                debug_assert!(matches!(cause, ExpiryCause::Due | ExpiryCause::AllPoints));
                self.take(lots);
            }
            Event::PointsAdjusted { adjustment_id, points, lots, debt_repaid, expires_at, .. } => {
                if *points > 0 {
                    self.credit_lot(adjustment_id, points - debt_repaid, *expires_at);
                    self.debt -= debt_repaid;
                } else {
                    self.take(lots);
                }
            }
            Event::AccountFrozen { earning, spending, .. } => {
                self.earning_frozen |= earning;
                self.spending_frozen |= spending;
            }
            Event::AccountUnfrozen { earning, spending, .. } => {
                self.earning_frozen &= !earning;
                self.spending_frozen &= !spending;
            }
            Event::GrowthExpired { earns, .. } => {
                for e in earns {
                    let earn = self.earns.get_mut(&Id::of(&e.lot_id)).expect("growth expiry of a recorded earn");
                    assert!(
                        e.points >= 0 && e.points <= earn.growth_in_window(),
                        "earn {} growth over-expired",
                        e.lot_id
                    );
                    let before = earn.clone();
                    earn.growth_expired += e.points;
                    let after = earn.clone();
                    self.count_growth(&before, -1);
                    self.count_growth(&after, 1);
                }
            }
            Event::LevelChanged { to, .. } => self.level = to.clone(),
            Event::SettlementSetAside { .. } => {}
            Event::ActivityRecorded { applied, day, purchase, activity, .. } => {
                self.count_rules(applied, *day);
                if *purchase {
                    self.count_purchase(*day, activity.amount_minor);
                }
            }
            Event::GrowthEvaluated { period_start, growth, .. } => {
                self.extra.rfm_growth = *growth;
                self.extra.rfm_evaluated = Some(*period_start);
            }
            Event::GrowthAdjusted { adjustment_id, growth, earns, day, .. } => {
                if *growth > 0 {
                    let earn = EarnRecord { growth: *growth, day: *day, ..EarnRecord::default() };
                    self.count_growth(&earn, 1);
                    self.growth += growth;
                    let previous = self.earns.insert(Id::of(adjustment_id), earn);
                    assert!(previous.is_none(), "earn {adjustment_id} recorded twice");
                } else {
                    self.take_growth(earns);
                }
            }
            Event::LevelHeld { hold_until, .. } => self.extra.level_held_until = *hold_until,
            Event::ExpiryReminderDue { lots, day, .. } => {
                self.extra.reminded_day = Some(self.extra.reminded_day.map_or(*day, |d| d.max(*day)));
                for l in lots {
                    let lot = self
                        .lots
                        .get_mut(&Id::of(&l.lot_id))
                        .unwrap_or_else(|| panic!("reminder of no lot {}", l.lot_id));
                    if let Some(at) = lot.to_remind() {
                        self.sums.count_out(Due::Reminder, at);
                    }
                    lot.reminded = true;
                }
            }
            Event::PenaltyApplied { taken, debt_added, growth_earns, .. } => {
                self.take(taken);
                self.debt += debt_added;
                self.take_growth(growth_earns);
            }
            Event::AlertRaised { .. } => {}
            Event::EarningsHeld { rule, alert_id } => {
                self.extra.held = Some(EarningsHold { rule: rule.clone(), alert_id: alert_id.clone() })
            }
            Event::EarningsUnheld { .. } => self.extra.held = None,
            Event::AdjustmentRequested { approval_id, points, operator, reason, client } => {
                let pending = PendingAdjustment {
                    points: *points,
                    operator: operator.clone(),
                    reason: reason.clone(),
                    client: client.clone(),
                };
                self.extra.adjustments.insert(approval_id.clone(), pending);
            }
            Event::AdjustmentApproved { approval_id, .. } | Event::AdjustmentRejected { approval_id, .. } => {
                self.extra.adjustments.remove(approval_id);
            }
            Event::PendingPointsReleased { lots, .. } => {
                self.settle_pending(lots, true);
                self.extra.held = None;
            }
            Event::PendingPointsForfeited { lots, .. } => {
                self.settle_pending(lots, false);
                self.extra.held = None;
            }
        }
        self.events += 1;
        self.extra.tidy();
        // Every lot recounted on every event: in debug builds, and only while
        // the account is of a size that keeps that from being quadratic.
        if cfg!(debug_assertions) && self.lots.len() <= DEBUG_FULL_CHECK_LOTS_MAX {
            assert_eq!(self.check_invariants_fully(), Ok(()));
        }
    }

    fn credit_pending(&mut self, lot_id: &str, points: Points, expires_at: Option<Millis>) {
        if points > 0 {
            let lot = Lot { earned: points, remaining: points, expires_at, reminded: false, pending: true };
            let previous = self.lots.insert(Id::of(lot_id), lot);
            assert!(previous.is_none(), "lot {lot_id} credited twice");
            self.sums.pending += points;
            self.sums.lots_with_points += 1;
        }
    }

    /// Pending lots released (whole: they become ordinary lots) or
    /// forfeited (whole: they are emptied).
    fn settle_pending(&mut self, lots: &[LotAmount], release: bool) {
        for l in lots {
            let lot = self.lots.get_mut(&Id::of(&l.lot_id)).unwrap_or_else(|| panic!("no lot {}", l.lot_id));
            assert!(lot.pending && lot.remaining == l.points, "lot {} is not pending {}", l.lot_id, l.points);
            lot.pending = false;
            self.sums.pending -= l.points;
            if release {
                self.sums.available += l.points;
                if let Some(at) = lot.expires_at {
                    self.sums.count_in(Due::Expiry, at);
                    if !lot.reminded {
                        self.sums.count_in(Due::Reminder, at);
                    }
                }
            } else {
                lot.remaining = 0;
                self.sums.lots_with_points -= 1;
                self.forfeit_earn(&l.lot_id, l.points);
            }
        }
    }

    /// A forfeited earn is settled: nothing of it is left to reverse, and
    /// its growth is taken back.
    fn forfeit_earn(&mut self, earn_id: &str, points: Points) {
        let Some(earn) = self.earns.get_mut(&Id::of(earn_id)) else { return };
        let before = earn.clone();
        let growth = earn.growth_in_window();
        earn.reversed = earn.reversed.saturating_add(points).min(earn.points);
        earn.growth_reversed += growth;
        let after = earn.clone();
        self.growth -= growth;
        self.count_growth(&before, -1);
        self.count_growth(&after, 1);
    }

    fn credit_lot(&mut self, lot_id: &str, points: Points, expires_at: Option<Millis>) {
        if points > 0 {
            let lot = Lot { earned: points, remaining: points, expires_at, reminded: false, pending: false };
            let previous = self.lots.insert(Id::of(lot_id), lot);
            assert!(previous.is_none(), "lot {lot_id} credited twice");
            self.sums.available += points;
            self.sums.lots_with_points += 1;
            if let Some(at) = expires_at {
                self.sums.count_in(Due::Expiry, at);
                self.sums.count_in(Due::Reminder, at);
            }
        }
    }

    fn take(&mut self, lots: &[LotAmount]) {
        for l in lots {
            let lot = self.lots.get_mut(&Id::of(&l.lot_id)).unwrap_or_else(|| panic!("no lot {}", l.lot_id));
            assert!(!lot.pending || l.points == 0, "points taken from pending lot {}", l.lot_id);
            assert!(
                l.points >= 0 && lot.remaining >= l.points,
                "lot {} holds {} < {}",
                l.lot_id,
                lot.remaining,
                l.points
            );
            lot.remaining -= l.points;
            self.sums.available -= l.points;
            if lot.remaining == 0 && l.points > 0 {
                self.sums.lots_with_points -= 1;
                if let Some(at) = lot.expires_at {
                    self.sums.count_out(Due::Expiry, at);
                    if !lot.reminded {
                        self.sums.count_out(Due::Reminder, at);
                    }
                }
            }
        }
    }

    fn give(&mut self, lots: &[LotAmount]) {
        for l in lots {
            let lot = self.lots.get_mut(&Id::of(&l.lot_id)).unwrap_or_else(|| panic!("no lot {}", l.lot_id));
            assert!(l.points >= 0, "negative points back into lot {}", l.lot_id);
            assert!(!lot.pending || l.points == 0, "points given to pending lot {}", l.lot_id);
            if lot.remaining == 0 && l.points > 0 {
                self.sums.lots_with_points += 1;
                if let Some(at) = lot.expires_at {
                    self.sums.count_in(Due::Expiry, at);
                    if !lot.reminded {
                        self.sums.count_in(Due::Reminder, at);
                    }
                }
            }
            lot.remaining += l.points;
            self.sums.available += l.points;
        }
    }

    /// Adds (`sign` 1) or takes out (-1) an earn's share of the kept growth.
    /// An activity's rules counted for their daily limits (a rule that gave
    /// nothing is not an occurrence, and an activity without one leaves the
    /// counters as they are: a past day's read as none).
    fn count_rules(&mut self, applied: &[super::AppliedRule], day: i64) {
        let mut counted = applied.iter().filter(|a| a.points != 0 || a.growth != 0).peekable();
        if counted.peek().is_none() {
            return;
        }
        if self.extra.rules_day != day {
            self.extra.rules_day = day;
            self.extra.rule_days.clear();
        }
        for a in counted {
            let d = self.extra.rule_days.entry_or_default(Id::of(&a.rule_id));
            d.count = d.count.saturating_add(1);
            d.points = d.points.saturating_add(a.points.saturating_abs());
        }
    }

    fn count_purchase(&mut self, day: i64, amount_minor: i64) {
        self.extra.last_purchase_day = Some(self.extra.last_purchase_day.map_or(day, |d| d.max(day)));
        let month = super::calendar::month_of_day(day);
        match self.extra.purchase_months.binary_search_by_key(&month, |m| m.month) {
            Ok(i) => {
                let m = &mut self.extra.purchase_months[i];
                m.count = m.count.saturating_add(1);
                m.amount_minor = m.amount_minor.saturating_add(amount_minor.max(0));
            }
            Err(i) => self
                .extra
                .purchase_months
                .insert(i, PurchaseMonth { month, count: 1, amount_minor: amount_minor.max(0) }),
        }
        let newest = self.extra.purchase_months.last().map_or(month, |m| m.month);
        self.extra.purchase_months.retain(|m| m.month > newest - PURCHASE_MONTHS_KEPT);
    }

    /// Purchases and their amount in the calendar months `from..to`.
    pub fn purchases_in(&self, from: i64, to: i64) -> (i64, i64) {
        self.extra
            .purchase_months
            .iter()
            .filter(|m| (from..to).contains(&m.month))
            .fold((0, 0), |(c, a), m| (c.saturating_add(m.count), a.saturating_add(m.amount_minor)))
    }

    /// Growth a penalty takes, by earn.
    fn take_growth(&mut self, earns: &[LotAmount]) {
        for e in earns {
            let earn = self.earns.get_mut(&Id::of(&e.lot_id)).expect("growth taken from a recorded earn");
            assert!(e.points >= 0 && e.points <= earn.growth_in_window(), "earn {} growth over-taken", e.lot_id);
            let before = earn.clone();
            earn.growth_reversed += e.points;
            let after = earn.clone();
            self.growth -= e.points;
            self.count_growth(&before, -1);
            self.count_growth(&after, 1);
        }
    }

    fn count_growth(&mut self, earn: &EarnRecord, sign: i64) {
        let g = earn.growth_in_window();
        self.sums.growth_in_window += sign * g;
        if g > 0 {
            if sign > 0 {
                self.sums.count_in(Due::GrowthDay, earn.day);
            } else {
                self.sums.count_out(Due::GrowthDay, earn.day);
            }
        }
    }

    fn settle(&mut self, reservation_id: &str, status: ReservationStatus) {
        let r = self.reservations.get_mut(&Id::of(reservation_id)).expect("settle of a recorded reservation");
        assert_eq!(r.status, ReservationStatus::Open, "reservation {reservation_id} settled twice");
        r.status = status;
        self.sums.reserved -= Share::sum(&r.lots);
        self.sums.count_out(Due::Hold, r.expires_at);
    }

    /// The ledger's invariants for one account, counting every lot and
    /// reservation (a cost that grows with the member's history): that no lot
    /// is negative, that the kept sums are what the lots and reservations
    /// add up to, and [`Account::check_invariants`]. Checked from `apply`
    /// (debug builds), tests and the audit tooling.
    pub fn check_invariants_fully(&self) -> Result<(), String> {
        if let Some((id, lot)) = self.lots.iter().find(|(_, l)| l.remaining < 0) {
            return Err(format!("lot {id} is negative: {}", lot.remaining));
        }
        let counted = self.counted();
        if counted != self.sums {
            return Err(format!("kept sums {:?} but the lots, reservations and earns give {counted:?}", self.sums));
        }
        self.check_invariants()
    }

    /// The invariants that cost the same however long the history: debt and
    /// growth never negative, and conservation (what the totals say moved
    /// equals available + reserved - debt). The writers check it for
    /// every account a batch changed.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.debt < 0 {
            return Err(format!("debt is negative: {}", self.debt));
        }
        if self.growth < 0 {
            return Err(format!("growth is negative: {}", self.growth));
        }
        let t = &self.totals;
        let pending = t.held - t.released - t.forfeited;
        if pending != self.pending() {
            return Err(format!(
                "pending: held {} - released {} - forfeited {} = {pending} but the pending lots hold {}",
                t.held,
                t.released,
                t.forfeited,
                self.pending()
            ));
        }
        let movements =
            t.issued - t.spent + t.refunded - t.reversed - t.expired + t.adjusted_up - t.adjusted_down - t.penalized;
        let net = self.available() + self.reserved() - self.debt;
        if movements != net {
            return Err(format!(
                "conservation: issued {} - spent {} + refunded {} - reversed {} - expired {} + adjusted {} - {} - penalized {} = {} but available {} + reserved {} - debt {} = {}",
                t.issued, t.spent, t.refunded, t.reversed, t.expired, t.adjusted_up, t.adjusted_down, t.penalized, movements,
                self.available(), self.reserved(), self.debt, net
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accounts_extra_state_is_made_on_its_first_write_and_let_go_once_back_to_the_defaults() {
        let mut a = Account::default();
        assert!(a.extra.0.is_none() && a.extra.held.is_none());
        a.apply(&Event::EarningsHeld { rule: "dense_spend".into(), alert_id: "a-1".into() });
        assert!(a.extra.0.is_some() && a.extra.held.is_some());
        a.apply(&Event::EarningsUnheld { operator: "ops".into(), reason: "cleared".into() });
        assert!(a.extra.0.is_none());
    }

    fn activity(day: i64, applied: Vec<crate::domain::AppliedRule>) -> Event {
        Event::ActivityRecorded {
            activity_id: format!("act-{day}"),
            activity: Default::default(),
            applied,
            points: 0,
            growth: 0,
            day,
            purchase: false,
        }
    }

    #[test]
    fn an_activity_no_rule_counted_for_leaves_the_rules_counters_and_the_extra_state_alone() {
        let mut a = Account::default();
        a.apply(&activity(3, vec![crate::domain::AppliedRule { rule_id: "login".into(), ..Default::default() }]));
        assert!(a.extra.0.is_none(), "a rule that gave nothing is not an occurrence");
        let login = crate::domain::AppliedRule { rule_id: "login".into(), points: 2, ..Default::default() };
        a.apply(&activity(3, vec![login]));
        assert_eq!(a.rule_day("login", 3).count, 1);
        a.apply(&activity(4, Vec::new()));
        assert_eq!((a.rule_day("login", 3).count, a.rule_day("login", 4).count), (1, 0));
    }

    #[test]
    fn accounts_compare_by_their_extra_state_not_by_whether_it_is_allocated() {
        let (mut kept, none) = (Account::default(), Account::default());
        kept.extra = Extra(Some(Box::default()));
        assert_eq!(kept, none);
        assert!(Extra::of(ExtraState::default()).0.is_none());
        kept.extra.reminded_day = Some(0);
        assert_ne!(kept, none);
    }
}
