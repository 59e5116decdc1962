//! Whether a record's events may be folded into an account at all: the
//! check every reader of the log makes before [`Account::apply`]
//! (ARCHITECTURE.md, "A record no reader can use").
//!
//! `apply` never rejects: an event that takes more from a lot than it holds,
//! names a lot, earn, spend or reservation the account does not have, or
//! settles a reservation twice is a bug there, and it panics. A record in
//! the log was written by whoever could reach the log, though (a damaged or
//! forged record, a bug of another build): [`admissible`] answers, without
//! changing anything, whether applying the events in order keeps every
//! invariant of the account (`Account::check_invariants_fully`: no lot,
//! debt or growth negative, conservation, the kept sums) and overflows
//! nothing. A record that fails is void as a whole for every reader.
//!
//! It simulates cheaply, since it runs for every record read from the log:
//! the account is only read, and what the events change is kept beside it,
//! per lot, earn, reservation and spend they name (an [`Overlay`]), so the
//! cost is that of the record, not of the account.

use std::collections::HashMap;
use std::hash::Hash;

use super::{Account, Event, Id, LotAmount, Points, ReservationStatus};

/// Entries an [`Overlay`] searches one by one before it builds an index
/// (most records name a handful of lots; a due expiry may name thousands).
const OVERLAY_LINEAR_ENTRIES_MAX: usize = 32;

/// Whether applying `events` to `account`, in order, keeps every invariant
/// and cannot panic. Err says which event and why.
pub fn admissible(account: &Account, events: &[Event]) -> Result<(), String> {
    let mut sim = Sim::new(account);
    for (i, event) in events.iter().enumerate() {
        sim.event(event).map_err(|why| format!("event {i} ({}): {why}", event.name()))?;
    }
    Ok(())
}

/// What this record changed so far, beside the account it reads.
struct Sim<'a> {
    account: &'a Account,
    /// Lots touched or created: id → points remaining now.
    lots: Overlay<&'a str, Points>,
    /// Lots made or settled pending by this record: id → pending now.
    pending: Overlay<&'a str, bool>,
    /// Earns touched or created, as this record leaves them.
    earns: Overlay<&'a str, EarnSim>,
    /// Reservations made or settled by this record: id → points held (None once settled).
    reservations: Overlay<&'a str, Option<Points>>,
    /// Spends made by this record (their refunds start from nothing).
    spends: Overlay<&'a str, ()>,
    /// Refunded so far per (spend, lot), for those this record refunds into.
    refunded: Overlay<(&'a str, &'a str), Points>,
    available: Points,
    reserved: Points,
    debt: Points,
    written_off_open: Points,
    growth: i64,
    /// The movements, summed as `apply` sums them (only overflow matters).
    totals: [Points; 11],
    day: i64,
    day_earned: Points,
}

#[derive(Clone, Copy)]
struct EarnSim {
    reversed: Points,
    growth: i64,
    growth_reversed: i64,
    growth_expired: i64,
}

impl EarnSim {
    fn growth_in_window(&self) -> i64 {
        (self.growth.saturating_sub(self.growth_reversed).saturating_sub(self.growth_expired)).max(0)
    }
}

/// Indices into [`Sim::totals`].
const ISSUED: usize = 0;
const SPENT: usize = 1;
const REFUNDED: usize = 2;
const REVERSED: usize = 3;
const EXPIRED: usize = 4;
const ADJUSTED_UP: usize = 5;
const ADJUSTED_DOWN: usize = 6;
const PENALIZED: usize = 7;
const HELD: usize = 8;
const RELEASED: usize = 9;
const FORFEITED: usize = 10;

fn add(x: Points, d: Points, what: &str) -> Result<Points, String> {
    x.checked_add(d).ok_or_else(|| format!("{what} would overflow"))
}

/// The points of `lots`, none negative, without overflow.
fn lots_sum(lots: &[LotAmount]) -> Result<Points, String> {
    lots.iter().try_fold(0i64, |s, l| {
        if l.points < 0 {
            return Err(format!("negative points {} for lot {}", l.points, l.lot_id));
        }
        add(s, l.points, "the lots' sum")
    })
}

/// An activity's sums are its rules'.
fn activity(applied: &[super::AppliedRule], points: Points, growth: i64) -> Result<(), String> {
    let (mut p, mut g) = (0i64, 0i64);
    for a in applied {
        p = add(p, a.points, "the activity's points")?;
        g = add(g, a.growth, "the activity's growth")?;
    }
    equal(points, p, "the activity's points")?;
    equal(growth, g, "the activity's growth")
}

fn non_negative(x: i64, what: &str) -> Result<(), String> {
    if x < 0 {
        return Err(format!("{what} is negative: {x}"));
    }
    Ok(())
}

fn equal(headline: Points, moved: Points, what: &str) -> Result<(), String> {
    if headline != moved {
        return Err(format!("{what} says {headline} but its lots move {moved}"));
    }
    Ok(())
}

impl<'a> Sim<'a> {
    fn new(account: &'a Account) -> Sim<'a> {
        let t = &account.totals;
        Sim {
            account,
            lots: Overlay::default(),
            pending: Overlay::default(),
            earns: Overlay::default(),
            reservations: Overlay::default(),
            spends: Overlay::default(),
            refunded: Overlay::default(),
            available: account.available(),
            reserved: account.reserved(),
            debt: account.debt,
            written_off_open: account.extra.written_off_open,
            growth: account.growth,
            totals: [
                t.issued,
                t.spent,
                t.refunded,
                t.reversed,
                t.expired,
                t.adjusted_up,
                t.adjusted_down,
                t.penalized,
                t.held,
                t.released,
                t.forfeited,
            ],
            day: account.day,
            day_earned: account.day_earned,
        }
    }

    fn event(&mut self, event: &'a Event) -> Result<(), String> {
        match event {
            Event::PointsEarned { lot_id, granted, debt_repaid, growth, day, pending: false, .. } => {
                self.earn(lot_id, *granted, *debt_repaid, *growth)?;
                self.count_day(*day, *granted)
            }
            Event::PointsEarned { pending: true, .. }
            | Event::PendingPointsReleased { .. }
            | Event::PendingPointsForfeited { .. }
            | Event::AlertRaised { .. }
            | Event::EarningsHeld { .. }
            | Event::EarningsUnheld { .. } => self.hold_event(event),
            Event::AdjustmentRequested { .. } | Event::AdjustmentApproved { .. } | Event::AdjustmentRejected { .. } => {
                self.approval_event(event)
            }
            Event::PointsSpent { points, lots, spend_id, .. } => {
                equal(*points, self.take(lots)?, "the spend")?;
                self.spends.insert(spend_id, ());
                self.movement(SPENT, *points)
            }
            Event::PointsReserved { reservation_id, lots, .. } => self.reserve(reservation_id, lots),
            Event::ReservationCaptured { reservation_id, spend_id, points, lots, released_lots, .. } => {
                let held = self.settle(reservation_id)?;
                let captured = lots_sum(lots)?;
                equal(*points, captured, "the capture")?;
                let given = self.give(released_lots)?;
                equal(held, add(captured, given, "captured and released points")?, "the reservation")?;
                self.spends.insert(spend_id, ());
                self.movement(SPENT, *points)
            }
            Event::ReservationReleased { reservation_id, lots, .. } => {
                let held = self.settle(reservation_id)?;
                equal(held, self.give(lots)?, "the reservation")
            }
            Event::SpendRefunded { spend_id, points, lots, .. } => self.refund(spend_id, *points, lots),
            Event::EarnReversed { earn_id, points, taken, debt_added, written_off, growth, .. } => {
                self.reverse(earn_id, *points, taken, *debt_added, *written_off, *growth)
            }
            Event::PointsRecovered { lots, points, debt_repaid, written_off } => {
                self.recover(lots, *points, *debt_repaid, *written_off)
            }
            Event::PointsExpired { points, lots, .. } => {
                equal(*points, self.take(lots)?, "the expiry")?;
                self.movement(EXPIRED, *points)
            }
            Event::PointsAdjusted { adjustment_id, points, lots, debt_repaid, .. } => {
                self.adjust(adjustment_id, *points, lots, *debt_repaid)
            }
            Event::AccountFrozen { .. }
            | Event::AccountUnfrozen { .. }
            | Event::LevelChanged { .. }
            | Event::SettlementSetAside { .. } => Ok(()),
            Event::ActivityRecorded { applied, points, growth, .. } => activity(applied, *points, *growth),
            Event::LevelHeld { .. } => Ok(()),
            Event::ExpiryReminderDue { lots, points, .. } => self.reminder(lots, *points),
            Event::GrowthEvaluated { recency_days, frequency, monetary_minor, growth, previous_growth, .. } => {
                if [*recency_days, *frequency, *monetary_minor, *growth, *previous_growth].iter().any(|v| *v < 0) {
                    return Err("an RFM evaluation with a negative figure".into());
                }
                Ok(())
            }
            Event::GrowthAdjusted { adjustment_id, requested, growth, earns, .. } => {
                self.adjust_growth(adjustment_id, *requested, *growth, earns)
            }
            Event::PenaltyApplied { points, taken, debt_added, written_off, growth, growth_earns, .. } => {
                self.penalty(*points, taken, *debt_added, *written_off, *growth, growth_earns)
            }
            Event::GrowthExpired { earns, .. } => earns.iter().try_for_each(|e| self.expire_growth(e)),
        }
    }

    /// A reminder names lots that hold at least the points it reminds of.
    fn reminder(&self, lots: &[super::LotExpiry], points: Points) -> Result<(), String> {
        let mut sum: Points = 0;
        for l in lots {
            let remaining = self.lot(&l.lot_id).ok_or_else(|| format!("a reminder of no lot {}", l.lot_id))?;
            if l.points < 0 || remaining < l.points {
                return Err(format!("lot {} holds {remaining}, not the reminded {}", l.lot_id, l.points));
            }
            sum = add(sum, l.points, "the reminder's points")?;
        }
        non_negative(points, "the reminder's points")?;
        equal(points, sum, "the reminder")
    }

    fn movement(&mut self, which: usize, points: Points) -> Result<(), String> {
        self.totals[which] = add(self.totals[which], points, "a total")?;
        Ok(())
    }

    /// Points left in a lot as this record leaves it (None: no such lot).
    fn lot(&self, id: &str) -> Option<Points> {
        self.lots.get(&id).copied().or_else(|| self.account.lots.get(&Id::of(id)).map(|l| l.remaining))
    }

    /// Events of holds and pending points.
    /// Maker-checker: a request for an id not waiting, a decision on one that is.
    fn approval_event(&self, event: &Event) -> Result<(), String> {
        match event {
            Event::AdjustmentRequested { approval_id, .. }
                if self.account.extra.adjustments.contains_key(approval_id) =>
            {
                Err(format!("adjustment {approval_id} waits for approval already"))
            }
            Event::AdjustmentApproved { approval_id, .. } | Event::AdjustmentRejected { approval_id, .. }
                if !self.account.extra.adjustments.contains_key(approval_id) =>
            {
                Err(format!("no adjustment {approval_id} waits for approval"))
            }
            _ => Ok(()),
        }
    }

    fn hold_event(&mut self, event: &'a Event) -> Result<(), String> {
        match event {
            Event::PointsEarned { lot_id, granted, debt_repaid, growth, day, pending: true, .. } => {
                self.earn_pending(lot_id, *granted, *debt_repaid, *growth)?;
                self.count_day(*day, *granted)
            }
            Event::PendingPointsReleased { lots, points, .. } => {
                equal(*points, self.settle_pending(lots, true)?, "the release")?;
                self.movement(ISSUED, *points)?;
                self.movement(RELEASED, *points)
            }
            Event::PendingPointsForfeited { lots, points, .. } => {
                equal(*points, self.settle_pending(lots, false)?, "the forfeit")?;
                self.movement(FORFEITED, *points)
            }
            _ => Ok(()),
        }
    }

    /// Whether a lot is pending as this record leaves it.
    fn is_pending(&self, id: &str) -> bool {
        self.pending.get(&id).copied().unwrap_or_else(|| self.account.lots.get(&Id::of(id)).is_some_and(|l| l.pending))
    }

    /// Pending lots released or forfeited whole; returns their points.
    fn settle_pending(&mut self, lots: &'a [LotAmount], release: bool) -> Result<Points, String> {
        for l in lots {
            let remaining = self.lot(&l.lot_id).ok_or_else(|| format!("no lot {}", l.lot_id))?;
            if !self.is_pending(&l.lot_id) || remaining != l.points {
                return Err(format!("lot {} is not pending {} points", l.lot_id, l.points));
            }
            self.pending.insert(&l.lot_id, false);
            if release {
                self.available = add(self.available, l.points, "available")?;
            } else {
                self.lots.insert(&l.lot_id, 0);
                // `apply` settles the earn: nothing left to reverse, its growth taken.
                if let Some(mut e) = self.earn_state(&l.lot_id) {
                    let growth = e.growth_in_window();
                    e.reversed = e.reversed.saturating_add(l.points);
                    e.growth_reversed = add(e.growth_reversed, growth, "growth reversed")?;
                    self.growth = add(self.growth, -growth, "growth")?;
                    self.earns.insert(&l.lot_id, e);
                }
            }
        }
        lots_sum(lots)
    }

    /// An earn while held: a pending lot, repaying nothing.
    fn earn_pending(&mut self, id: &'a str, granted: Points, debt_repaid: Points, growth: i64) -> Result<(), String> {
        if debt_repaid != 0 {
            return Err("a pending earn repays debt".into());
        }
        non_negative(granted, "the earn")?;
        if granted > 0 {
            if self.lot(id).is_some() {
                return Err(format!("lot {id} credited twice"));
            }
            self.lots.insert(id, granted);
            self.pending.insert(id, true);
        }
        non_negative(growth, "growth")?;
        self.growth = add(self.growth, growth, "growth")?;
        if self.earn_state(id).is_some_and(|e| e.growth_in_window() > 0) {
            return Err(format!("earn {id} recorded twice"));
        }
        self.earns.insert(id, EarnSim { reversed: 0, growth, growth_reversed: 0, growth_expired: 0 });
        self.movement(HELD, granted)
    }

    fn take(&mut self, lots: &'a [LotAmount]) -> Result<Points, String> {
        for l in lots {
            let remaining = self.lot(&l.lot_id).ok_or_else(|| format!("no lot {}", l.lot_id))?;
            if l.points > 0 && self.is_pending(&l.lot_id) {
                return Err(format!("lot {} is pending", l.lot_id));
            }
            if l.points < 0 || remaining < l.points {
                return Err(format!("lot {} holds {remaining}, not {}", l.lot_id, l.points));
            }
            self.lots.insert(&l.lot_id, remaining - l.points);
            self.available = add(self.available, -l.points, "available")?;
        }
        lots_sum(lots)
    }

    fn give(&mut self, lots: &'a [LotAmount]) -> Result<Points, String> {
        for l in lots {
            let remaining = self.lot(&l.lot_id).ok_or_else(|| format!("no lot {}", l.lot_id))?;
            non_negative(l.points, &format!("points back into lot {}", l.lot_id))?;
            if l.points > 0 && self.is_pending(&l.lot_id) {
                return Err(format!("lot {} is pending", l.lot_id));
            }
            self.lots.insert(&l.lot_id, add(remaining, l.points, "a lot")?);
            self.available = add(self.available, l.points, "available")?;
        }
        lots_sum(lots)
    }

    /// A new lot of `points` (none when there is nothing left to put in one).
    fn credit(&mut self, id: &'a str, points: Points) -> Result<(), String> {
        if points <= 0 {
            return Ok(());
        }
        if self.lot(id).is_some() {
            return Err(format!("lot {id} credited twice"));
        }
        self.lots.insert(id, points);
        self.available = add(self.available, points, "available")?;
        Ok(())
    }

    /// Part of a credit repays debt: never more than the credit, nor than the debt.
    fn repay(&mut self, credit: Points, debt_repaid: Points) -> Result<(), String> {
        non_negative(credit, "the credit")?;
        non_negative(debt_repaid, "debt repaid")?;
        if debt_repaid > credit || debt_repaid > self.debt {
            return Err(format!("repays {debt_repaid} of debt {} from a credit of {credit}", self.debt));
        }
        self.debt -= debt_repaid;
        Ok(())
    }

    fn earn(&mut self, id: &'a str, granted: Points, debt_repaid: Points, growth: i64) -> Result<(), String> {
        self.repay(granted, debt_repaid)?;
        self.credit(id, granted - debt_repaid)?;
        non_negative(growth, "growth")?;
        self.growth = add(self.growth, growth, "growth")?;
        if self.earn_state(id).is_some_and(|e| e.growth_in_window() > 0) {
            // `apply` would replace an earn whose growth the kept sums count.
            return Err(format!("earn {id} recorded twice"));
        }
        let earn = EarnSim { reversed: 0, growth, growth_reversed: 0, growth_expired: 0 };
        self.earns.insert(id, earn);
        self.movement(ISSUED, granted)
    }

    fn count_day(&mut self, day: i64, granted: Points) -> Result<(), String> {
        if self.day != day {
            self.day = day;
            self.day_earned = 0;
        }
        // An action's count is part of the day's (grants are never
        // negative), so it cannot overflow when the day's does not.
        self.day_earned = add(self.day_earned, granted, "the day's earnings")?;
        Ok(())
    }

    fn earn_state(&self, id: &str) -> Option<EarnSim> {
        self.earns.get(&id).copied().or_else(|| {
            self.account.earns.get(&Id::of(id)).map(|e| EarnSim {
                reversed: e.reversed,
                growth: e.growth,
                growth_reversed: e.growth_reversed,
                growth_expired: e.growth_expired,
            })
        })
    }

    fn reserve(&mut self, id: &'a str, lots: &'a [LotAmount]) -> Result<(), String> {
        if self.held(id).is_some_and(|h| h.is_some()) {
            return Err(format!("reservation {id} made twice while open"));
        }
        let held = self.take(lots)?;
        self.reserved = add(self.reserved, held, "reserved")?;
        self.reservations.insert(id, Some(held));
        Ok(())
    }

    /// A reservation as this record leaves it: None when there is none,
    /// Some(None) once settled, Some(Some(points held)) while open.
    fn held(&self, id: &str) -> Option<Option<Points>> {
        self.reservations.get(&id).copied().or_else(|| {
            self.account.reservations.get(&Id::of(id)).map(|r| (r.status == ReservationStatus::Open).then(|| r.held()))
        })
    }

    /// Settles an open reservation; returns what it held.
    fn settle(&mut self, id: &'a str) -> Result<Points, String> {
        let held = self
            .held(id)
            .ok_or_else(|| format!("no reservation {id}"))?
            .ok_or_else(|| format!("reservation {id} settled twice"))?;
        self.reservations.insert(id, None);
        self.reserved = add(self.reserved, -held, "reserved")?;
        Ok(held)
    }

    fn refund(&mut self, spend_id: &'a str, points: Points, lots: &'a [LotAmount]) -> Result<(), String> {
        let made_here = self.spends.get(&spend_id).is_some();
        let recorded = self.account.spends.get(&Id::of(spend_id));
        if !made_here && recorded.is_none() {
            return Err(format!("no spend {spend_id}"));
        }
        for l in lots {
            let before = match self.refunded.get(&(spend_id, l.lot_id.as_str())) {
                Some(r) => *r,
                None if made_here => 0,
                None => recorded.and_then(|s| s.refunded.get(&Id::of(&l.lot_id))).copied().unwrap_or(0),
            };
            self.refunded.insert((spend_id, &l.lot_id), add(before, l.points, "a spend's refunds")?);
        }
        equal(points, self.give(lots)?, "the refund")?;
        self.movement(REFUNDED, points)
    }

    fn reverse(
        &mut self,
        earn_id: &'a str,
        points: Points,
        taken: &'a [LotAmount],
        debt_added: Points,
        written_off: Points,
        growth: i64,
    ) -> Result<(), String> {
        let mut earn = self.earn_state(earn_id).ok_or_else(|| format!("no earn {earn_id}"))?;
        non_negative(debt_added, "debt added")?;
        non_negative(written_off, "written off")?;
        non_negative(growth, "growth reversed")?;
        let took = self.take(taken)?;
        let clawed = add(add(took, debt_added, "the reversal")?, written_off, "the reversal")?;
        equal(points, clawed, "the reversal (taken + debt + written off)")?;
        self.debt = add(self.debt, debt_added, "debt")?;
        self.written_off_open = add(self.written_off_open, written_off, "written off")?;
        self.growth -= growth;
        non_negative(self.growth, "growth")?;
        earn.reversed = add(earn.reversed, points, "the earn's reversals")?;
        earn.growth_reversed = add(earn.growth_reversed, growth, "the earn's reversed growth")?;
        self.earns.insert(earn_id, earn);
        self.movement(REVERSED, add(took, debt_added, "the reversal")?)
    }

    /// Points that came back into lots taken for what a reversal wrote off
    /// and for the debt: never more than either is.
    fn recover(
        &mut self,
        lots: &'a [LotAmount],
        points: Points,
        debt_repaid: Points,
        written_off: Points,
    ) -> Result<(), String> {
        non_negative(debt_repaid, "debt repaid")?;
        non_negative(written_off, "written off recovered")?;
        if debt_repaid > self.debt || written_off > self.written_off_open {
            return Err(format!(
                "recovers {debt_repaid} of debt {} and {written_off} of {} written off",
                self.debt, self.written_off_open
            ));
        }
        let took = self.take(lots)?;
        equal(points, took, "the recovery")?;
        equal(add(debt_repaid, written_off, "the recovery")?, took, "the recovery (debt repaid + written off)")?;
        self.debt -= debt_repaid;
        self.written_off_open -= written_off;
        self.movement(REVERSED, written_off)
    }

    fn adjust(
        &mut self,
        id: &'a str,
        points: Points,
        lots: &'a [LotAmount],
        debt_repaid: Points,
    ) -> Result<(), String> {
        if points > 0 {
            self.repay(points, debt_repaid)?;
            self.credit(id, points - debt_repaid)?;
            return self.movement(ADJUSTED_UP, points);
        }
        let down = points.checked_neg().ok_or("the adjustment would overflow")?;
        equal(down, self.take(lots)?, "the debit")?;
        self.movement(ADJUSTED_DOWN, down)
    }

    /// Growth credited as a new earn of no points, or taken from earns that
    /// hold it (never more than asked).
    fn adjust_growth(
        &mut self,
        id: &'a str,
        requested: i64,
        growth: i64,
        earns: &'a [LotAmount],
    ) -> Result<(), String> {
        if growth > 0 {
            if !earns.is_empty() || growth != requested || self.earn_state(id).is_some() {
                return Err(format!("growth credit {id} of {growth} (asked {requested}) is not a new earn"));
            }
            self.growth = add(self.growth, growth, "growth")?;
            let sim = EarnSim { reversed: 0, growth, growth_reversed: 0, growth_expired: 0 };
            self.earns.insert(id, sim);
            return Ok(());
        }
        if requested >= 0 || growth < requested {
            return Err(format!("growth taken {growth} against {requested} asked"));
        }
        let taken = self.take_growth(earns)?;
        equal(-growth, taken, "the growth adjustment")?;
        self.growth -= taken;
        non_negative(self.growth, "growth")
    }

    /// Growth taken from earns that hold it in the window: its sum.
    fn take_growth(&mut self, earns: &'a [LotAmount]) -> Result<i64, String> {
        let mut taken = 0i64;
        for e in earns {
            let mut earn = self.earn_state(&e.lot_id).ok_or_else(|| format!("no earn {}", e.lot_id))?;
            if e.points < 0 || e.points > earn.growth_in_window() {
                return Err(format!("earn {} holds {} growth, not {}", e.lot_id, earn.growth_in_window(), e.points));
            }
            earn.growth_reversed = add(earn.growth_reversed, e.points, "the earn's taken growth")?;
            self.earns.insert(&e.lot_id, earn);
            taken = add(taken, e.points, "growth taken")?;
        }
        Ok(taken)
    }

    /// A penalty: its lots, debt and write-off sum to its points; growth
    /// taken from earns that hold it in the window.
    fn penalty(
        &mut self,
        points: Points,
        taken: &'a [LotAmount],
        debt_added: Points,
        written_off: Points,
        growth: i64,
        growth_earns: &'a [LotAmount],
    ) -> Result<(), String> {
        non_negative(debt_added, "debt added")?;
        non_negative(written_off, "written off")?;
        non_negative(growth, "growth taken")?;
        let took = self.take(taken)?;
        equal(points, add(add(took, debt_added, "the penalty")?, written_off, "the penalty")?, "the penalty")?;
        self.debt = add(self.debt, debt_added, "debt")?;
        let g = self.take_growth(growth_earns)?;
        equal(growth, g, "the penalty's growth")?;
        self.growth -= growth;
        non_negative(self.growth, "growth")?;
        self.movement(PENALIZED, add(took, debt_added, "the penalty")?)
    }

    fn expire_growth(&mut self, e: &'a LotAmount) -> Result<(), String> {
        let mut earn = self.earn_state(&e.lot_id).ok_or_else(|| format!("no earn {}", e.lot_id))?;
        if e.points < 0 || e.points > earn.growth_in_window() {
            return Err(format!(
                "earn {} has {} growth in the window, not {}",
                e.lot_id,
                earn.growth_in_window(),
                e.points
            ));
        }
        earn.growth_expired = add(earn.growth_expired, e.points, "expired growth")?;
        self.earns.insert(&e.lot_id, earn);
        Ok(())
    }
}

/// A small map of what a record changed: searched one by one while small,
/// indexed past [`OVERLAY_LINEAR_ENTRIES_MAX`] entries.
struct Overlay<K, V> {
    entries: Vec<(K, V)>,
    index: Option<HashMap<K, usize>>,
}

impl<K, V> Default for Overlay<K, V> {
    fn default() -> Self {
        Overlay { entries: Vec::new(), index: None }
    }
}

impl<K: Copy + Eq + Hash, V> Overlay<K, V> {
    fn position(&self, key: &K) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.entries.iter().position(|(k, _)| k == key),
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.position(key).map(|i| &self.entries[i].1)
    }

    fn insert(&mut self, key: K, value: V) {
        if let Some(i) = self.position(&key) {
            self.entries[i].1 = value;
            return;
        }
        self.entries.push((key, value));
        let i = self.entries.len() - 1;
        match &mut self.index {
            Some(index) => {
                index.insert(key, i);
            }
            None if self.entries.len() > OVERLAY_LINEAR_ENTRIES_MAX => {
                self.index = Some(self.entries.iter().enumerate().map(|(i, (k, _))| (*k, i)).collect());
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{decide, AccountKey, Command, CommandBody, ExpiryCause, Millis, Programme, ReleaseCause};

    const T0: Millis = 1_773_100_800_000;
    const MINUTE_MS: i64 = 60_000;

    /// A command of a small alphabet; `target` names an earlier request.
    fn body(kind: u8, points: i64, target: usize) -> CommandBody {
        let id = format!("r{target}");
        match kind % 9 {
            0 | 1 => CommandBody::Earn {
                points,
                reason: "purchase".into(),
                order_ref: None,
                growth: points / 10,
                expires_at: kind.is_multiple_of(2).then_some(T0 + 30 * MINUTE_MS),
            },
            2 => CommandBody::Spend { points, order_ref: None, order_cash_amount: None },
            3 => CommandBody::Reserve { points, order_ref: id, timeout_seconds: 600, order_cash_amount: None },
            4 => CommandBody::Capture { reservation_id: id, points: kind.is_multiple_of(2).then_some(points) },
            5 => CommandBody::Release { reservation_id: id },
            6 => CommandBody::Refund { spend_id: id, points },
            7 => CommandBody::ReverseEarn { earn_id: id, points, growth: 0 },
            _ => CommandBody::Adjust { points: points - 250, operator: "ops".into(), reason: "fix".into() },
        }
    }

    /// An account folded from what `decide` made of `steps` (a minute
    /// apart, so lots expire and holds time out on the way), asserting that
    /// every record it made is admissible.
    fn history(steps: &[(u8, i64, usize)]) -> Account {
        let programme = Programme::example("shop", "points");
        let mut a = Account::default();
        for (i, &(kind, points, target)) in steps.iter().enumerate() {
            let cmd = Command {
                request_id: format!("r{i}"),
                account: AccountKey::new("shop", "points", "m"),
                body: body(kind, points, target % (i + 1)),
                context: Default::default(),
            };
            if let Ok(events) = decide(Some(&programme), &a, &cmd, T0 + i as i64 * MINUTE_MS) {
                assert_eq!(admissible(&a, &events), Ok(()), "{events:?}");
                events.iter().for_each(|e| a.apply(e));
            }
        }
        a
    }

    fn lots(l: &[(&str, Points)]) -> Vec<LotAmount> {
        l.iter().map(|(id, p)| LotAmount::new(id, *p)).collect()
    }

    fn spent(l: &[(&str, Points)]) -> Event {
        let lots = lots(l);
        Event::PointsSpent {
            spend_id: "s".into(),
            order_ref: None,
            points: crate::domain::sum(&lots),
            lots,
            order_cash_minor: 0,
        }
    }

    /// Lot r0 holds 70 points (30 of its 100 are held by r2, open), r1 holds 30.
    fn member() -> Account {
        history(&[(1, 100, 0), (1, 30, 0), (3, 30, 0)])
    }

    #[test]
    fn a_spend_from_a_lot_that_does_not_exist_is_not_admissible() {
        let why = admissible(&member(), &[spent(&[("nowhere", 10)])]).unwrap_err();
        assert!(why.contains("no lot nowhere"), "{why}");
    }

    #[test]
    fn taking_more_than_a_lot_holds_is_not_admissible_even_in_two_steps() {
        assert_eq!(member().lots.get(&Id::of("r0")).map(|l| l.remaining), Some(70));
        assert!(admissible(&member(), &[spent(&[("r0", 71)])]).is_err());
        assert!(admissible(&member(), &[spent(&[("r0", 40)]), spent(&[("r0", 40)])]).is_err());
        assert_eq!(admissible(&member(), &[spent(&[("r0", 40)]), spent(&[("r0", 30)])]), Ok(()));
    }

    #[test]
    fn settling_a_reservation_twice_is_not_admissible() {
        let a = member();
        let (reservation_id, held) = a
            .reservations
            .iter()
            .next()
            .map(|(id, r)| (id.to_string(), crate::domain::Share::amounts(&r.lots)))
            .unwrap();
        let release = Event::ReservationReleased {
            reservation_id,
            points: crate::domain::sum(&held),
            lots: held,
            cause: ReleaseCause::Requested,
        };
        assert_eq!(admissible(&a, std::slice::from_ref(&release)), Ok(()));
        let why = admissible(&a, &[release.clone(), release]).unwrap_err();
        assert!(why.contains("settled twice"), "{why}");
    }

    #[test]
    fn negative_amounts_are_not_admissible() {
        let a = member();
        assert!(admissible(&a, &[spent(&[("r0", -5)])]).is_err());
        let expired = Event::PointsExpired {
            points: -5,
            lots: Vec::new(),
            cause: ExpiryCause::Due,
            reason: String::new(),
            operator: String::new(),
        };
        assert!(admissible(&a, &[expired]).is_err());
    }

    #[test]
    fn an_rfm_evaluation_is_admissible_with_non_negative_figures_only() {
        let evaluated = |growth: i64, frequency: i64| Event::GrowthEvaluated {
            period_start: 20_454,
            recency_days: 2,
            frequency,
            monetary_minor: 150_000,
            growth,
            previous_growth: 0,
        };
        assert_eq!(admissible(&member(), &[evaluated(9, 5)]), Ok(()));
        assert!(admissible(&member(), &[evaluated(-1, 5)]).is_err());
        assert!(admissible(&member(), &[evaluated(9, -5)]).is_err());
    }

    #[test]
    fn an_earn_that_would_overflow_the_account_is_not_admissible() {
        let earn = |id: &str| Event::PointsEarned {
            lot_id: id.into(),
            reason: "purchase".into(),
            order_ref: None,
            requested: Points::MAX,
            granted: Points::MAX,
            forfeited: 0,
            debt_repaid: 0,
            expires_at: None,
            growth: 0,
            day: 0,
            pending: false,
        };
        let why = admissible(&member(), &[earn("huge")]).unwrap_err();
        assert!(why.contains("overflow"), "{why}");
        assert!(admissible(&Account::default(), &[earn("a"), earn("b")]).is_err());
    }

    #[test]
    fn a_headline_that_disagrees_with_its_lots_is_not_admissible() {
        let lying = Event::PointsSpent {
            spend_id: "s".into(),
            order_ref: None,
            points: 1,
            lots: lots(&[("r0", 50)]),
            order_cash_minor: 0,
        };
        assert!(admissible(&member(), &[lying]).is_err());
    }

    fn earned_event(id: String, n: i64, b: bool) -> Event {
        Event::PointsEarned {
            lot_id: id,
            reason: "a".into(),
            order_ref: None,
            requested: n,
            granted: n,
            forfeited: 0,
            debt_repaid: if b { n } else { 0 },
            expires_at: b.then_some(T0),
            growth: n,
            day: 1,
            pending: false,
        }
    }

    /// Any event, naming the lots, earns, spends and reservations a short
    /// history makes (r0..r7) or none, with amounts of either sign.
    fn any_event() -> impl Strategy<Value = Event> {
        let id = (0..9u8).prop_map(|i| if i == 8 { "x".to_string() } else { format!("r{i}") });
        let amount = -3i64..400;
        let some_lots = vec((id.clone(), amount.clone()), 0..3)
            .prop_map(|l| l.into_iter().map(|(id, p)| LotAmount { lot_id: id, points: p }).collect::<Vec<_>>());
        (0..16u8, id, amount, some_lots.clone(), some_lots, any::<bool>()).prop_map(|(k, id, n, l, m, b)| match k {
            0 => earned_event(id, n, b),
            1 => Event::PointsSpent { spend_id: id, order_ref: None, points: n, lots: l, order_cash_minor: 0 },
            2 => Event::PointsReserved {
                reservation_id: id,
                order_ref: "o".into(),
                points: n,
                lots: l,
                expires_at: T0,
                order_cash_minor: 0,
            },
            3 => Event::ReservationCaptured {
                reservation_id: id.clone(),
                spend_id: id,
                points: n,
                lots: l,
                released_points: 0,
                released_lots: m,
                order_cash_minor: 0,
            },
            4 => Event::ReservationReleased { reservation_id: id, points: n, lots: l, cause: ReleaseCause::Requested },
            5 => Event::SpendRefunded { refund_id: "f".into(), spend_id: id, points: n, lots: l },
            6 => Event::EarnReversed {
                reversal_id: "v".into(),
                earn_id: id,
                points: n,
                taken: l,
                debt_added: if b { n } else { 0 },
                written_off: 0,
                growth: n / 2,
            },
            7 => Event::PointsExpired {
                points: n,
                lots: l,
                cause: ExpiryCause::Due,
                reason: String::new(),
                operator: String::new(),
            },
            8 => Event::PointsAdjusted {
                adjustment_id: id,
                points: if b { n } else { -n },
                operator: "o".into(),
                reason: "r".into(),
                lots: l,
                debt_repaid: 0,
                expires_at: None,
            },
            9 => Event::GrowthExpired { earns: l, growth: n },
            10 => Event::AccountFrozen { earning: b, spending: !b, operator: "o".into(), reason: "r".into() },
            11 => Event::AccountUnfrozen { earning: b, spending: !b, operator: "o".into(), reason: "r".into() },
            12 => Event::PointsRecovered {
                points: n,
                lots: l,
                debt_repaid: if b { n } else { 0 },
                written_off: if b { 0 } else { n },
            },
            13 => Event::SettlementSetAside { reason: id, retry_at: n },
            14 => Event::ExpiryReminderDue {
                day: n,
                points: if b { n } else { crate::domain::sum(&l) },
                lots: l
                    .into_iter()
                    .map(|x| crate::domain::LotExpiry { lot_id: x.lot_id, points: x.points, expires_at: T0 })
                    .collect(),
            },
            _ => Event::LevelChanged { from: String::new(), to: id, growth: n, why: String::new() },
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn every_record_decide_makes_is_admissible(steps in vec((any::<u8>(), 1i64..500, any::<usize>()), 1..40)) {
            history(&steps);
        }

        /// What the check admits, `apply` folds without a panic (debug
        /// builds check every invariant after each event) and leaves every
        /// invariant holding.
        #[test]
        fn admitted_events_apply_without_a_panic_and_keep_every_invariant(
            steps in vec((any::<u8>(), 1i64..500, any::<usize>()), 1..12),
            events in vec(any_event(), 1..4),
        ) {
            let mut a = history(&steps);
            if admissible(&a, &events).is_ok() {
                events.iter().for_each(|e| a.apply(e));
                prop_assert_eq!(a.check_invariants_fully(), Ok(()));
            }
        }
    }
}
