//! Risk-gated pending points through the API: an alert of a holding rule is
//! raised in the member's partition (`AlertRaised`, `EarningsHeld`), later
//! earns are pending (not spendable), and the risk desk releases or
//! forfeits them; the day's book balances throughout and a rebuild of the
//! books gives the same bytes.

use crate::common;

use std::time::Duration;

use common::hostile::cli;
use common::*;
use points_ledger::proto as pb;

/// Alerts when a member's earnings of the day reach 1000, and holds them.
fn holding() -> pb::Programme {
    pb::Programme {
        risk: Some(pb::RiskRules {
            member_daily_earn_alert: 1000,
            hold_earnings_on: vec!["member_daily_earn".into()],
            ..Default::default()
        }),
        ..programme()
    }
}

fn pending_command(id: &str, member: &str) -> pb::ReleasePendingPointsRequest {
    pb::ReleasePendingPointsRequest {
        request_id: id.into(),
        account: account(member),
        operator: "risk-desk".into(),
        reason: "reviewed".into(),
        ..Default::default()
    }
}

/// The account once the view has folded `min_position` (a reply comes
/// before its batch is committed).
async fn get_at(h: &Harness, member: &str, min_position: Option<pb::LogPosition>) -> pb::Account {
    let r = pb::GetAccountRequest { account: account(member), min_position, ..Default::default() };
    h.ledger().await.get_account(r).await.unwrap().into_inner()
}

async fn get(h: &Harness, member: &str) -> pb::Account {
    let r = pb::GetAccountRequest { account: account(member), ..Default::default() };
    h.ledger().await.get_account(r).await.unwrap().into_inner()
}

/// Waits (up to 20 s) until the member's earns are held.
async fn until_held(h: &Harness, member: &str) -> pb::Account {
    for _ in 0..200 {
        let a = get(h, member).await;
        if a.earnings_held {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{member}'s earns were never held");
}

/// A member who earned 1000 (the alert), was held, and then earned 300 pending.
async fn held_member(h: &Harness, member: &str) -> pb::CommandReply {
    configure(h, holding()).await;
    let mut c = h.ledger().await;
    c.earn(earn(&format!("{member}-1"), member, 1000)).await.unwrap();
    let held = until_held(h, member).await;
    assert_eq!(held.held_rule, "member_daily_earn");
    c.earn(earn(&format!("{member}-2"), member, 300)).await.unwrap().into_inner()
}

/// Today's book once it shows `events` events (the books follow the views).
async fn book(h: &Harness, events: u64) -> pb::DailyBook {
    let today = chrono::DateTime::from_timestamp_millis(h.clock.0.load(std::sync::atomic::Ordering::SeqCst))
        .unwrap()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive()
        .to_string();
    let mut c = h.reconciliation().await;
    for _ in 0..100 {
        let r =
            pb::GetDailyBookRequest { tenant_id: "shop".into(), programme_id: "points".into(), date: today.clone() };
        if let Ok(b) = c.get_daily_book(r).await.map(|b| b.into_inner()) {
            if b.event_count >= events {
                return b;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no book of {events} events for {today}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_members_new_earns_are_pending_and_cannot_be_spent() {
    let h = Harness::start().await;
    let reply = held_member(&h, "m1").await;
    let balance = reply.balance.unwrap();
    assert_eq!((balance.available, balance.pending), (1000, 300));
    let e = h.ledger().await.spend(spend("s1", "m1", 1001)).await.unwrap_err();
    assert_eq!(reason_of(&e), "INSUFFICIENT_POINTS");
    let mut c = h.ledger().await;
    let r = pb::ListPendingPointsRequest { account: account("m1"), min_position: reply.position };
    let listed = c.list_pending_points(r).await.unwrap();
    let listed = listed.into_inner();
    assert_eq!((listed.pending, listed.held, listed.lots.len()), (300, true, 1));
    assert_eq!(listed.lots[0].lot_id, "m1-2");
    // The alert is an event of the member's statement.
    let r = pb::ListEntriesRequest { account: account("m1"), min_position: reply.position, ..Default::default() };
    let entries = c.list_entries(r).await;
    let types: Vec<String> = entries
        .unwrap()
        .into_inner()
        .entries
        .iter()
        .filter_map(|e| e.event.as_ref()?.event.as_ref().map(|x| format!("{x:?}")))
        .map(|s| s.split('(').next().unwrap_or_default().to_string())
        .collect();
    assert!(types.iter().any(|t| t == "AlertRaised") && types.iter().any(|t| t == "EarningsHeld"), "{types:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_pending_points_are_spendable_with_their_original_expiry() {
    let h = Harness::start().await;
    let earned = held_member(&h, "m1").await;
    let mut c = h.ledger().await;
    let r = pb::ListPendingPointsRequest { account: account("m1"), min_position: earned.position };
    let before = c.list_pending_points(r).await.unwrap();
    let expiry = before.into_inner().lots[0].expires_at;
    let released = c.release_pending_points(pending_command("rel-1", "m1")).await.unwrap().into_inner();
    let a = get_at(&h, "m1", released.position).await;
    assert_eq!((a.available, a.pending, a.earnings_held), (1300, 0, false));
    assert!(a.lots.iter().any(|l| l.lot_id == "m1-2" && l.expires_at == expiry), "{:?}", a.lots);
    c.spend(spend("s1", "m1", 1300)).await.unwrap();
    // Earn, alert and hold, pending earn, release, spend.
    let b = book(&h, 6).await;
    assert!(b.balanced, "{}", b.mismatch);
    assert_eq!((b.issued, b.pending_earned, b.pending_released, b.pending), (1300, 300, 300, 0));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forfeited_pending_points_are_gone_and_the_books_balance() {
    let h = Harness::start().await;
    held_member(&h, "m1").await;
    let mut c = h.ledger().await;
    let r = pending_command("f-1", "m1");
    let forfeit = pb::ForfeitPendingPointsRequest {
        request_id: r.request_id,
        account: r.account,
        operator: r.operator,
        reason: "farming".into(),
        ..Default::default()
    };
    let forfeited = c.forfeit_pending_points(forfeit.clone()).await.unwrap().into_inner();
    let a = get_at(&h, "m1", forfeited.position).await;
    assert_eq!((a.available, a.pending), (1000, 0));
    let again = c.forfeit_pending_points(pb::ForfeitPendingPointsRequest { request_id: "f-2".into(), ..forfeit });
    assert_eq!(reason_of(&again.await.unwrap_err()), "NOTHING_PENDING");
    // Earn, alert and hold, pending earn, forfeit.
    let b = book(&h, 5).await;
    assert!(b.balanced, "{}", b.mismatch);
    assert_eq!((b.issued, b.pending_earned, b.pending_forfeited, b.closing_balance), (1000, 300, 300, 1000));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_points_commands_need_an_admin_client() {
    let h = Harness::start_with(|c| c.auth = auth("adm * admin\nshop-app shop\n")).await;
    let mut c = h.ledger().await;
    let e =
        c.release_pending_points(common::tls::bearer("shop-app", pending_command("rel-1", "m1"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_rebuilds_the_views_and_books_of_held_and_released_points_byte_for_byte() {
    let h = Harness::start().await;
    held_member(&h, "m1").await;
    held_member(&h, "m2").await;
    let mut c = h.ledger().await;
    c.release_pending_points(pending_command("rel-1", "m1")).await.unwrap();
    let r = pending_command("f-1", "m2");
    let forfeit = pb::ForfeitPendingPointsRequest {
        request_id: r.request_id,
        account: r.account,
        operator: r.operator,
        reason: r.reason,
        ..Default::default()
    };
    c.forfeit_pending_points(forfeit).await.unwrap();
    book(&h, 10).await;
    let flags = h.log_flags();
    let (dir, _broker) = h.stop_keep_broker().await;
    let mut args = vec!["verify", "--data-dir", dir.path().to_str().unwrap()];
    args.extend(flags.iter().map(String::as_str));
    let (ok, out) = cli(&args);
    assert!(ok && out.contains("books verified"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_earning_for_too_many_members_holds_every_one_of_them() {
    let h = Harness::start().await;
    let rules = pb::RiskRules {
        shared_address_members: 2,
        hold_earnings_on: vec!["shared_address".into()],
        ..Default::default()
    };
    configure(&h, pb::Programme { risk: Some(rules), ..programme() }).await;
    let mut c = h.ledger().await;
    for m in ["f1", "f2", "f3"] {
        c.earn(pb::EarnRequest { client_ip: "10.9.9.9".into(), ..earn(&format!("{m}-1"), m, 10) }).await.unwrap();
    }
    for m in ["f1", "f2", "f3"] {
        until_held(&h, m).await;
    }
    let r = c.earn(earn("f1-2", "f1", 10)).await.unwrap().into_inner();
    assert_eq!(r.balance.unwrap().pending, 10);
    // A member from another address is not held.
    c.earn(pb::EarnRequest { client_ip: "10.1.1.1".into(), ..earn("ok-1", "ok", 10) }).await.unwrap();
    let r = c.earn(earn("ok-2", "ok", 10)).await.unwrap().into_inner();
    assert_eq!(r.balance.unwrap().pending, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_cannot_hold_is_refused_naming_the_field() {
    let h = Harness::start().await;
    let rules = pb::RiskRules { hold_earnings_on: vec!["issuance_spike".into()], ..Default::default() };
    let e = configure_refused(&h, "bad-hold", pb::Programme { risk: Some(rules), ..programme() }).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(bad_field_of(&e), "programme.risk.hold_earnings_on");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn books_rebuilt_from_the_log_raise_no_alert_again() {
    let h = Harness::start().await;
    held_member(&h, "m1").await;
    book(&h, 4).await;
    let raised = |h: &Harness| {
        let records = h.records_of("m1");
        records.iter().flat_map(|r| &r.events).filter(|e| e.name() == "AlertRaised").count()
    };
    assert_eq!(raised(&h), 1);
    let (dir, clock) = h.stop_for_restart().await;
    std::fs::remove_dir_all(dir.path().join("books")).unwrap();
    let h = Harness::start_in(dir, clock, |_| {}).await;
    book(&h, 4).await;
    // Past a few looks of the raiser.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(raised(&h), 1, "the alert was raised once");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_take_the_request_id_of_an_alert_the_ledger_will_raise() {
    let h = Harness::start().await;
    configure(&h, holding()).await;
    let e = h.ledger().await.earn(earn("alert:member_daily_earn-1-00000000", "m1", 10)).await.unwrap_err();
    assert_eq!((e.code(), bad_field_of(&e)), (tonic::Code::InvalidArgument, "request_id".to_string()));
    h.stop().await;
}
