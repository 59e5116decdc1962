//! Expiry reminders end to end: a lot earned over gRPC with 90 days'
//! validity and a 15-day window is reminded by the writer's scheduler at the
//! start of day 75 in Shanghai (no command needed, on the manual clock);
//! GetAccount announces the reminder before it, ListEntries shows it once,
//! and a replay from offset zero is byte-identical.

use crate::common;

use std::time::Duration;

use common::*;
use points_ledger::proto as pb;

const DAY: i64 = 86_400_000;

async fn get_account(h: &Harness, member: &str) -> pb::Account {
    h.ledger()
        .await
        .get_account(pb::GetAccountRequest { account: account(member), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
}

/// The member's `ExpiryReminderDue` entries.
async fn reminders(h: &Harness, member: &str) -> Vec<pb::ExpiryReminderDue> {
    let r = h
        .ledger()
        .await
        .list_entries(pb::ListEntriesRequest { account: account(member), page_size: 500, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    r.entries
        .into_iter()
        .filter_map(|e| match e.event.and_then(|e| e.event) {
            Some(pb::ledger_event::Event::ExpiryReminderDue(x)) => Some(x),
            _ => None,
        })
        .collect()
}

fn millis(t: &Option<pbjson_types::Timestamp>) -> Option<i64> {
    t.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_reminds_a_lot_once_on_day_75_and_a_replay_is_byte_identical() {
    let h = Harness::start().await;
    configure(
        &h,
        pb::Programme { validity_days: 90, validity_rounding: pb::ValidityRounding::None as i32, ..programme() },
    )
    .await;
    let mut c = h.ledger().await;
    let earned = c.earn(earn("o1", "mei", 100)).await.unwrap().into_inner();
    // T0 is 08:00 on 2026-03-10 in Shanghai: the lot expires 2026-06-08
    // 08:00 there, and is reminded from the start of 2026-05-24 there
    // (2026-05-23T16:00Z).
    let expires_at = T0 + 90 * DAY;
    let reminder_at = T0 + 75 * DAY - 8 * 3_600_000;
    // Read once the view has the earn (a reply comes before its commit).
    let r = pb::GetAccountRequest { account: account("mei"), min_position: earned.position, ..Default::default() };
    let a = c.get_account(r).await.unwrap().into_inner();
    assert_eq!((millis(&a.next_reminder_at), a.next_reminder_points), (Some(reminder_at), 100));

    // A moment before: nothing.
    h.clock.set(reminder_at - 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(reminders(&h, "mei").await.is_empty());

    h.clock.set(reminder_at);
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = reminders(&h, "mei").await;
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.len(), 1, "no reminder when the window opened: {seen:?}");
    assert_eq!(seen[0].points, 100);
    let lots: Vec<_> = seen[0].lots.iter().map(|l| (l.lot_id.as_str(), l.points, millis(&l.expires_at))).collect();
    assert_eq!(lots, vec![("o1", 100, Some(expires_at))]);
    let a = get_account(&h, "mei").await;
    assert_eq!((a.next_reminder_at, a.next_reminder_points), (None, 0));

    // Later that day and the next: no second reminder.
    h.clock.set(reminder_at + DAY + DAY / 2);
    c.spend(spend("s1", "mei", 10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reminders(&h, "mei").await.len(), 1);

    let (dir, _clock) = h.stop().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_points-ledger"))
        .args(["verify", "--data-dir", dir.path().to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("byte-identical"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_window_widened_by_a_rules_change_reminds_at_the_new_day() {
    let h = Harness::start().await;
    let rules = |days: i32, id: &str| pb::ConfigureProgrammeRequest {
        request_id: id.into(),
        operator: "ops".into(),
        programme: Some(pb::Programme {
            validity_days: 90,
            validity_rounding: pb::ValidityRounding::None as i32,
            reminder_days: days,
            ..programme()
        }),
    };
    let mut admin = h.admin().await;
    admin.configure_programme(rules(7, "cfg-7")).await.unwrap();
    h.ledger().await.earn(earn("o1", "mei", 100)).await.unwrap();
    // Queued for day 83 (7 days ahead); the window grows to 15 days.
    admin.configure_programme(rules(15, "cfg-15")).await.unwrap();
    let reminder_at = T0 + 75 * DAY - 8 * 3_600_000;
    h.clock.set(reminder_at);
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = reminders(&h, "mei").await;
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.len(), 1, "reminded on day 75, not day 83: {seen:?}");
    h.stop().await;
}
