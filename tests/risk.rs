//! Risk: each alert rule firing and not firing, the risk view's counters at
//! a day boundary in Asia/Shanghai, the programme's issuance per day, and a
//! replay from offset zero giving byte-identical risk view, alerts and books.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use points_ledger::clock::ManualClock;
use points_ledger::proto as pb;
use points_ledger::store::{self, Db};

const DAY: i64 = 86_400_000;
const MINUTE: i64 = 60_000;

fn rules() -> pb::Programme {
    pb::Programme {
        risk: Some(pb::RiskRules {
            issuance_spike_percent: 300,
            issuance_spike_min_points: 1000,
            dense_spend_count: 3,
            dense_spend_minutes: 10,
            shared_address_members: 2,
            member_addresses: 2,
            member_addresses_minutes: 30,
            member_daily_earn_alert: 1000,
            ..Default::default()
        }),
        ..programme()
    }
}

fn earn_from(id: &str, member: &str, points: i64, ip: &str) -> pb::EarnRequest {
    pb::EarnRequest { client_ip: ip.into(), ..earn(id, member, points) }
}

fn ts(ms: i64) -> Option<pbjson_types::Timestamp> {
    Some(pbjson_types::Timestamp { seconds: ms.div_euclid(1000), nanos: 0 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_alert_rule_fires_and_holds_back_and_a_replay_reproduces_the_risk_view() {
    // The clock starts 8 days before T0 (2026-03-10 08:00 in Shanghai, day D).
    let clock = ManualClock::new(T0 - 8 * DAY + 4 * 3_600_000);
    let h = Harness::start_in(tempfile::tempdir().unwrap(), clock, |c| {
        c.books_check_interval = Duration::ZERO;
    })
    .await;
    configure(&h, rules()).await;
    let mut c = h.ledger().await;

    // Days D-7..D-1: 100 points a day (no spike: under the minimum).
    for d in (1..=7).rev() {
        h.clock.set(T0 - d * DAY + 4 * 3_600_000);
        c.earn(earn(&format!("base-{d}"), "base", 100)).await.unwrap();
    }

    // Day D.
    h.clock.set(T0);
    // member_daily_earn: m1 reaches 1000 exactly; m2 stays at 999.
    c.earn(earn("m1-a", "m1", 600)).await.unwrap();
    c.earn(earn("m1-b", "m1", 400)).await.unwrap();
    c.earn(earn("m2-a", "m2", 999)).await.unwrap();
    // dense_spend: m1 spends 4 times within 10 minutes; m2 3 times; m3 4
    // times 4 minutes apart (never more than 3 in a 10-minute window).
    for i in 0..4 {
        c.spend(spend(&format!("m1-s{i}"), "m1", 1)).await.unwrap();
        h.clock.advance(MINUTE);
    }
    for i in 0..3 {
        c.spend(spend(&format!("m2-s{i}"), "m2", 1)).await.unwrap();
    }
    c.earn(earn("m3-a", "m3", 50)).await.unwrap();
    for i in 0..4 {
        c.spend(spend(&format!("m3-s{i}"), "m3", 1)).await.unwrap();
        h.clock.advance(4 * MINUTE);
    }
    // shared_address: 10.0.0.1 earns for 2 members (not more than 2), 10.0.0.2 for 3.
    for m in ["m4", "m5"] {
        c.earn(earn_from(&format!("{m}-ip"), m, 10, "10.0.0.1")).await.unwrap();
    }
    for m in ["m6", "m7", "m8"] {
        c.earn(earn_from(&format!("{m}-ip"), m, 10, "10.0.0.2")).await.unwrap();
    }
    // member_addresses: m9 from 3 addresses within 30 minutes; m10 from 2.
    for (i, ip) in ["1.1.1.1", "2.2.2.2", "3.3.3.3"].iter().enumerate() {
        c.earn(earn_from(&format!("m9-{i}"), "m9", 1, ip)).await.unwrap();
        h.clock.advance(5 * MINUTE);
    }
    for (i, ip) in ["4.4.4.4", "5.5.5.5"].iter().enumerate() {
        c.earn(earn_from(&format!("m10-{i}"), "m10", 1, ip)).await.unwrap();
    }
    // The day boundary in Shanghai: 23:59 on D, then 00:01 on D+1.
    h.clock.set(T0 + 16 * 3_600_000 - MINUTE);
    c.earn(earn("m11-late", "m11", 10)).await.unwrap();
    h.clock.set(T0 + 16 * 3_600_000 + MINUTE);
    c.earn(earn("m11-early", "m11", 20)).await.unwrap();

    let mut admin = h.admin().await;
    // Wait (bounded) until the consumer has every record: the day totals.
    let want = vec![100, 100, 100, 100, 100, 100, 100, 600 + 400 + 999 + 50 + 50 + 3 + 2 + 10, 20];
    let mut figures = Vec::new();
    for _ in 0..100 {
        let days = admin
            .get_issuance(pb::GetIssuanceRequest {
                tenant_id: "shop".into(),
                programme_id: "points".into(),
                from_date: "2026-03-03".into(),
                to_date: "2026-03-11".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .days;
        figures = days.iter().map(|d| d.issued).collect();
        if figures == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(figures, want);
    let list = |token: String, size: u32| {
        let mut admin = admin.clone();
        async move {
            admin
                .list_alerts(pb::ListAlertsRequest {
                    tenant_id: "shop".into(),
                    programme_id: "points".into(),
                    from: ts(T0 - 9 * DAY),
                    to: ts(T0 + 2 * DAY),
                    page_size: size,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let expected: BTreeSet<(String, String)> = [
        ("dense_spend", "shop/points/m1"),
        ("issuance_spike", "2026-03-10"),
        ("member_addresses", "ip:1.1.1.1,ip:2.2.2.2,ip:3.3.3.3"),
        ("member_daily_earn", "shop/points/m1"),
        ("shared_address", "ip:10.0.0.2"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    // The consumer folds partitions in turn: wait (bounded) for the full set,
    // the same twice in a row.
    let mut alerts = Vec::new();
    for _ in 0..100 {
        let now = list(String::new(), 0).await.alerts;
        let got: BTreeSet<_> = now.iter().map(|a| (a.rule.clone(), a.subject.clone())).collect();
        if got == expected && now == alerts {
            break;
        }
        alerts = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got: BTreeSet<_> = alerts.iter().map(|a| (a.rule.clone(), a.subject.clone())).collect();
    assert_eq!(got, expected, "{alerts:#?}");
    let by_rule = |r: &str| alerts.iter().find(|a| a.rule == r).unwrap();
    let earn_alert = by_rule("member_daily_earn");
    assert_eq!(earn_alert.figures["earned_today"], 1000);
    assert_eq!(earn_alert.events.len(), 1, "the record that crossed the threshold");
    let dense = by_rule("dense_spend");
    assert_eq!((dense.figures["spends"], dense.events.len()), (4, 4));
    let shared = by_rule("shared_address");
    assert_eq!(shared.figures["members"], 3);
    let members: BTreeSet<_> = shared.accounts.iter().map(|a| a.member_id.as_str()).collect();
    assert_eq!(members, BTreeSet::from(["m6", "m7", "m8"]));
    let spike = by_rule("issuance_spike");
    assert_eq!(spike.figures["trailing_daily_average"], 100);
    assert!(spike.figures["issued_today"] >= 2000, "{spike:?}");
    assert_eq!(by_rule("member_addresses").figures["addresses"], 3);
    // Paging gives the same alerts.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(token, 2).await;
        paged.extend(page.alerts);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, alerts);

    // The risk view: m11's counters start again at midnight in Shanghai.
    let risk = admin
        .get_account_risk(pb::GetAccountRiskRequest { account: account("m11"), date: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((risk.date.as_str(), risk.earned, risk.commands), ("2026-03-11", 20, 1));
    let m1 = admin
        .get_account_risk(pb::GetAccountRiskRequest { account: account("m1"), date: "2026-03-10".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((m1.earned, m1.spent, m1.commands), (1000, 4, 6));
    // Without a range: the last 7 days in the programme's zone, up to the
    // clock (which stands near T0).
    let recent = admin
        .list_alerts(pb::ListAlertsRequest {
            tenant_id: "shop".into(),
            programme_id: "points".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!recent.alerts.is_empty());
    let oldest = T0 - 6 * DAY - 8 * 3_600_000; // the start of 2026-03-04 in Shanghai
    for a in &recent.alerts {
        let at = a.at.as_ref().unwrap().seconds * 1000;
        assert!(at >= oldest, "{a:?}");
    }
    // Bad requests.
    let e = admin
        .list_alerts(pb::ListAlertsRequest {
            tenant_id: "shop".into(),
            programme_id: "points".into(),
            from: ts(T0),
            to: ts(T0 + 100 * DAY),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let mut bad = rules();
    bad.risk.as_mut().unwrap().dense_spend_minutes = 0;
    let e = admin
        .configure_programme(pb::ConfigureProgrammeRequest {
            request_id: "bad-risk".into(),
            programme: Some(bad),
            operator: "ops".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(bad_field_of(&e), "programme.risk.dense_spend_minutes");

    // A replay from zero gives byte-identical books, risk view and alerts.
    let events = h.events.clone();
    let (dir, broker) = h.stop_keep_broker().await;
    let live = Db::open_read_only(&dir.path().join("books"), store::BOOK_CFS).unwrap();
    let views = points_ledger::tools::audit::open_views_read_only(dir.path()).unwrap();
    let logs = match &broker {
        Some(b) => points_ledger::server::open_kafka_logs(&points_ledger::log::kafka::KafkaConfig::new(
            &b.bootstrap(),
            "points",
            events.partitions(),
        ))
        .unwrap(),
        None => points_ledger::server::open_embedded_logs(dir.path(), events.partitions()).unwrap(),
    };
    let registry = points_ledger::programmes::Registry::load(logs.control.as_ref()).unwrap();
    // Folded afresh up to exactly where the live books stand (the raiser
    // appends members' alerts after the traffic, which the books may not
    // have reached when the service stopped).
    let (_, difference) =
        points_ledger::finance::reconciler::verify(events.as_ref(), &registry, &views, &live).unwrap();
    assert!(difference.is_none(), "{difference:?}");
}

/// The programme-wide daily issuance cap, across partitions and concurrent
/// earns, kept across a restart, reset at midnight in the programme's zone,
/// truncating or rejecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_programme_cap_holds_across_partitions_concurrency_and_restarts() {
    let h = Harness::start().await;
    let capped = pb::Programme { programme_daily_issuance_cap: 1000, ..programme() };
    configure(&h, capped.clone()).await;
    let mut c = h.ledger().await;
    let partitions: BTreeSet<u32> = (0..6)
        .map(|i| {
            points_ledger::log::record::partition_for(
                &points_ledger::domain::AccountKey::new("shop", "points", &format!("m{i}")),
                3,
            )
        })
        .collect();
    assert!(partitions.len() > 1, "members spread over partitions");
    let a = c.earn(earn("a", "m0", 300)).await.unwrap().into_inner();
    assert_eq!((a.granted_points, a.forfeited_points), (300, 0));
    // One instance writes every partition: one exact counter (a cluster
    // counts in shares, tests/cluster.rs).
    assert_eq!(a.cap_mode, pb::CapMode::Exact as i32);
    let spend = c.spend(spend("s", "m0", 1)).await.unwrap().into_inner();
    assert_eq!(spend.cap_mode, pb::CapMode::Unspecified as i32, "no cap applies to a spend");
    // Twenty earns of 100 at once, from members all over the partitions: the
    // 700 left go to exactly seven of them (or in part), never more.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move { c.earn(earn(&format!("burst-{i}"), &format!("m{}", i % 6), 100)).await })
        })
        .collect();
    let mut granted = 0;
    for t in tasks {
        granted += t.await.unwrap().unwrap().into_inner().granted_points;
    }
    assert_eq!(granted, 700, "the cap is exact across partitions");

    // After a restart the day's count is still there.
    let (dir, clock) = h.stop_for_restart().await;
    let h = Harness::start_in(dir, clock, |_| {}).await;
    let mut c = h.ledger().await;
    let r = c.earn(earn("after-restart", "m3", 10)).await.unwrap().into_inner();
    assert_eq!((r.granted_points, r.forfeited_points), (0, 10));
    // Midnight in Shanghai (T0 is 08:00 there): a new day, a new allowance.
    h.clock.set(T0 + 16 * 3_600_000);
    let r = c.earn(earn("next-day", "m3", 100)).await.unwrap().into_inner();
    assert_eq!(r.granted_points, 100);
    // Under the reject policy the earn past the cap is refused.
    h.admin()
        .await
        .configure_programme(pb::ConfigureProgrammeRequest {
            request_id: "cfg-reject".into(),
            programme: Some(pb::Programme {
                programme_daily_issuance_cap: 150,
                cap_policy: pb::CapPolicy::Reject as i32,
                ..programme()
            }),
            operator: "ops".into(),
        })
        .await
        .unwrap();
    c.earn(earn("fits", "m1", 50)).await.unwrap();
    let e = c.earn(earn("over", "m2", 1)).await.unwrap_err();
    assert_eq!((e.code(), reason_of(&e).as_str()), (tonic::Code::ResourceExhausted, "PROGRAMME_DAILY_CAP_REACHED"));
    h.stop().await;
}

fn alert_action(id: &str, alert_id: &str, note: &str) -> pb::AlertActionRequest {
    pb::AlertActionRequest {
        request_id: id.into(),
        tenant_id: "shop".into(),
        programme_id: "points".into(),
        alert_id: alert_id.into(),
        operator: "risk-desk".into(),
        note: note.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_risk_desk_acknowledges_and_resolves_an_alert_and_its_history_survives_a_restart() {
    let h = Harness::start().await;
    let risk = pb::RiskRules { member_daily_earn_alert: 100, ..Default::default() };
    configure(&h, pb::Programme { risk: Some(risk), ..programme() }).await;
    h.ledger().await.earn(earn("e1", "vic", 150)).await.unwrap();
    let daily = |a: &pb::Alert| a.rule == "member_daily_earn";
    let alert = common::hostile::alert_where(&h, daily).await.expect("the alert");
    assert_eq!((alert.state, alert.history.len()), (pb::AlertState::Open as i32, 0));
    let mut admin = h.admin().await;
    admin.acknowledge_alert(alert_action("ack-1", &alert.alert_id, "calling the member")).await.unwrap();
    let again = admin.acknowledge_alert(alert_action("ack-1", &alert.alert_id, "calling the member")).await;
    assert!(again.unwrap().into_inner().replayed);
    let reused = admin.acknowledge_alert(alert_action("ack-1", &alert.alert_id, "other")).await.unwrap_err();
    assert_eq!(reused.code(), tonic::Code::AlreadyExists);
    admin.resolve_alert(alert_action("res-1", &alert.alert_id, "a real purchase")).await.unwrap();
    let (dir, clock) = h.stop_for_restart().await;
    let h = Harness::start_in(dir, clock, |_| {}).await;
    let after = common::hostile::alert_where(&h, daily).await.expect("the alert after a restart");
    assert_eq!(after.alert_id, alert.alert_id, "the id is stable");
    assert_eq!(after.state, pb::AlertState::Resolved as i32);
    let steps: Vec<(i32, &str)> = after.history.iter().map(|s| (s.state, s.note.as_str())).collect();
    assert_eq!(
        steps,
        [
            (pb::AlertState::Acknowledged as i32, "calling the member"),
            (pb::AlertState::Resolved as i32, "a real purchase")
        ]
    );
    assert!(after.history.iter().all(|s| s.operator == "risk-desk"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spending_a_lot_in_a_day_alerts_for_the_member_and_for_the_programmes_redemption() {
    let h = Harness::start().await;
    let risk = pb::RiskRules {
        member_daily_spend_alert: 500,
        redemption_spike_percent: 300,
        redemption_spike_min_points: 100,
        ..Default::default()
    };
    configure(&h, pb::Programme { risk: Some(risk), ..programme() }).await;
    let mut c = h.ledger().await;
    c.earn(earn("e1", "una", 1000)).await.unwrap();
    c.spend(spend("s1", "una", 300)).await.unwrap();
    c.spend(spend("s2", "una", 300)).await.unwrap();
    let member = common::hostile::alert_where(&h, |a| a.rule == "member_daily_spend").await.expect("member alert");
    assert_eq!((member.figures["spent_today"], member.figures["threshold"]), (600, 500));
    assert_eq!(member.events.len(), 1, "the spend that crossed the threshold");
    let spike = common::hostile::alert_where(&h, |a| a.rule == "redemption_spike").await.expect("programme alert");
    assert_eq!(spike.figures["redeemed_today"], 600);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_redeeming_for_many_members_alerts() {
    let h = Harness::start().await;
    let risk = pb::RiskRules { shared_spend_address_members: 2, ..Default::default() };
    configure(&h, pb::Programme { risk: Some(risk), ..programme() }).await;
    let mut c = h.ledger().await;
    for m in ["r1", "r2", "r3"] {
        c.earn(earn(&format!("{m}-e"), m, 100)).await.unwrap();
        // Earned anywhere; all three cash out from one device.
        c.spend(pb::SpendRequest { device_id: "mall-kiosk-7".into(), ..spend(&format!("{m}-s"), m, 90) })
            .await
            .unwrap();
    }
    let alert = common::hostile::alert_where(&h, |a| a.rule == "shared_spend_address").await.expect("an address alert");
    assert_eq!(alert.subject, "device:mall-kiosk-7");
    assert_eq!((alert.accounts.len(), alert.figures["members"]), (3, 3));
    h.stop().await;
}
