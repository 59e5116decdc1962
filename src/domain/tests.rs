//! Given / when / then tests of every rule in `decide`, through one helper.

use super::*;

pub(super) const DAY: i64 = 86_400_000;
/// 2026-03-10T00:00:00Z
pub(super) const T0: Millis = 1_773_100_800_000;

/// Given a programme and the history so far, when a command arrives at `now`,
/// then these events (folded into the account) or this rejection.
pub(super) struct Scenario {
    pub(super) programme: Programme,
    pub(super) account: Account,
    now: Millis,
}

fn key() -> AccountKey {
    AccountKey::new("shop", "points", "m1")
}

impl Scenario {
    pub(super) fn new() -> Scenario {
        let mut p = Programme::example("shop", "points");
        p.validity_days = 0;
        Scenario { programme: p, account: Account::default(), now: T0 }
    }

    pub(super) fn rules(mut self, f: impl FnOnce(&mut Programme)) -> Self {
        f(&mut self.programme);
        self
    }

    pub(super) fn at(&mut self, now: Millis) -> &mut Self {
        self.now = now;
        self
    }

    fn given_events(&mut self, events: &[Event]) -> &mut Self {
        events.iter().for_each(|e| self.account.apply(e));
        self
    }

    fn when(&self, id: &str, body: CommandBody) -> Result<Vec<Event>, Rejection> {
        let cmd = Command { request_id: id.into(), account: key(), body, context: Default::default() };
        decide(Some(&self.programme), &self.account, &cmd, self.now)
    }

    /// Decides and folds; panics on a rejection.
    pub(super) fn then_ok(&mut self, id: &str, body: CommandBody) -> Vec<Event> {
        let events = self.when(id, body).unwrap_or_else(|r| panic!("{id} rejected: {r:?}"));
        self.given_events(&events);
        self.account.check_invariants_fully().unwrap();
        assert_eq!(due_at(&self.account, Some(&self.programme)), due_at_counted(&self.account, &self.programme));
        events
    }

    pub(super) fn then_rejects(&self, id: &str, body: CommandBody, reason: Reason) {
        match self.when(id, body) {
            Err(r) => assert_eq!(r.reason, reason, "{}", r.message),
            Ok(events) => panic!("{id} accepted: {events:?}"),
        }
    }

    pub(super) fn earn(&mut self, id: &str, points: Points, expires_at: Option<Millis>) -> Vec<Event> {
        self.then_ok(id, earn_body(points, "purchase", expires_at))
    }

    pub(super) fn available(&self) -> Points {
        self.account.available()
    }
}

/// `due_at` as it was before the account kept its due instants: every lot,
/// reservation and earn looked at.
fn due_at_counted(a: &Account, p: &Programme) -> Option<Millis> {
    let lots = a.lots.values().filter(|l| l.remaining > 0).filter_map(|l| l.expires_at);
    let holds = a.reservations.values().filter(|r| r.status == ReservationStatus::Open).map(|r| r.expires_at);
    let growth = (p.level_window_days > 0)
        .then(|| {
            a.earns.values().filter(|e| e.growth_in_window() > 0).map(|e| e.day + i64::from(p.level_window_days)).min()
        })
        .flatten()
        .and_then(calendar::day_to_date)
        .and_then(|d| calendar::start_of_day(p.time_zone, d));
    // The RFM evaluation is kept as one instant already (no map to count).
    let rfm = rfm_next_evaluation(p, a).map(|(_, at)| at);
    let reminder = a
        .lots
        .values()
        .filter_map(Lot::to_remind)
        .filter_map(|at| decide::reminder_day(p, at))
        .min()
        .map(|d| a.extra.reminded_day.map_or(d, |last| d.max(last + 1)))
        .and_then(|d| decide::day_start(p, d));
    lots.chain(holds).chain(growth).chain(rfm).chain(reminder).min()
}

fn earn_body(points: Points, reason: &str, expires_at: Option<Millis>) -> CommandBody {
    CommandBody::Earn { points, reason: reason.into(), order_ref: None, growth: 0, expires_at }
}

fn spend(points: Points) -> CommandBody {
    CommandBody::Spend { points, order_ref: None, order_cash_amount: None }
}

pub(super) fn lots(v: &[(&str, Points)]) -> Vec<LotAmount> {
    v.iter().map(|(id, p)| LotAmount::new(id, *p)).collect()
}

fn spent_lots(events: &[Event]) -> Vec<LotAmount> {
    events
        .iter()
        .find_map(|e| match e {
            Event::PointsSpent { lots, .. } => Some(lots.clone()),
            _ => None,
        })
        .expect("a PointsSpent event")
}

#[test]
fn earn_creates_a_lot_with_the_programmes_validity_rounded_to_month_end_in_its_zone() {
    let mut s = Scenario::new().rules(|p| {
        p.validity_days = 30;
        p.validity_rounding = ValidityRounding::EndOfMonth;
        p.time_zone = chrono_tz::Asia::Shanghai;
    });
    // 2026-03-10 + 30 days = 2026-04-09 → end of April in Shanghai = 2026-04-30T16:00Z.
    let events = s.earn("e1", 100, None);
    let Event::PointsEarned { granted, expires_at, .. } = &events[0] else { panic!() };
    assert_eq!(*granted, 100);
    assert_eq!(*expires_at, Some(1_777_564_800_000));
    assert_eq!(s.account.lots[&Id::of("e1")].remaining, 100);
}

#[test]
fn quarter_and_year_rounding() {
    let mut p = Programme::example("t", "p");
    p.time_zone = chrono_tz::UTC;
    p.validity_days = 1;
    p.validity_rounding = ValidityRounding::EndOfQuarter;
    // 2026-03-11 → quarter ends 2026-04-01T00:00Z
    assert_eq!(calendar::lot_expiry(&p, T0), Some(1_775_001_600_000));
    p.validity_rounding = ValidityRounding::EndOfYear;
    assert_eq!(calendar::lot_expiry(&p, T0), Some(1_798_761_600_000));
    p.validity_days = 0;
    assert_eq!(calendar::lot_expiry(&p, T0), None);
}

#[test]
fn spend_takes_soonest_expiring_lots_first_and_never_expiring_last() {
    let mut s = Scenario::new();
    s.earn("never", 100, None);
    s.earn("late", 100, Some(T0 + 30 * DAY));
    s.earn("soon", 100, Some(T0 + 5 * DAY));
    let events = s.then_ok("s1", spend(250));
    assert_eq!(spent_lots(&events), lots(&[("soon", 100), ("late", 100), ("never", 50)]));
    assert_eq!(s.available(), 50);
}

#[test]
fn spend_beyond_the_balance_is_refused() {
    let mut s = Scenario::new();
    s.earn("e1", 100, None);
    s.then_rejects("s1", spend(101), Reason::InsufficientPoints);
    s.then_rejects("s1", spend(0), Reason::InvalidAmount);
    s.then_rejects("s1", spend(-5), Reason::InvalidAmount);
}

#[test]
fn commands_on_an_unconfigured_programme_are_refused() {
    let s = Scenario::new();
    let cmd = Command { request_id: "x".into(), account: key(), body: spend(1), context: Default::default() };
    assert_eq!(decide(None, &s.account, &cmd, T0).unwrap_err().reason, Reason::ProgrammeNotFound);
}

#[test]
fn partial_capture_spends_part_and_releases_the_rest() {
    let mut s = Scenario::new();
    s.earn("a", 30, Some(T0 + DAY));
    s.earn("b", 70, Some(T0 + 9 * DAY));
    s.then_ok(
        "r1",
        CommandBody::Reserve { points: 50, order_ref: "o1".into(), timeout_seconds: 900, order_cash_amount: None },
    );
    assert_eq!((s.account.available(), s.account.reserved()), (50, 50));
    let events = s.then_ok("c1", CommandBody::Capture { reservation_id: "r1".into(), points: Some(40) });
    assert_eq!(
        events,
        vec![Event::ReservationCaptured {
            reservation_id: "r1".into(),
            spend_id: "c1".into(),
            points: 40,
            lots: lots(&[("a", 30), ("b", 10)]),
            released_points: 10,
            released_lots: lots(&[("b", 10)]),
            order_cash_minor: 0
        }]
    );
    assert_eq!((s.account.available(), s.account.reserved()), (60, 0));
    s.then_rejects(
        "c2",
        CommandBody::Capture { reservation_id: "r1".into(), points: None },
        Reason::ReservationSettled,
    );
    s.then_rejects("c3", CommandBody::Release { reservation_id: "nope".into() }, Reason::ReservationNotFound);
    // The capture is a spend that can be refunded.
    s.then_ok("rf", CommandBody::Refund { spend_id: "c1".into(), points: 40 });
    assert_eq!(s.available(), 100);
}

#[test]
fn capture_beyond_the_hold_is_refused_and_release_returns_everything() {
    let mut s = Scenario::new();
    s.earn("a", 100, None);
    s.then_ok(
        "r1",
        CommandBody::Reserve { points: 60, order_ref: "o".into(), timeout_seconds: 60, order_cash_amount: None },
    );
    s.then_rejects(
        "c",
        CommandBody::Capture { reservation_id: "r1".into(), points: Some(61) },
        Reason::CaptureExceedsReservation,
    );
    s.then_ok("rel", CommandBody::Release { reservation_id: "r1".into() });
    assert_eq!((s.available(), s.account.reserved()), (100, 0));
    s.then_rejects("rel2", CommandBody::Release { reservation_id: "r1".into() }, Reason::ReservationSettled);
}

#[test]
fn a_reservation_past_its_timeout_is_released_by_the_scheduler() {
    let mut s = Scenario::new();
    s.earn("a", 100, None);
    s.then_ok(
        "r1",
        CommandBody::Reserve { points: 60, order_ref: "o".into(), timeout_seconds: 60, order_cash_amount: None },
    );
    assert_eq!(due_at(&s.account, Some(&s.programme)), Some(T0 + 60_000));
    s.at(T0 + 59_999);
    assert!(s.then_ok("", CommandBody::Tick).is_empty());
    s.at(T0 + 60_000);
    let events = s.then_ok("", CommandBody::Tick);
    assert!(matches!(&events[..], [Event::ReservationReleased { cause: ReleaseCause::TimedOut, points: 60, .. }]));
    assert_eq!((s.available(), s.account.reserved()), (100, 0));
    // Capturing afterwards: the hold is gone.
    s.then_rejects("c", CommandBody::Capture { reservation_id: "r1".into(), points: None }, Reason::ReservationSettled);
}

#[test]
fn partial_refund_goes_back_to_the_original_lots_latest_expiry_first() {
    let mut s = Scenario::new();
    s.earn("soon", 50, Some(T0 + DAY));
    s.earn("late", 50, Some(T0 + 10 * DAY));
    s.then_ok("s1", spend(80));
    let events = s.then_ok("rf1", CommandBody::Refund { spend_id: "s1".into(), points: 20 });
    assert_eq!(
        events,
        vec![Event::SpendRefunded {
            refund_id: "rf1".into(),
            spend_id: "s1".into(),
            points: 20,
            lots: lots(&[("late", 20)])
        }]
    );
    s.then_rejects("rf2", CommandBody::Refund { spend_id: "s1".into(), points: 61 }, Reason::RefundExceedsSpend);
    s.then_rejects("rf3", CommandBody::Refund { spend_id: "nope".into(), points: 1 }, Reason::SpendNotFound);
    s.then_ok("rf4", CommandBody::Refund { spend_id: "s1".into(), points: 60 });
    assert_eq!(s.account.lots[&Id::of("soon")].remaining, 50);
    assert_eq!(s.account.lots[&Id::of("late")].remaining, 50);
    s.then_rejects("rf5", CommandBody::Refund { spend_id: "s1".into(), points: 1 }, Reason::RefundExceedsSpend);
}

#[test]
fn partial_refund_after_one_of_the_lots_expired_expires_that_part_at_once() {
    let mut s = Scenario::new();
    s.earn("soon", 50, Some(T0 + DAY));
    s.earn("late", 50, Some(T0 + 10 * DAY));
    s.then_ok("s1", spend(100));
    s.at(T0 + 2 * DAY);
    // Refund 70: 50 back into "late" (still live), 20 into "soon" (expired).
    let events = s.then_ok("rf1", CommandBody::Refund { spend_id: "s1".into(), points: 70 });
    assert_eq!(
        events,
        vec![
            Event::SpendRefunded {
                refund_id: "rf1".into(),
                spend_id: "s1".into(),
                points: 70,
                lots: lots(&[("late", 50), ("soon", 20)])
            },
            Event::PointsExpired {
                points: 20,
                lots: lots(&[("soon", 20)]),
                cause: ExpiryCause::Due,
                reason: String::new(),
                operator: String::new()
            },
        ]
    );
    assert_eq!(s.available(), 50);
    assert_eq!(s.account.totals.expired, 20);
}

#[test]
fn due_lots_expire_before_any_command_and_on_tick() {
    let mut s = Scenario::new();
    s.earn("soon", 40, Some(T0 + DAY));
    s.earn("late", 60, Some(T0 + 10 * DAY));
    s.at(T0 + DAY);
    // A spend of 60 sees only the live lot.
    let events = s.then_ok("s1", spend(60));
    assert!(matches!(&events[0], Event::PointsExpired { points: 40, cause: ExpiryCause::Due, .. }));
    assert_eq!(spent_lots(&events), lots(&[("late", 60)]));
    assert_eq!(s.available(), 0);
    s.then_rejects("s2", spend(1), Reason::InsufficientPoints);
}

#[test]
fn expire_all_points_recycles_everything_including_holds() {
    let mut s = Scenario::new();
    s.earn("a", 100, None);
    s.then_ok(
        "r1",
        CommandBody::Reserve { points: 30, order_ref: "o".into(), timeout_seconds: 60, order_cash_amount: None },
    );
    let recycle = |reason: &str, operator: &str| CommandBody::Expire {
        all_points: true,
        reason: reason.into(),
        operator: operator.into(),
    };
    s.then_rejects("x", recycle("", "risk-ops"), Reason::MissingField);
    s.then_rejects("x", recycle("blacklisted", ""), Reason::MissingField);
    let events = s.then_ok("x", recycle("blacklisted", "risk-ops"));
    assert!(matches!(&events[0], Event::ReservationReleased { cause: ReleaseCause::Recycled, points: 30, .. }));
    assert!(matches!(&events[1], Event::PointsExpired { points: 100, cause: ExpiryCause::AllPoints, .. }));
    assert!(matches!(&events[1], Event::PointsExpired { operator, .. } if operator == "risk-ops"));
    assert_eq!((s.available(), s.account.reserved()), (0, 0));
    // Nothing due: an accepted no-op.
    let due_only = CommandBody::Expire { all_points: false, reason: String::new(), operator: String::new() };
    assert!(s.then_ok("y", due_only).is_empty());
}

#[test]
fn clawback_within_balance_takes_what_is_there_and_writes_off_the_rest() {
    let mut s = Scenario::new().rules(|p| p.clawback_policy = ClawbackPolicy::WithinBalance);
    s.earn("e1", 100, None);
    s.earn("e2", 20, None);
    s.then_ok("s1", spend(90));
    let events = s.then_ok("rv", CommandBody::ReverseEarn { earn_id: "e1".into(), points: 100, growth: 0 });
    assert_eq!(
        events,
        vec![Event::EarnReversed {
            reversal_id: "rv".into(),
            earn_id: "e1".into(),
            points: 100,
            taken: lots(&[("e1", 10), ("e2", 20)]),
            debt_added: 0,
            written_off: 70,
            growth: 0,
        }]
    );
    assert_eq!((s.available(), s.account.debt), (0, 0));
    s.then_rejects(
        "rv2",
        CommandBody::ReverseEarn { earn_id: "e1".into(), points: 1, growth: 0 },
        Reason::ReversalExceedsEarn,
    );
    s.then_rejects(
        "rv3",
        CommandBody::ReverseEarn { earn_id: "zz".into(), points: 1, growth: 0 },
        Reason::EarnNotFound,
    );
}

#[test]
fn clawback_into_debt_is_repaid_first_by_later_earns() {
    let mut s = Scenario::new().rules(|p| p.clawback_policy = ClawbackPolicy::AllowDebt);
    s.earn("e1", 100, None);
    s.then_ok("s1", spend(80));
    s.then_ok("rv", CommandBody::ReverseEarn { earn_id: "e1".into(), points: 100, growth: 0 });
    assert_eq!((s.available(), s.account.debt), (0, 80));
    let events = s.earn("e2", 50, None);
    assert!(matches!(&events[0], Event::PointsEarned { granted: 50, debt_repaid: 50, .. }));
    assert_eq!((s.available(), s.account.debt), (0, 30));
    assert!(!s.account.lots.contains_key(&Id::of("e2")), "a fully repaying earn leaves no lot");
    s.earn("e3", 50, None);
    assert_eq!((s.available(), s.account.debt), (20, 0));
    assert_eq!(s.account.lots[&Id::of("e3")].remaining, 20);
    // A credit adjustment repays debt the same way.
    s.then_ok("s2", spend(20));
    s.then_ok("rv2", CommandBody::ReverseEarn { earn_id: "e3".into(), points: 10, growth: 0 });
    assert_eq!(s.account.debt, 10);
    s.then_ok("adj", CommandBody::Adjust { points: 15, operator: "ops1".into(), reason: "goodwill".into() });
    assert_eq!((s.available(), s.account.debt), (5, 0));
}

#[test]
fn growth_rises_with_earns_and_falls_with_reversals_within_what_the_earn_added() {
    let mut s = Scenario::new();
    s.then_ok(
        "e1",
        CommandBody::Earn {
            points: 10,
            reason: "purchase".into(),
            order_ref: Some("o1".into()),
            growth: 300,
            expires_at: None,
        },
    );
    assert_eq!(s.account.growth, 300);
    s.then_rejects(
        "rv",
        CommandBody::ReverseEarn { earn_id: "e1".into(), points: 5, growth: 301 },
        Reason::GrowthReversalExceedsEarn,
    );
    s.then_ok("rv", CommandBody::ReverseEarn { earn_id: "e1".into(), points: 5, growth: 200 });
    assert_eq!(s.account.growth, 100);
}

#[test]
fn points_may_pay_at_most_the_programmes_share_of_an_order() {
    // 100 points = 1 yuan; points may pay 50% of an order.
    let mut s = Scenario::new().rules(|p| p.max_order_share_percent = 50);
    s.earn("e1", 100_000, None);
    let spend_for = |points, cash| CommandBody::Spend { points, order_ref: Some("o".into()), order_cash_amount: cash };
    // A 100.00 yuan order (10_000 fen): at most 50 yuan = 5_000 points.
    s.then_ok("s1", spend_for(5_000, Some(10_000)));
    s.then_rejects("s2", spend_for(5_001, Some(10_000)), Reason::OrderShareExceeded);
    s.then_rejects("s3", spend_for(10, None), Reason::OrderCashAmountRequired);
    s.then_rejects(
        "r1",
        CommandBody::Reserve {
            points: 5_001,
            order_ref: "o".into(),
            timeout_seconds: 60,
            order_cash_amount: Some(10_000),
        },
        Reason::OrderShareExceeded,
    );
}

#[test]
fn daily_caps_truncate_or_reject_and_reset_on_the_next_programme_day() {
    let truncate = |p: &mut Programme| {
        p.member_daily_earn_cap = 100;
        p.action_daily_earn_caps.insert("check_in".into(), 10);
        p.time_zone = chrono_tz::Asia::Shanghai;
    };
    let mut s = Scenario::new().rules(truncate);
    // T0 = 08:00 in Shanghai. Caps hit exactly, then truncated.
    s.then_ok("a", earn_body(90, "purchase", None));
    let e = s.then_ok("b", earn_body(15, "check_in", None));
    assert!(matches!(&e[0], Event::PointsEarned { granted: 10, forfeited: 5, .. }));
    let e = s.then_ok("c", earn_body(5, "check_in", None));
    assert!(matches!(&e[0], Event::PointsEarned { granted: 0, forfeited: 5, .. }));
    // 15:59:59Z is still the same Shanghai day; 16:00Z is the next.
    s.at(T0 + 16 * 3_600_000 - 1);
    let e = s.then_ok("d", earn_body(5, "purchase", None));
    assert!(matches!(&e[0], Event::PointsEarned { granted: 0, .. }));
    s.at(T0 + 16 * 3_600_000);
    let e = s.then_ok("e", earn_body(100, "purchase", None));
    assert!(matches!(&e[0], Event::PointsEarned { granted: 100, forfeited: 0, .. }));

    let mut r = Scenario::new().rules(|p| {
        truncate(p);
        p.cap_policy = CapPolicy::Reject;
    });
    r.then_ok("a", earn_body(100, "purchase", None));
    r.then_rejects("b", earn_body(1, "purchase", None), Reason::DailyEarnCapReached);
    let mut r2 = Scenario::new().rules(|p| {
        truncate(p);
        p.cap_policy = CapPolicy::Reject;
    });
    r2.then_ok("a", earn_body(10, "check_in", None));
    r2.then_rejects("b", earn_body(1, "check_in", None), Reason::ActionDailyCapReached);
}

#[test]
fn manual_adjustments_need_operator_and_reason_and_cannot_overdraw() {
    let mut s = Scenario::new();
    s.earn("e1", 50, None);
    let adj =
        |points: Points, op: &str, why: &str| CommandBody::Adjust { points, operator: op.into(), reason: why.into() };
    s.then_rejects("a", adj(10, "", "x"), Reason::MissingField);
    s.then_rejects("a", adj(10, "ops", ""), Reason::MissingField);
    s.then_rejects("a", adj(0, "ops", "x"), Reason::InvalidAmount);
    s.then_rejects("a", adj(-51, "ops", "x"), Reason::InsufficientPoints);
    s.then_ok("a", adj(-20, "ops", "duplicate grant"));
    s.then_ok("b", adj(5, "ops", "goodwill"));
    assert_eq!(s.available(), 35);
    assert_eq!((s.account.totals.adjusted_up, s.account.totals.adjusted_down), (5, 20));
}

#[test]
fn freezing_blocks_earning_and_spending_separately() {
    let mut s = Scenario::new();
    s.earn("e1", 50, None);
    let freeze =
        |earning, spending| CommandBody::Freeze { earning, spending, operator: "risk".into(), reason: "fraud".into() };
    s.then_rejects(
        "f",
        CommandBody::Freeze { earning: false, spending: false, operator: "r".into(), reason: "x".into() },
        Reason::MissingField,
    );
    s.then_ok("f1", freeze(true, false));
    s.then_rejects("e2", earn_body(1, "purchase", None), Reason::AccountFrozen);
    s.then_ok("s1", spend(10));
    s.then_ok("f2", freeze(false, true));
    s.then_rejects("s2", spend(1), Reason::AccountFrozen);
    s.then_rejects(
        "r",
        CommandBody::Reserve { points: 1, order_ref: "o".into(), timeout_seconds: 9, order_cash_amount: None },
        Reason::AccountFrozen,
    );
    s.then_ok(
        "u",
        CommandBody::Unfreeze { earning: true, spending: false, operator: "risk".into(), reason: "cleared".into() },
    );
    assert!(!s.account.earning_frozen && s.account.spending_frozen);
    s.earn("e3", 1, None);
}

#[test]
fn sums_that_would_overflow_are_refused() {
    let mut s = Scenario::new();
    s.earn("e1", i64::MAX, None);
    s.then_rejects("e2", earn_body(1, "purchase", None), Reason::Overflow);
    s.then_rejects("a", CommandBody::Adjust { points: 1, operator: "o".into(), reason: "r".into() }, Reason::Overflow);
    s.then_ok("s", spend(i64::MAX));
    assert_eq!(s.available(), 0);
}

#[test]
fn expiry_override_must_lie_in_the_future() {
    let s = Scenario::new();
    s.then_rejects("e", earn_body(1, "purchase", Some(T0)), Reason::InvalidExpiry);
    s.then_rejects(
        "r",
        CommandBody::Reserve { points: 1, order_ref: "o".into(), timeout_seconds: 0, order_cash_amount: None },
        Reason::InvalidTimeout,
    );
}

#[test]
fn fingerprints_tell_content_apart() {
    let c =
        |points| Command { request_id: "r".into(), account: key(), body: spend(points), context: Default::default() };
    assert_eq!(fingerprint(&c(5)), fingerprint(&c(5)));
    assert_ne!(fingerprint(&c(5)), fingerprint(&c(6)));
    let mut other = c(5);
    other.request_id = "other".into();
    assert_eq!(fingerprint(&c(5)), fingerprint(&other), "the request id is the key, not the content");
    other.context.client_ip = "10.0.0.1".into();
    assert_ne!(fingerprint(&c(5)), fingerprint(&other));
}

// ---- levels ----

fn tiers(p: &mut Programme) {
    p.time_zone = chrono_tz::Asia::Shanghai;
    p.levels = [("注册", 0), ("铜牌", 100), ("银牌", 500), ("金牌", 2000)]
        .iter()
        .map(|(n, g)| LevelThreshold { name: (*n).into(), min_growth: *g })
        .collect();
    p.level_window_days = 365;
}

pub(super) fn earn_growth(points: Points, growth: i64) -> CommandBody {
    CommandBody::Earn { points, reason: "purchase".into(), order_ref: None, growth, expires_at: None }
}

fn level_changes(events: &[Event]) -> Vec<(String, String, i64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::LevelChanged { from, to, growth, .. } => Some((from.clone(), to.clone(), *growth)),
            _ => None,
        })
        .collect()
}

#[test]
fn growth_raises_the_level_and_each_change_is_an_event() {
    let mut s = Scenario::new().rules(tiers);
    // The first command places the member at the entry level.
    let e = s.then_ok("a", earn_growth(10, 50));
    assert_eq!(level_changes(&e), vec![("".into(), "注册".into(), 50)]);
    // Below the next threshold: no event.
    assert!(level_changes(&s.then_ok("b", earn_growth(10, 49))).is_empty());
    // Exactly at it: up.
    let e = s.then_ok("c", earn_growth(10, 1));
    assert_eq!(level_changes(&e), vec![("注册".into(), "铜牌".into(), 100)]);
    // Several thresholds at once: straight to the highest met.
    let e = s.then_ok("d", earn_growth(10, 1900));
    assert_eq!(level_changes(&e), vec![("铜牌".into(), "金牌".into(), 2000)]);
    assert_eq!(s.account.level, "金牌");
    // Spending points changes nothing about the level.
    assert!(level_changes(&s.then_ok("s", spend(5))).is_empty());
}

#[test]
fn a_growth_reversal_can_downgrade() {
    let mut s = Scenario::new().rules(tiers);
    s.then_ok("o1", earn_growth(100, 600));
    assert_eq!(s.account.level, "银牌");
    let e = s.then_ok("rev", CommandBody::ReverseEarn { earn_id: "o1".into(), points: 10, growth: 101 });
    assert_eq!(level_changes(&e), vec![("银牌".into(), "铜牌".into(), 499)]);
    assert!(e.iter().any(|e| matches!(e, Event::LevelChanged { why, .. } if why == "growth reversed")));
}

#[test]
fn members_who_stop_buying_are_downgraded_when_the_window_passes() {
    let mut s = Scenario::new().rules(tiers);
    // 2026-03-10T00:00Z is 08:00 on 2026-03-10 in Shanghai (programme day D).
    s.then_ok("o1", earn_growth(100, 600));
    s.at(T0 + 100 * DAY);
    s.then_ok("o2", earn_growth(100, 100));
    assert_eq!((s.account.level.as_str(), s.account.growth_in_window()), ("银牌", 700));
    // o1's growth leaves the window at the start of day D + 365 in Shanghai:
    // 2027-03-10T00:00+08:00 = 2027-03-09T16:00Z.
    let boundary = T0 + 365 * DAY - 8 * 3_600_000;
    assert_eq!(due_at(&s.account, Some(&s.programme)), Some(boundary));
    s.at(boundary - 1);
    assert!(s.then_ok("", CommandBody::Tick).is_empty(), "one millisecond early: nothing");
    s.at(boundary);
    let e = s.then_ok("", CommandBody::Tick);
    assert!(matches!(&e[0], Event::GrowthExpired { growth: 600, earns } if earns == &lots(&[("o1", 600)])));
    assert_eq!(level_changes(&e), vec![("银牌".into(), "铜牌".into(), 100)]);
    // o2 leaves 100 days later: down to the entry level (0 growth meets 注册).
    let next = due_at(&s.account, Some(&s.programme)).unwrap();
    assert_eq!(next, boundary + 100 * DAY);
    s.at(next);
    let e = s.then_ok("", CommandBody::Tick);
    assert!(matches!(&e[0], Event::GrowthExpired { growth: 100, .. }), "{e:?}");
    assert_eq!(level_changes(&e), vec![("铜牌".into(), "注册".into(), 0)]);
    assert_eq!(s.account.growth_in_window(), 0);
    assert_eq!(s.account.growth, 700, "lifetime growth is kept");
    assert_eq!(due_at(&s.account, Some(&s.programme)), None, "nothing left to fall due");
}

#[test]
fn any_command_settles_a_passed_window_first() {
    let mut s = Scenario::new().rules(tiers);
    s.then_ok("o1", earn_growth(100, 600));
    // The scheduler has not come round; a spend a year later sees the window passed.
    s.at(T0 + 400 * DAY);
    let e = s.then_ok("s", spend(10));
    assert!(matches!(&e[0], Event::GrowthExpired { growth: 600, .. }));
    assert!(matches!(&e[1], Event::PointsSpent { .. }));
    assert_eq!(level_changes(&e), vec![("银牌".into(), "注册".into(), 0)]);
}

#[test]
fn without_a_window_growth_counts_for_life_and_without_levels_nothing_happens() {
    let mut s = Scenario::new().rules(|p| {
        tiers(p);
        p.level_window_days = 0;
    });
    s.then_ok("o1", earn_growth(100, 600));
    assert_eq!(due_at(&s.account, Some(&s.programme)), None);
    s.at(T0 + 3000 * DAY);
    assert!(s.then_ok("", CommandBody::Tick).is_empty());
    assert_eq!(s.account.level, "银牌");

    let mut plain = Scenario::new();
    let e = plain.then_ok("o1", earn_growth(100, 600));
    assert!(level_changes(&e).is_empty() && plain.account.level.is_empty());
}

#[test]
fn new_thresholds_apply_at_the_next_command() {
    let mut s = Scenario::new().rules(tiers);
    s.then_ok("o1", earn_growth(100, 600));
    s.programme.levels[2].min_growth = 1000;
    let e = s.then_ok("s", spend(1));
    assert_eq!(level_changes(&e), vec![("银牌".into(), "铜牌".into(), 600)]);
    assert!(e.iter().any(|e| matches!(e, Event::LevelChanged { why, .. } if why == "level rules re-evaluated")));
}

// ---- the programme-wide daily issuance cap ----

#[test]
fn the_programme_cap_truncates_or_rejects_against_what_the_programme_issued_today() {
    let s = Scenario::new().rules(|p| p.programme_daily_issuance_cap = 1000);
    let earn_with = |issued: Points, points: Points| {
        let cmd = Command {
            request_id: "e".into(),
            account: key(),
            body: earn_body(points, "purchase", None),
            context: Default::default(),
        };
        decide_with(Some(&s.programme), &s.account, &cmd, s.now, &Limits { programme_issued_today: issued })
    };
    // Room left exactly: all of it.
    let e = earn_with(900, 100).unwrap();
    assert!(matches!(&e[0], Event::PointsEarned { granted: 100, forfeited: 0, .. }));
    // Truncate (the default policy): up to the cap, the rest forfeited.
    let e = earn_with(950, 100).unwrap();
    assert!(matches!(&e[0], Event::PointsEarned { granted: 50, forfeited: 50, .. }));
    let e = earn_with(1000, 100).unwrap();
    assert!(matches!(&e[0], Event::PointsEarned { granted: 0, forfeited: 100, .. }));
    // Reject: RESOURCE_EXHAUSTED's reason.
    let r = Scenario::new().rules(|p| {
        p.programme_daily_issuance_cap = 1000;
        p.cap_policy = CapPolicy::Reject;
    });
    let cmd = Command {
        request_id: "e".into(),
        account: key(),
        body: earn_body(100, "purchase", None),
        context: Default::default(),
    };
    let rejected = decide_with(Some(&r.programme), &r.account, &cmd, r.now, &Limits { programme_issued_today: 950 });
    assert_eq!(rejected.unwrap_err().reason, Reason::ProgrammeDailyCapReached);
    assert!(decide_with(Some(&r.programme), &r.account, &cmd, r.now, &Limits { programme_issued_today: 900 }).is_ok());
}

fn refund(spend_id: &str, points: Points) -> CommandBody {
    CommandBody::Refund { spend_id: spend_id.into(), points }
}

fn reverse(earn_id: &str, points: Points) -> CommandBody {
    CommandBody::ReverseEarn { earn_id: earn_id.into(), points, growth: 0 }
}

#[test]
fn a_refund_after_a_written_off_reversal_claws_the_points_back_instead_of_minting_them() {
    let mut s = Scenario::new().rules(|p| p.clawback_policy = ClawbackPolicy::WithinBalance);
    s.earn("e1", 100, None);
    s.then_ok("s1", spend(100));
    s.then_ok("rv", reverse("e1", 100));
    assert_eq!((s.available(), s.account.debt), (0, 0));
    let events = s.then_ok("rf", refund("s1", 100));
    assert_eq!(
        events[1],
        Event::PointsRecovered { lots: lots(&[("e1", 100)]), points: 100, debt_repaid: 0, written_off: 100 }
    );
    assert_eq!((s.available(), s.account.debt), (0, 0), "both orders refunded: nothing to spend");
    assert_eq!(s.account.extra.written_off_open, 0);
    s.then_rejects("s2", spend(1), Reason::InsufficientPoints);
}

#[test]
fn a_refund_after_a_reversal_into_debt_repays_the_debt_first() {
    let mut s = Scenario::new().rules(|p| p.clawback_policy = ClawbackPolicy::AllowDebt);
    s.earn("e1", 100, None);
    s.then_ok("s1", spend(100));
    s.then_ok("rv", reverse("e1", 100));
    assert_eq!((s.available(), s.account.debt), (0, 100));
    let events = s.then_ok("rf", refund("s1", 60));
    assert!(matches!(&events[1], Event::PointsRecovered { points: 60, debt_repaid: 60, written_off: 0, .. }));
    assert_eq!((s.available(), s.account.debt), (0, 40));
    s.then_ok("rf2", refund("s1", 40));
    assert_eq!((s.available(), s.account.debt), (0, 0));
}

#[test]
fn a_write_off_is_recovered_from_points_that_come_back_into_any_lot() {
    // e2's reversal took e1's points (e2's own were spent); then e1 is
    // reversed with nothing left: written off. The refund goes back into
    // e2's lot, which is not e1's, and is still taken for the write-off.
    let mut s = Scenario::new().rules(|p| p.clawback_policy = ClawbackPolicy::WithinBalance);
    s.earn("e1", 100, Some(T0 + 20 * DAY));
    s.earn("e2", 100, Some(T0 + 10 * DAY));
    s.then_ok("s1", spend(100));
    s.then_ok("rv2", reverse("e2", 100));
    s.then_ok("rv1", reverse("e1", 100));
    assert_eq!((s.available(), s.account.extra.written_off_open), (0, 100));
    s.then_ok("rf", refund("s1", 100));
    assert_eq!((s.available(), s.account.extra.written_off_open), (0, 0), "200 earned, 200 reversed");
}

#[test]
fn a_write_off_is_not_recovered_from_new_earns() {
    let mut s = Scenario::new().rules(|p| p.clawback_policy = ClawbackPolicy::WithinBalance);
    s.earn("e1", 100, None);
    s.then_ok("s1", spend(100));
    s.then_ok("rv", reverse("e1", 100));
    s.earn("e2", 40, None);
    assert_eq!((s.available(), s.account.extra.written_off_open), (40, 100));
}

#[test]
fn a_released_hold_after_a_reversal_mints_nothing() {
    for policy in [ClawbackPolicy::WithinBalance, ClawbackPolicy::AllowDebt] {
        let mut s = Scenario::new().rules(|p| p.clawback_policy = policy);
        s.earn("e1", 100, None);
        s.then_ok(
            "h1",
            CommandBody::Reserve { points: 100, order_ref: "o1".into(), timeout_seconds: 60, order_cash_amount: None },
        );
        s.then_ok("rv", reverse("e1", 100));
        s.then_ok("rl", CommandBody::Release { reservation_id: "h1".into() });
        assert_eq!((s.available(), s.account.reserved(), s.account.debt), (0, 0, 0), "{policy:?}");
    }
}

#[test]
fn a_hold_that_times_out_after_a_reversal_mints_nothing() {
    let mut s = Scenario::new().rules(|p| p.clawback_policy = ClawbackPolicy::WithinBalance);
    s.earn("e1", 100, None);
    s.then_ok(
        "h1",
        CommandBody::Reserve { points: 100, order_ref: "o1".into(), timeout_seconds: 60, order_cash_amount: None },
    );
    s.then_ok("rv", reverse("e1", 100));
    s.at(T0 + 61_000);
    let events = s.then_ok("t", CommandBody::Tick);
    assert!(events.iter().any(|e| matches!(e, Event::PointsRecovered { points: 100, .. })), "{events:?}");
    assert_eq!((s.available(), s.account.reserved()), (0, 0));
}

#[test]
fn nothing_is_spendable_while_debt_is_outstanding() {
    // A history folded before refunds repaid debt can hold both.
    let mut s = Scenario::new().rules(|p| p.clawback_policy = ClawbackPolicy::AllowDebt);
    s.earn("e1", 100, None);
    s.then_ok("s1", spend(100));
    s.then_ok("rv", reverse("e1", 100));
    s.given_events(&[Event::SpendRefunded {
        refund_id: "old-refund".into(),
        spend_id: "s1".into(),
        points: 100,
        lots: lots(&[("e1", 100)]),
    }]);
    assert_eq!((s.available(), s.account.debt), (100, 100));
    s.then_rejects("s2", spend(1), Reason::InsufficientPoints);
    s.then_rejects(
        "h2",
        CommandBody::Reserve { points: 1, order_ref: "o".into(), timeout_seconds: 60, order_cash_amount: None },
        Reason::InsufficientPoints,
    );
}
