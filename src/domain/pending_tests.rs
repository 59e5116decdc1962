//! Given / when / then tests of risk-gated pending points: an alert of a
//! holding rule holds the member's new earns, which land as pending lots
//! (neither spendable nor issued) until released or forfeited.

use super::tests::Scenario;
use super::*;

const DAY: i64 = 86_400_000;

fn raise(s: &mut Scenario, alert_id: &str, hold: bool) -> Vec<Event> {
    let body = CommandBody::RaiseAlert {
        alert_id: alert_id.into(),
        rule: "member_daily_earn".into(),
        detail: "m1 earned 1000".into(),
        hold,
    };
    s.then_ok(&format!("alert:{alert_id}"), body)
}

/// 30 days' validity: a held member with 100 spendable and 50 pending.
fn held_member() -> Scenario {
    let mut s = Scenario::new().rules(|p| {
        p.validity_days = 30;
        p.validity_rounding = ValidityRounding::None;
    });
    s.earn("e1", 100, None);
    raise(&mut s, "a-1", true);
    let events = s.earn("e2", 50, None);
    assert!(matches!(events[..], [Event::PointsEarned { pending: true, granted: 50, debt_repaid: 0, .. }]));
    s
}

fn release() -> CommandBody {
    CommandBody::ReleasePending { operator: "risk-desk".into(), reason: "checked: a real customer".into() }
}

fn forfeit() -> CommandBody {
    CommandBody::ForfeitPending { operator: "risk-desk".into(), reason: "farming".into() }
}

#[test]
fn an_alert_of_a_holding_rule_is_an_event_and_holds_the_members_earns() {
    let mut s = Scenario::new();
    let events = raise(&mut s, "a-1", true);
    assert_eq!(
        events,
        vec![
            Event::AlertRaised {
                alert_id: "a-1".into(),
                rule: "member_daily_earn".into(),
                detail: "m1 earned 1000".into()
            },
            Event::EarningsHeld { rule: "member_daily_earn".into(), alert_id: "a-1".into() },
        ]
    );
    // A second alert while held raises, and holds nothing more.
    assert_eq!(raise(&mut s, "a-2", true).len(), 1);
    // An alert of a rule that only tells holds nothing.
    let mut told = Scenario::new();
    assert_eq!(raise(&mut told, "a-1", false).len(), 1);
    assert!(told.account.extra.held.is_none());
}

#[test]
fn pending_points_cannot_be_spent_reserved_or_reversed() {
    let s = held_member();
    assert_eq!((s.available(), s.account.pending()), (100, 50));
    let spend = CommandBody::Spend { points: 101, order_ref: None, order_cash_amount: None };
    s.then_rejects("s1", spend, Reason::InsufficientPoints);
    let reverse = CommandBody::ReverseEarn { earn_id: "e2".into(), points: 10, growth: 0 };
    s.then_rejects("r1", reverse, Reason::EarnPending);
}

#[test]
fn released_points_become_spendable_with_their_original_expiry_and_the_hold_is_lifted() {
    let mut s = held_member();
    let expiry = s.account.lots.get(&Id::of("e2")).and_then(|l| l.expires_at);
    assert_eq!(expiry, Some(tests::T0 + 30 * DAY));
    let events = s.then_ok("rel-1", release());
    assert!(matches!(&events[..], [Event::PendingPointsReleased { points: 50, .. }]), "{events:?}");
    assert_eq!((s.available(), s.account.pending()), (150, 0));
    assert_eq!(s.account.lots.get(&Id::of("e2")).and_then(|l| l.expires_at), expiry);
    assert_eq!(s.account.totals.issued, 150);
    assert!(s.account.extra.held.is_none());
    // The next earn is an ordinary one, and the released lot expires as any.
    assert!(matches!(s.earn("e3", 5, None)[..], [Event::PointsEarned { pending: false, .. }]));
    let expired = s.at(tests::T0 + 30 * DAY).then_ok("", CommandBody::Tick);
    assert!(matches!(&expired[..], [Event::PointsExpired { points: 155, .. }]), "{expired:?}");
}

#[test]
fn forfeited_points_are_gone_and_were_never_issued() {
    let mut s = held_member();
    let events = s.then_ok("f-1", forfeit());
    assert!(matches!(&events[..], [Event::PendingPointsForfeited { points: 50, .. }]), "{events:?}");
    assert_eq!((s.available(), s.account.pending()), (100, 0));
    assert_eq!((s.account.totals.issued, s.account.totals.forfeited), (100, 50));
    s.then_rejects("f-2", forfeit(), Reason::NothingPending);
}

#[test]
fn a_released_earn_repays_the_members_debt_first() {
    let mut s = held_member();
    s.account.debt = 30;
    s.account.totals.reversed = 30;
    s.account.check_invariants().unwrap();
    let events = s.then_ok("rel-1", release());
    assert!(matches!(&events[..], [_, Event::PointsRecovered { debt_repaid: 30, .. }]), "{events:?}");
    assert_eq!((s.available(), s.account.debt), (120, 0));
}

#[test]
fn unholding_lifts_the_hold_and_leaves_pending_points_pending() {
    let mut s = held_member();
    let body = CommandBody::Unhold { operator: "risk-desk".into(), reason: "false alarm".into() };
    s.then_ok("u-1", body.clone());
    assert_eq!(s.account.pending(), 50);
    assert!(matches!(s.earn("e3", 5, None)[..], [Event::PointsEarned { pending: false, .. }]));
    s.then_rejects("u-2", body, Reason::NothingPending);
}

#[test]
fn a_record_taking_pending_points_is_not_admissible() {
    let s = held_member();
    let spend = Event::PointsSpent {
        spend_id: "s".into(),
        order_ref: None,
        points: 10,
        lots: tests::lots(&[("e2", 10)]),
        order_cash_minor: 0,
    };
    assert!(admissible(&s.account, &[spend]).unwrap_err().contains("pending"));
    let half = Event::PendingPointsReleased {
        lots: tests::lots(&[("e2", 20)]),
        points: 20,
        operator: "o".into(),
        reason: "r".into(),
    };
    assert!(admissible(&s.account, &[half]).is_err());
    let whole = Event::PendingPointsReleased {
        lots: tests::lots(&[("e2", 50)]),
        points: 50,
        operator: "o".into(),
        reason: "r".into(),
    };
    assert_eq!(admissible(&s.account, &[whole]), Ok(()));
}

#[test]
fn a_forfeited_earn_cannot_be_reversed_and_its_growth_is_taken_back() {
    let mut s = held_member();
    let growth =
        CommandBody::Earn { points: 10, reason: "purchase".into(), order_ref: None, growth: 7, expires_at: None };
    s.then_ok("e3", growth);
    assert_eq!(s.account.growth, 7);
    s.then_ok("f-1", forfeit());
    assert_eq!(s.account.growth, 0, "the held earns' growth goes with their points");
    let reverse = CommandBody::ReverseEarn { earn_id: "e2".into(), points: 50, growth: 0 };
    s.then_rejects("r1", reverse, Reason::ReversalExceedsEarn);
}
