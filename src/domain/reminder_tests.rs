//! Given / when / then tests of expiry reminders: the scheduler's ticks on a
//! manual clock remind each lot once, on the programme day (Asia/Shanghai)
//! on which it enters the programme's `reminder_days` window.

use super::tests::Scenario;
use super::*;

const DAY: i64 = 86_400_000;

/// The first instant of a date in Shanghai (16:00 UTC the day before).
fn start(y: i32, m: u32, d: u32) -> Millis {
    let date = chrono::NaiveDate::from_ymd_opt(y, m, d).expect("a date");
    calendar::start_of_day(chrono_tz::Asia::Shanghai, date).expect("an instant")
}

/// 90 days' validity, reminders 15 days ahead, days in Shanghai.
fn programme(reminder_days: u32) -> Scenario {
    Scenario::new().rules(|p| {
        p.validity_days = 90;
        p.validity_rounding = ValidityRounding::None;
        p.reminder_days = reminder_days;
        p.time_zone = chrono_tz::Asia::Shanghai;
    })
}

fn earn_at(s: &mut Scenario, id: &str, points: Points, at: Millis) -> Vec<Event> {
    let body = CommandBody::Earn { points, reason: "purchase".into(), order_ref: None, growth: 0, expires_at: None };
    s.at(at).then_ok(id, body)
}

fn tick(s: &mut Scenario, at: Millis) -> Vec<Event> {
    s.at(at).then_ok("", CommandBody::Tick)
}

/// A reminder's lots: (lot id, points, expiry).
type Reminded = Vec<(String, Points, Millis)>;

/// The reminders among `events`: (lot id, points, expiry) of each lot, per reminder.
fn reminders(events: &[Event]) -> Vec<Reminded> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ExpiryReminderDue { lots, points, .. } => {
                assert_eq!(*points, lots.iter().map(|l| l.points).sum::<Points>(), "the reminder's sum");
                Some(lots.iter().map(|l| (l.lot_id.clone(), l.points, l.expires_at)).collect())
            }
            _ => None,
        })
        .collect()
}

/// Ticks at the start of every day from `from` for `days` days, and at
/// noon, and collects the reminders with the day they came on.
fn tick_daily(s: &mut Scenario, from: Millis, days: i64) -> Vec<(i64, Reminded)> {
    let mut out = Vec::new();
    for d in 0..days {
        for at in [from + d * DAY, from + d * DAY + DAY / 2] {
            out.extend(reminders(&tick(s, at)).into_iter().map(|r| (d, r)));
        }
    }
    out
}

#[test]
fn a_lot_earned_with_90_days_validity_is_reminded_once_on_day_75_at_the_start_of_the_shanghai_day() {
    let mut s = programme(15);
    // 2026-03-10 12:00 in Shanghai; expires 2026-06-08 12:00; reminded from 2026-05-24 00:00.
    let earned = start(2026, 3, 10) + DAY / 2;
    earn_at(&mut s, "e1", 100, earned);
    let expires_at = earned + 90 * DAY;
    assert_eq!(start(2026, 3, 10) + 75 * DAY, start(2026, 5, 24));
    assert_eq!(due_at(&s.account, Some(&s.programme)), Some(start(2026, 5, 24)));
    assert_eq!(next_reminder(&s.programme, &s.account), Some((start(2026, 5, 24), 100)));

    assert_eq!(reminders(&tick(&mut s, start(2026, 5, 24) - 1)), Vec::<Vec<_>>::new());
    let events = tick(&mut s, start(2026, 5, 24));
    assert_eq!(reminders(&events), vec![vec![("e1".to_string(), 100, expires_at)]]);
    assert_eq!(events.len(), 1, "{events:?}");

    // Never again, up to and past the expiry.
    assert_eq!(next_reminder(&s.programme, &s.account), None);
    assert_eq!(due_at(&s.account, Some(&s.programme)), Some(expires_at));
    assert_eq!(tick_daily(&mut s, start(2026, 5, 24) + 1, 20), vec![]);
    assert_eq!(s.available(), 0, "expired meanwhile");
}

#[test]
fn a_lot_spent_before_its_reminder_day_is_not_reminded() {
    let mut s = programme(15);
    earn_at(&mut s, "e1", 100, start(2026, 3, 10) + DAY / 2);
    s.at(start(2026, 5, 1)).then_ok("s1", CommandBody::Spend { points: 100, order_ref: None, order_cash_amount: None });
    assert_eq!(next_reminder(&s.programme, &s.account), None);
    assert_eq!(due_at(&s.account, Some(&s.programme)), None);
    assert_eq!(tick_daily(&mut s, start(2026, 5, 20), 25), vec![]);
}

#[test]
fn several_lots_entering_the_window_on_the_same_day_get_one_reminder_naming_them_all() {
    let mut s = programme(15);
    let (morning, evening) = (start(2026, 3, 10) + DAY / 3, start(2026, 3, 10) + DAY * 3 / 4);
    earn_at(&mut s, "e1", 100, morning);
    earn_at(&mut s, "e2", 30, evening);
    assert_eq!(next_reminder(&s.programme, &s.account), Some((start(2026, 5, 24), 130)));
    assert_eq!(
        tick_daily(&mut s, start(2026, 5, 20), 10),
        vec![(4, vec![("e1".to_string(), 100, morning + 90 * DAY), ("e2".to_string(), 30, evening + 90 * DAY)])]
    );
}

#[test]
fn lots_entering_the_window_on_different_days_get_one_reminder_on_each_day() {
    let mut s = programme(15);
    let (first, second) = (start(2026, 3, 10) + DAY / 2, start(2026, 3, 11) + DAY / 2);
    earn_at(&mut s, "e1", 100, first);
    earn_at(&mut s, "e2", 30, second);
    assert_eq!(next_reminder(&s.programme, &s.account), Some((start(2026, 5, 24), 100)));
    assert_eq!(
        tick_daily(&mut s, start(2026, 5, 20), 10),
        vec![
            (4, vec![("e1".to_string(), 100, first + 90 * DAY)]),
            (5, vec![("e2".to_string(), 30, second + 90 * DAY)])
        ]
    );
}

#[test]
fn a_reminder_names_the_points_left_in_a_partly_spent_lot() {
    let mut s = programme(15);
    let earned = start(2026, 3, 10) + DAY / 2;
    earn_at(&mut s, "e1", 100, earned);
    s.at(start(2026, 4, 1)).then_ok("s1", CommandBody::Spend { points: 60, order_ref: None, order_cash_amount: None });
    assert_eq!(tick_daily(&mut s, start(2026, 5, 24), 1), vec![(0, vec![("e1".to_string(), 40, earned + 90 * DAY)])]);
}

#[test]
fn a_command_after_the_reminder_instant_is_not_blocked_and_settles_the_reminder_first() {
    let mut s = programme(15);
    earn_at(&mut s, "e1", 100, start(2026, 3, 10) + DAY / 2);
    let events = s
        .at(start(2026, 5, 25))
        .then_ok("s1", CommandBody::Spend { points: 10, order_ref: None, order_cash_amount: None });
    assert!(
        matches!(&events[..], [Event::ExpiryReminderDue { points: 100, .. }, Event::PointsSpent { .. }]),
        "{events:?}"
    );
}

#[test]
fn a_programme_with_reminder_days_0_sends_no_reminders() {
    let mut s = programme(0);
    let earned = start(2026, 3, 10) + DAY / 2;
    earn_at(&mut s, "e1", 100, earned);
    assert_eq!(next_reminder(&s.programme, &s.account), None);
    assert_eq!(due_at(&s.account, Some(&s.programme)), Some(earned + 90 * DAY));
    assert_eq!(tick_daily(&mut s, start(2026, 5, 1), 45), vec![]);
    assert_eq!(s.available(), 0, "expired meanwhile");
}

#[test]
fn replaying_the_events_gives_the_same_reminded_lots_and_next_reminder() {
    let mut s = programme(15);
    let mut all = earn_at(&mut s, "e1", 100, start(2026, 3, 10) + DAY / 2);
    all.extend(earn_at(&mut s, "e2", 30, start(2026, 3, 12) + DAY / 2));
    all.extend(tick(&mut s, start(2026, 5, 24)));
    let mut replayed = Account::default();
    all.iter().for_each(|e| replayed.apply(e));
    assert_eq!(replayed, s.account);
    assert!(replayed.lots.get(&Id::of("e1")).is_some_and(|l| l.reminded));
    assert_eq!(next_reminder(&s.programme, &replayed), Some((start(2026, 5, 26), 30)));
}

#[test]
fn a_lot_earned_inside_the_window_on_a_day_already_reminded_is_reminded_the_next_day() {
    let mut s = programme(15);
    let earned = start(2026, 3, 10) + DAY / 2;
    earn_at(&mut s, "e1", 100, earned);
    assert_eq!(reminders(&tick(&mut s, start(2026, 5, 24))).len(), 1);
    // Earned with 10 days' validity: inside the window at once, but the
    // account had its reminder today.
    let inside = start(2026, 5, 24) + DAY / 2;
    let body = CommandBody::Earn {
        points: 30,
        reason: "purchase".into(),
        order_ref: None,
        growth: 0,
        expires_at: Some(inside + 10 * DAY),
    };
    assert_eq!(reminders(&s.at(inside).then_ok("e2", body)), Vec::<Reminded>::new());
    assert_eq!(next_reminder(&s.programme, &s.account), Some((start(2026, 5, 25), 30)));
    assert_eq!(
        tick_daily(&mut s, start(2026, 5, 24) + DAY * 3 / 4, 3),
        vec![(0, vec![("e2".to_string(), 30, inside + 10 * DAY)])],
        "at the start of the next day"
    );
    assert_eq!(
        s.account.extra.reminded_day,
        Some(calendar::programme_day(chrono_tz::Asia::Shanghai, start(2026, 5, 25)))
    );
}
