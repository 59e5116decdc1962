//! Given / when / then tests of RFM growth: members evaluated at the end of
//! each period by recency, frequency and monetary value, moving up and down,
//! on a manual clock (the scheduler's ticks).

use super::tests::Scenario;
use super::*;

/// Minor units (fen) in a yuan.
const YUAN: i64 = 100;

/// Noon of a date in Shanghai (the example programme's zone).
fn on(y: i32, m: u32, d: u32) -> Millis {
    start(y, m, d) + 12 * 3_600_000
}

/// The first instant of a date in Shanghai.
fn start(y: i32, m: u32, d: u32) -> Millis {
    let date = chrono::NaiveDate::from_ymd_opt(y, m, d).expect("a date");
    calendar::start_of_day(chrono_tz::Asia::Shanghai, date).expect("an instant")
}

fn band(threshold: i64, score: i64) -> RfmBand {
    RfmBand { threshold, score }
}

/// Monthly RFM: bought within 7 days 3, 30 days 2, 90 days 1; 1, 3, 5
/// purchases 1, 2, 3; 100, 500, 1000 yuan 1, 2, 3. Silver from 5, gold from 9.
fn rfm() -> Scenario {
    Scenario::new().rules(|p| {
        p.earning_rules = vec![
            EarningRule { rule_id: "pay".into(), action: "pay".into(), points: 5, ..Default::default() },
            EarningRule { rule_id: "login".into(), action: "login".into(), points: 1, ..Default::default() },
        ];
        p.levels = vec![
            LevelThreshold { name: "member".into(), min_growth: 0 },
            LevelThreshold { name: "silver".into(), min_growth: 5 },
            LevelThreshold { name: "gold".into(), min_growth: 9 },
        ];
        p.growth_model = GrowthModel::Rfm;
        p.rfm = Some(Box::new(RfmRules {
            period_months: 1,
            purchase_actions: vec!["pay".into()],
            recency: vec![band(7, 3), band(30, 2), band(90, 1)],
            frequency: vec![band(1, 1), band(3, 2), band(5, 3)],
            monetary: vec![band(100 * YUAN, 1), band(500 * YUAN, 2), band(1_000 * YUAN, 3)],
        }));
    })
}

fn pay(amount_minor: i64) -> CommandBody {
    CommandBody::RecordActivity(Activity { action: "pay".into(), amount_minor, ..Default::default() })
}

fn tick(s: &mut Scenario, at: Millis) -> Vec<Event> {
    s.at(at).then_ok("", CommandBody::Tick)
}

/// (recency_days, frequency, monetary_minor, growth, previous_growth) of each evaluation.
fn evaluations(events: &[Event]) -> Vec<(i64, i64, i64, i64, i64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::GrowthEvaluated { recency_days, frequency, monetary_minor, growth, previous_growth, .. } => {
                Some((*recency_days, *frequency, *monetary_minor, *growth, *previous_growth))
            }
            _ => None,
        })
        .collect()
}

fn level_changes(events: &[Event]) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::LevelChanged { from, to, why, .. } => Some((from.clone(), to.clone(), why.clone())),
            _ => None,
        })
        .collect()
}

/// Five purchases of 300 yuan in January 2027, the last on the 29th.
fn bought_often_in_january() -> Scenario {
    let mut s = rfm();
    for (i, d) in [5, 10, 15, 20, 29].into_iter().enumerate() {
        s.at(on(2027, 1, d)).then_ok(&format!("jan{i}"), pay(300 * YUAN));
    }
    s
}

#[test]
fn a_purchase_is_marked_as_such_in_its_activity_record_and_other_actions_are_not() {
    let mut s = rfm();
    let e = s.at(on(2027, 1, 5)).then_ok("p", pay(300 * YUAN));
    assert!(matches!(&e[0], Event::ActivityRecorded { purchase: true, .. }));
    let e = s.then_ok("l", CommandBody::RecordActivity(Activity { action: "login".into(), ..Default::default() }));
    assert!(matches!(&e[0], Event::ActivityRecorded { purchase: false, .. }));
    assert_eq!(
        s.account.purchases_in(calendar::month_of_day(s.account.extra.last_purchase_day.unwrap()), i64::MAX),
        (1, 30_000)
    );
}

#[test]
fn the_evaluation_falls_due_at_the_first_instant_of_the_next_period_in_the_programmes_zone() {
    let mut s = bought_often_in_january();
    assert_eq!(due_at(&s.account, Some(&s.programme)), Some(start(2027, 2, 1)));
    assert!(tick(&mut s, start(2027, 2, 1) - 1).is_empty(), "one millisecond early: nothing");
}

#[test]
fn a_member_buying_often_in_january_is_gold_at_the_end_of_january() {
    let mut s = bought_often_in_january();
    let events = tick(&mut s, start(2027, 2, 1));
    // Last purchase on the 29th: 2 days to the 31st (3); 5 purchases (3); 1,500 yuan (3).
    assert_eq!(evaluations(&events), [(2, 5, 150_000, 9, 0)]);
    assert_eq!(level_changes(&events), [("member".into(), "gold".into(), "RFM evaluation".into())]);
    assert_eq!((s.account.level.as_str(), s.account.extra.rfm_growth), ("gold", 9));
    let Event::GrowthEvaluated { period_start, .. } = &events[0] else { panic!("{events:?}") };
    assert_eq!(calendar::day_to_date(*period_start), chrono::NaiveDate::from_ymd_opt(2027, 1, 1));
}

#[test]
fn a_member_who_buys_nothing_in_february_drops_at_the_end_of_february() {
    let mut s = bought_often_in_january();
    tick(&mut s, start(2027, 2, 1));
    assert_eq!(due_at(&s.account, Some(&s.programme)), Some(start(2027, 3, 1)));
    let events = tick(&mut s, start(2027, 3, 1));
    // 30 days from the 29th of January to the 28th of February (2); nothing bought (0).
    assert_eq!(evaluations(&events), [(30, 0, 0, 2, 9)]);
    assert_eq!(level_changes(&events), [("gold".into(), "member".into(), "RFM evaluation".into())]);
}

#[test]
fn after_two_periods_without_purchases_a_member_is_no_longer_evaluated() {
    let mut s = bought_often_in_january();
    tick(&mut s, start(2027, 2, 1));
    tick(&mut s, start(2027, 3, 1));
    assert_eq!(due_at(&s.account, Some(&s.programme)), None);
    assert!(tick(&mut s, start(2027, 4, 1)).is_empty());
    assert!(tick(&mut s, start(2027, 5, 1)).is_empty());
    assert_eq!((s.account.level.as_str(), s.account.extra.rfm_growth), ("member", 2));
}

#[test]
fn a_member_who_buys_again_moves_up_at_the_end_of_that_period() {
    let mut s = bought_often_in_january();
    tick(&mut s, start(2027, 2, 1));
    tick(&mut s, start(2027, 3, 1));
    for (i, d) in [3, 9, 27].into_iter().enumerate() {
        s.at(on(2027, 4, d)).then_ok(&format!("apr{i}"), pay(200 * YUAN));
    }
    let events = tick(&mut s, start(2027, 5, 1));
    // 3 days to the 30th (3); 3 purchases (2); 600 yuan (2).
    assert_eq!(evaluations(&events), [(3, 3, 60_000, 7, 2)]);
    assert_eq!(level_changes(&events), [("member".into(), "silver".into(), "RFM evaluation".into())]);
}

#[test]
fn a_late_tick_evaluates_each_period_due_in_order() {
    let mut s = bought_often_in_january();
    let events = tick(&mut s, on(2027, 3, 20));
    assert_eq!(evaluations(&events), [(2, 5, 150_000, 9, 0), (30, 0, 0, 2, 9)]);
    // The level follows the last: the member never shows as gold.
    assert!(level_changes(&events).is_empty());
    assert_eq!((s.account.level.as_str(), s.account.extra.rfm_growth), ("member", 2));
}

#[test]
fn a_purchase_after_the_period_end_settles_the_evaluation_first_and_counts_for_the_next_period() {
    let mut s = bought_often_in_january();
    let events = s.at(on(2027, 2, 2)).then_ok("feb", pay(100 * YUAN));
    assert_eq!(evaluations(&events), [(2, 5, 150_000, 9, 0)]);
    assert!(matches!(events[1], Event::ActivityRecorded { purchase: true, .. }));
    assert_eq!(s.account.level, "gold");
    // February: 1 purchase on the 2nd: 26 days (2) + 1 (1) + 100 yuan (1).
    assert_eq!(evaluations(&tick(&mut s, start(2027, 3, 1))), [(26, 1, 10_000, 4, 9)]);
    assert_eq!(s.account.level, "member");
}

#[test]
fn under_rfm_earned_growth_is_recorded_but_does_not_move_the_level() {
    let mut s = rfm();
    let events = s.then_ok(
        "e",
        CommandBody::Earn { points: 10, reason: "bonus".into(), order_ref: None, growth: 100, expires_at: None },
    );
    assert!(level_changes(&events).iter().all(|(_, to, _)| to == "member"), "{events:?}");
    assert_eq!((s.account.growth_in_window(), s.account.extra.rfm_growth), (100, 0));
}

#[test]
fn the_level_view_under_rfm_shows_the_rfm_growth_and_the_next_evaluation() {
    let mut s = bought_often_in_january();
    tick(&mut s, start(2027, 2, 1));
    let v = level_status(&s.programme, &s.account);
    assert_eq!((v.level.as_str(), v.growth_in_window), ("gold", 9));
    assert_eq!(v.next_evaluation, Some(start(2027, 3, 1)));
    assert_eq!((v.next_level.as_str(), v.growth_to_keep), ("", 0));
}

#[test]
fn quarterly_periods_count_the_purchases_of_the_whole_quarter() {
    let mut s = rfm().rules(|p| p.rfm.as_mut().unwrap().period_months = 3);
    s.at(on(2027, 1, 10)).then_ok("a", pay(300 * YUAN));
    s.at(on(2027, 3, 25)).then_ok("b", pay(300 * YUAN));
    assert_eq!(due_at(&s.account, Some(&s.programme)), Some(start(2027, 4, 1)));
    // 6 days to the 31st of March (3); 2 purchases (1); 600 yuan (2).
    assert_eq!(evaluations(&tick(&mut s, start(2027, 4, 1))), [(6, 2, 60_000, 6, 0)]);
    assert_eq!(s.account.level, "silver");
}

#[test]
fn an_account_with_purchases_survives_a_refold_unchanged() {
    let mut s = bought_often_in_january();
    tick(&mut s, start(2027, 2, 1));
    let mut copy = s.account.clone();
    copy.recount();
    assert_eq!(copy, s.account);
    assert_eq!(s.account.extra.purchase_months.len(), 1);
    assert_eq!(
        s.account.extra.rfm_evaluated,
        Some(calendar::days_since_epoch(chrono::NaiveDate::from_ymd_opt(2027, 1, 1).unwrap()))
    );
}
