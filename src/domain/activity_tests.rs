//! Given / when / then tests of `RecordActivity`: what a programme's earning
//! rules make of the activities its business services report.
//!
//! Most tests run against [`shop`], the behaviour table of a real programme.

use super::tests::{earn_growth, lots, Scenario, DAY, T0};
use super::*;

const HOUR: i64 = 3_600_000;
/// Minor units (fen) in a yuan.
const YUAN: i64 = 100;

fn rule(id: &str, action: &str, points: Points) -> EarningRule {
    EarningRule { rule_id: id.into(), action: action.into(), points, ..Default::default() }
}

fn per(amount_minor: i64, points: Points) -> AmountRate {
    AmountRate { amount_minor, points, growth: 0 }
}

fn activity(action: &str) -> CommandBody {
    CommandBody::RecordActivity(Activity { action: action.into(), ..Default::default() })
}

fn payment(amount_minor: i64, member_type: &str, tags: &[&str]) -> CommandBody {
    CommandBody::RecordActivity(Activity {
        action: "pay".into(),
        amount_minor,
        member_type: member_type.into(),
        product_tags: tags.iter().map(|t| (*t).into()).collect(),
        order_ref: String::new(),
    })
}

/// The behaviour table of a real programme.
fn table() -> Vec<EarningRule> {
    let daily = |mut r: EarningRule, count: u32, points: Points| {
        r.daily_count_max = count;
        r.daily_points_max = points;
        r
    };
    let mut pay = daily(rule("pay", "pay", 5), 0, 50);
    pay.tag_multipliers_percent = [("instalment".into(), 200), ("large_instalment".into(), 300)].into();
    let mut by_amount = rule("pay-by-amount", "pay", 0);
    by_amount.amount_rates = [
        ("personal".into(), per(100 * YUAN, 1)),
        ("enterprise".into(), per(10_000 * YUAN, 1)),
        ("*".into(), per(500 * YUAN, 1)),
    ]
    .into();
    vec![
        daily(rule("register", "register", 100), 1, 0),
        daily(rule("login", "login", 1), 3, 0),
        daily(rule("publish", "publish", 2), 0, 20),
        daily(rule("reported", "reported", -12), 0, 20),
        rule("complaint", "complaint", -5),
        pay,
        by_amount,
        rule("refund-seller", "refund_seller_fault", -8),
        rule("refund-buyer", "refund_buyer_fault", -3),
        rule("cancel", "cancel", -2),
        rule("cancel-auto", "cancel_auto", -3),
        rule("review", "review", 3),
    ]
}

fn shop() -> Scenario {
    Scenario::new().rules(|p| p.earning_rules = table())
}

/// The shop, with a double-points campaign for payments on 2026-03-10 UTC.
fn double11(actions: &[&str]) -> Scenario {
    let campaign = Campaign {
        campaign_id: "double11".into(),
        starts_at: Some(T0),
        ends_at: Some(T0 + DAY),
        actions: actions.iter().map(|a| (*a).into()).collect(),
        multiplier_percent: 200,
    };
    Scenario::new().rules(|p| {
        p.earning_rules = table();
        p.campaigns = vec![campaign];
    })
}

/// The shop, with a member who reached gold (x1.5).
fn gold() -> Scenario {
    let mut s = Scenario::new().rules(|p| {
        p.earning_rules = table();
        p.levels = vec![
            LevelThreshold { name: "member".into(), min_growth: 0 },
            LevelThreshold { name: "gold".into(), min_growth: 1_000 },
        ];
        p.level_multipliers_percent = [("gold".into(), 150)].into();
    });
    s.then_ok("g", earn_growth(0, 1_000));
    assert_eq!(s.account.level, "gold");
    s
}

/// The shop with one rule changed.
fn shop_with(rule_id: &str, f: impl FnOnce(&mut EarningRule)) -> Scenario {
    Scenario::new().rules(|p| {
        p.earning_rules = table();
        f(p.earning_rules.iter_mut().find(|r| r.rule_id == rule_id).expect("a rule of the table"));
    })
}

/// `ActivityRecorded`'s sums: (points, growth).
fn worth(events: &[Event]) -> (Points, i64) {
    events
        .iter()
        .find_map(|e| match e {
            Event::ActivityRecorded { points, growth, .. } => Some((*points, *growth)),
            _ => None,
        })
        .expect("an ActivityRecorded event")
}

/// What one rule gave, as `ActivityRecorded` says.
fn applied<'e>(events: &'e [Event], rule_id: &str) -> &'e AppliedRule {
    events
        .iter()
        .find_map(|e| match e {
            Event::ActivityRecorded { applied, .. } => applied.iter().find(|a| a.rule_id == rule_id),
            _ => None,
        })
        .unwrap_or_else(|| panic!("rule {rule_id} applied in {events:?}"))
}

/// The `PointsEarned` that follows the activity: (granted, forfeited, growth).
fn earned(events: &[Event]) -> (Points, Points, i64) {
    events
        .iter()
        .find_map(|e| match e {
            Event::PointsEarned { granted, forfeited, growth, .. } => Some((*granted, *forfeited, *growth)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a PointsEarned in {events:?}"))
}

/// The `PenaltyApplied` that follows the activity.
fn penalty(events: &[Event]) -> &Event {
    events.iter().find(|e| matches!(e, Event::PenaltyApplied { .. })).expect("a PenaltyApplied event")
}

/// (points taken in all, debt added, written off) of a penalty.
fn penalised(events: &[Event]) -> (Points, Points, Points) {
    match penalty(events) {
        Event::PenaltyApplied { points, debt_added, written_off, .. } => (*points, *debt_added, *written_off),
        _ => unreachable!(),
    }
}

/// The events the activity caused beyond the level bookkeeping.
fn names(events: &[Event]) -> Vec<&'static str> {
    events.iter().filter(|e| !matches!(e, Event::LevelChanged { .. })).map(Event::name).collect()
}

// ---- the behaviour table ----

#[test]
fn registration_earns_its_bonus_into_a_lot_named_by_the_request_with_the_action_as_reason() {
    let mut s = shop();
    let events = s.then_ok("reg-1", activity("register"));
    let Event::PointsEarned { lot_id, reason, granted, .. } = &events[1] else { panic!("{events:?}") };
    assert_eq!((lot_id.as_str(), reason.as_str(), *granted), ("reg-1", "register", 100));
    assert_eq!(s.account.lots[&Id::of("reg-1")].remaining, 100);
}

#[test]
fn a_second_registration_the_same_day_earns_nothing() {
    let mut s = shop();
    s.then_ok("reg-1", activity("register"));
    let events = s.then_ok("reg-2", activity("register"));
    assert_eq!(names(&events), ["ActivityRecorded"]);
    assert_eq!(s.available(), 100);
}

#[test]
fn a_login_earns_one_point() {
    let mut s = shop();
    assert_eq!(earned(&s.then_ok("l1", activity("login"))), (1, 0, 0));
}

#[test]
fn the_fourth_login_of_a_day_earns_nothing_under_truncate() {
    let mut s = shop();
    for id in ["l1", "l2", "l3"] {
        s.then_ok(id, activity("login"));
    }
    let events = s.then_ok("l4", activity("login"));
    assert_eq!(names(&events), ["ActivityRecorded"]);
    assert_eq!(worth(&events), (0, 0));
    assert_eq!(applied(&events, "login").capped_points, 1);
    assert_eq!(s.available(), 3);
}

#[test]
fn the_fourth_login_of_a_day_is_rejected_under_reject() {
    let mut s = shop().rules(|p| p.cap_policy = CapPolicy::Reject);
    for id in ["l1", "l2", "l3"] {
        s.then_ok(id, activity("login"));
    }
    s.then_rejects("l4", activity("login"), Reason::ActionDailyCapReached);
}

#[test]
fn logins_count_again_from_midnight_of_the_next_programme_day() {
    // T0 is 08:00 in Shanghai: its midnight is 16 hours later.
    let mut s = shop();
    for id in ["l1", "l2", "l3"] {
        s.then_ok(id, activity("login"));
    }
    s.at(T0 + 16 * HOUR);
    assert_eq!(earned(&s.then_ok("l4", activity("login"))), (1, 0, 0));
}

#[test]
fn publishing_earns_two_points_up_to_twenty_a_day() {
    let mut s = shop();
    for i in 0..10 {
        s.then_ok(&format!("p{i}"), activity("publish"));
    }
    assert_eq!(s.available(), 20);
    let events = s.then_ok("p10", activity("publish"));
    assert_eq!((worth(&events), applied(&events, "publish").capped_points), ((0, 0), 2));
}

#[test]
fn being_reported_takes_twelve_points() {
    let mut s = shop();
    s.earn("e1", 100, None);
    let events = s.then_ok("rp1", activity("reported"));
    assert_eq!(penalised(&events), (12, 0, 0));
    assert_eq!(s.available(), 88);
}

#[test]
fn a_second_report_the_same_day_takes_only_what_is_left_of_twenty() {
    let mut s = shop();
    s.earn("e1", 100, None);
    s.then_ok("rp1", activity("reported"));
    let events = s.then_ok("rp2", activity("reported"));
    assert_eq!((applied(&events, "reported").points, applied(&events, "reported").capped_points), (-8, 4));
    assert_eq!(penalised(&events), (8, 0, 0));
    assert_eq!(s.available(), 80);
}

#[test]
fn a_complaint_takes_five_points() {
    let mut s = shop();
    s.earn("e1", 100, None);
    assert_eq!(penalised(&s.then_ok("c1", activity("complaint"))), (5, 0, 0));
    assert_eq!(s.available(), 95);
}

#[test]
fn a_completed_payment_earns_five_points() {
    let mut s = shop();
    assert_eq!(earned(&s.then_ok("o1", activity("pay"))), (5, 0, 0));
}

#[test]
fn payments_earn_up_to_fifty_points_a_day() {
    let mut s = shop();
    for i in 0..10 {
        s.then_ok(&format!("o{i}"), activity("pay"));
    }
    let events = s.then_ok("o10", activity("pay"));
    assert_eq!(names(&events), ["ActivityRecorded"]);
    assert_eq!(s.available(), 50);
}

#[test]
fn a_rule_near_its_daily_points_limit_gives_what_is_left_and_says_how_much_it_cut() {
    // Large instalments earn 15 a payment: 45 after three, 5 left of 50.
    let mut s = shop();
    for id in ["o1", "o2", "o3"] {
        s.then_ok(id, payment(0, "personal", &["large_instalment"]));
    }
    let events = s.then_ok("o4", payment(0, "personal", &["large_instalment"]));
    assert_eq!((applied(&events, "pay").points, applied(&events, "pay").capped_points), (5, 10));
    assert_eq!(earned(&events), (5, 0, 0));
}

#[test]
fn a_refund_by_the_sellers_fault_takes_eight_points() {
    let mut s = shop();
    s.earn("e1", 100, None);
    assert_eq!(penalised(&s.then_ok("rf", activity("refund_seller_fault"))), (8, 0, 0));
}

#[test]
fn a_refund_by_the_buyers_fault_takes_three_points() {
    let mut s = shop();
    s.earn("e1", 100, None);
    assert_eq!(penalised(&s.then_ok("rf", activity("refund_buyer_fault"))), (3, 0, 0));
}

#[test]
fn a_cancellation_takes_two_points() {
    let mut s = shop();
    s.earn("e1", 100, None);
    assert_eq!(penalised(&s.then_ok("cx", activity("cancel"))), (2, 0, 0));
}

#[test]
fn an_automatic_cancellation_takes_three_points() {
    let mut s = shop();
    s.earn("e1", 100, None);
    assert_eq!(penalised(&s.then_ok("cx", activity("cancel_auto"))), (3, 0, 0));
}

#[test]
fn a_review_earns_three_points() {
    let mut s = shop();
    assert_eq!(earned(&s.then_ok("rv", activity("review"))), (3, 0, 0));
}

// ---- amount-based points ----

#[test]
fn a_personal_member_earns_one_point_per_hundred_yuan_floored() {
    let mut s = shop();
    let events = s.then_ok("o1", payment(299 * YUAN + 99, "personal", &[]));
    assert_eq!(applied(&events, "pay-by-amount").points, 2);
    assert_eq!(worth(&events), (5 + 2, 0), "the fixed +5 and the amount's share add up");
}

#[test]
fn an_enterprise_member_earns_one_point_per_ten_thousand_yuan_floored() {
    let mut s = shop();
    let events = s.then_ok("o1", payment(29_999 * YUAN, "enterprise", &[]));
    assert_eq!(applied(&events, "pay-by-amount").points, 2);
}

#[test]
fn a_member_of_any_other_type_earns_at_the_star_rate() {
    let mut s = shop();
    let events = s.then_ok("o1", payment(1_000 * YUAN, "government", &[]));
    assert_eq!(applied(&events, "pay-by-amount").points, 2);
}

#[test]
fn a_negative_amount_is_refused() {
    shop().then_rejects("o1", payment(-1, "personal", &[]), Reason::InvalidAmount);
}

// ---- multipliers ----

#[test]
fn an_instalment_payment_earns_double() {
    let mut s = shop();
    let events = s.then_ok("o1", payment(0, "personal", &["instalment"]));
    assert_eq!(earned(&events), (10, 0, 0));
}

#[test]
fn a_large_instalment_earns_triple_and_not_both_tags() {
    let mut s = shop();
    let events = s.then_ok("o1", payment(0, "personal", &["instalment", "large_instalment"]));
    assert_eq!(earned(&events), (15, 0, 0));
    assert_eq!(applied(&events, "pay").multiplier_percent, 300);
}

#[test]
fn a_campaign_doubles_its_actions_inside_its_window() {
    let mut s = double11(&["pay"]);
    assert_eq!(earned(&s.then_ok("o1", activity("pay"))), (10, 0, 0));
}

#[test]
fn a_campaign_leaves_points_alone_once_its_window_ended() {
    let mut s = double11(&["pay"]);
    s.at(T0 + DAY);
    assert_eq!(earned(&s.then_ok("o1", activity("pay"))), (5, 0, 0));
}

#[test]
fn a_campaign_leaves_points_alone_before_its_window_starts() {
    let mut s = double11(&["pay"]);
    s.at(T0 - 1);
    assert_eq!(earned(&s.then_ok("o1", activity("pay"))), (5, 0, 0));
}

#[test]
fn a_campaign_leaves_actions_it_does_not_name_alone() {
    let mut s = double11(&["pay"]);
    assert_eq!(earned(&s.then_ok("rv", activity("review"))), (3, 0, 0));
}

#[test]
fn a_campaign_naming_no_action_covers_every_action() {
    let mut s = double11(&[]);
    assert_eq!(earned(&s.then_ok("rv", activity("review"))), (6, 0, 0));
}

#[test]
fn a_gold_member_earns_half_again_floored() {
    let mut s = gold();
    assert_eq!(earned(&s.then_ok("o1", activity("pay"))), (7, 0, 0), "5 x 1.5 = 7.5, floored");
}

#[test]
fn multipliers_multiply_together_and_floor_once() {
    // 5 x 150% x 200% = 15, where flooring after the level would give 7 x 2 = 14.
    let mut s = gold();
    let events = s.then_ok("o1", payment(0, "personal", &["instalment"]));
    assert_eq!(earned(&events), (15, 0, 0));
    assert_eq!(applied(&events, "pay").multiplier_percent, 300);
}

#[test]
fn penalties_are_never_multiplied() {
    let mut s = gold().rules(|p| p.campaigns = double11(&[]).programme.campaigns);
    s.earn("e1", 100, None);
    let events = s.then_ok("c1", activity("complaint"));
    assert_eq!(penalised(&events), (5, 0, 0));
    let complaint = applied(&events, "complaint");
    assert!(complaint.multipliers.is_empty() && complaint.multiplier_percent == 100, "{complaint:?}");
}

// ---- which rules apply ----

#[test]
fn a_rule_whose_window_ended_is_not_active() {
    let s = shop_with("review", |r| r.ends_at = Some(T0));
    s.then_rejects("rv", activity("review"), Reason::EarningRuleNotActive);
}

#[test]
fn a_rule_whose_window_has_not_started_is_not_active() {
    let s = shop_with("review", |r| r.starts_at = Some(T0 + 1));
    s.then_rejects("rv", activity("review"), Reason::EarningRuleNotActive);
}

#[test]
fn a_disabled_rule_is_not_active() {
    let s = shop_with("review", |r| r.disabled = true);
    s.then_rejects("rv", activity("review"), Reason::EarningRuleNotActive);
}

#[test]
fn an_action_no_rule_names_is_not_found() {
    shop().then_rejects("x", activity("share"), Reason::EarningRuleNotFound);
}

#[test]
fn the_active_rules_of_an_action_apply_without_its_inactive_ones() {
    let mut s = shop_with("pay-by-amount", |r| r.disabled = true);
    let events = s.then_ok("o1", payment(1_000 * YUAN, "personal", &[]));
    assert_eq!(worth(&events), (5, 0));
    assert!(matches!(&events[0], Event::ActivityRecorded { applied, .. } if applied.len() == 1));
}

// ---- penalties ----

#[test]
fn a_penalty_takes_the_soonest_expiring_points_first() {
    let mut s = shop();
    s.earn("late", 10, Some(T0 + 30 * DAY));
    s.earn("soon", 10, Some(T0 + 5 * DAY));
    let events = s.then_ok("rp", activity("reported"));
    let Event::PenaltyApplied { taken, .. } = penalty(&events) else { unreachable!() };
    assert_eq!(taken, &lots(&[("soon", 10), ("late", 2)]));
}

#[test]
fn a_penalty_beyond_the_balance_becomes_debt_when_the_programme_allows_debt() {
    let mut s = shop().rules(|p| p.clawback_policy = ClawbackPolicy::AllowDebt);
    s.earn("e1", 5, None);
    let events = s.then_ok("rp", activity("reported"));
    assert_eq!(penalised(&events), (12, 7, 0));
    assert_eq!((s.available(), s.account.debt), (0, 7));
}

#[test]
fn a_penalty_beyond_the_balance_is_written_off_within_the_balance() {
    let mut s = shop().rules(|p| p.clawback_policy = ClawbackPolicy::WithinBalance);
    s.earn("e1", 5, None);
    let events = s.then_ok("rp", activity("reported"));
    assert_eq!(penalised(&events), (12, 0, 7));
    assert_eq!((s.available(), s.account.debt), (0, 0));
}

#[test]
fn a_penalty_takes_growth_never_below_zero() {
    let mut s = shop_with("complaint", |r| r.growth = -10);
    s.then_ok("e1", earn_growth(100, 4));
    let events = s.then_ok("c1", activity("complaint"));
    let Event::PenaltyApplied { growth, growth_earns, .. } = penalty(&events) else { unreachable!() };
    assert_eq!((*growth, growth_earns), (4, &lots(&[("e1", 4)])));
    assert_eq!(s.account.growth, 0);
}

#[test]
fn a_penalty_takes_growth_from_the_newest_earns_first() {
    let mut s = shop_with("complaint", |r| r.growth = -10);
    s.then_ok("old", earn_growth(100, 50));
    s.at(T0 + DAY);
    s.then_ok("new", earn_growth(100, 8));
    let events = s.then_ok("c1", activity("complaint"));
    let Event::PenaltyApplied { growth_earns, .. } = penalty(&events) else { unreachable!() };
    assert_eq!(growth_earns, &lots(&[("new", 8), ("old", 2)]));
}

// ---- earns and the programme's caps ----

#[test]
fn a_growth_only_activity_earns_growth_without_points() {
    let mut s = shop_with("login", |r| (r.points, r.growth) = (0, 5));
    let events = s.then_ok("l1", activity("login"));
    assert_eq!(earned(&events), (0, 0, 5));
    assert_eq!((s.available(), s.account.growth), (0, 5));
}

#[test]
fn the_members_daily_cap_still_truncates_an_activitys_earn() {
    let mut s = shop().rules(|p| p.member_daily_earn_cap = 8);
    s.then_ok("o1", activity("pay"));
    let events = s.then_ok("o2", activity("pay"));
    assert_eq!(worth(&events), (5, 0), "the rules gave 5");
    assert_eq!(earned(&events), (3, 2, 0), "the member's cap left 3");
}

#[test]
fn the_activity_and_the_rules_that_applied_are_recorded() {
    let mut s = gold().rules(|p| p.campaigns = double11(&["pay"]).programme.campaigns);
    let facts = Activity {
        action: "pay".into(),
        amount_minor: 250 * YUAN,
        member_type: "personal".into(),
        product_tags: vec!["instalment".into()],
        order_ref: "order-9".into(),
    };
    let events = s.then_ok("o1", CommandBody::RecordActivity(facts.clone()));
    let Event::ActivityRecorded { activity_id, activity, applied, points, day, .. } = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(
        (activity_id.as_str(), activity, *day),
        ("o1", &facts, calendar::programme_day(s.programme.time_zone, T0))
    );
    let sources = |a: &AppliedRule| a.multipliers.iter().map(|m| (m.source.clone(), m.percent)).collect::<Vec<_>>();
    let ids: Vec<&str> = applied.iter().map(|a| a.rule_id.as_str()).collect();
    assert_eq!(ids, ["pay", "pay-by-amount"]);
    // 5 x 2 x 2 x 1.5 = 30; 2 (250 yuan) x 2 x 1.5 = 6 (no tag on this rule).
    assert_eq!(
        sources(&applied[0]),
        [("tag:instalment".into(), 200), ("campaign:double11".into(), 200), ("level:gold".into(), 150)]
    );
    assert_eq!((applied[0].points, applied[0].multiplier_percent), (30, 600));
    assert_eq!(sources(&applied[1]), [("campaign:double11".into(), 200), ("level:gold".into(), 150)]);
    assert_eq!((applied[1].points, *points), (6, 36));
    assert!(
        matches!(&events[1], Event::PointsEarned { lot_id, order_ref: Some(o), granted: 36, .. } if lot_id == "o1" && o == "order-9")
    );
}
