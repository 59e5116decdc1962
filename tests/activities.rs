//! Earning rules over a real socket: a programme's rules decide what an
//! activity is worth (`RecordActivity`), `PreviewActivity` tells it first and
//! writes nothing, penalties take points, and every refusal has its code,
//! reason and field.

use crate::common;

use common::*;
use points_ledger::proto as pb;
use tonic::Code;

fn ts(ms: i64) -> Option<pbjson_types::Timestamp> {
    Some(pbjson_types::Timestamp { seconds: ms.div_euclid(1000), nanos: 0 })
}

/// The behaviour table of a small programme: login +1 (3 a day), payment
/// by amount (personal 1 point per 100 yuan) with instalment ×2, a report
/// −12, and a Double 11 campaign doubling payments.
fn with_rules() -> pb::Programme {
    let mut payment = rule("payment", "payment", 0);
    payment.amount_rates.insert("personal".into(), pb::AmountRate { amount_minor: 10_000, points: 1, growth: 1 });
    payment.tag_multipliers_percent.insert("instalment".into(), 200);
    pb::Programme {
        earning_rules: vec![
            pb::EarningRule { daily_count_max: 3, ..rule("login", "login", 1) },
            payment,
            rule("reported", "reported", -12),
            pb::EarningRule { disabled: true, ..rule("old-task", "old_task", 5) },
        ],
        campaigns: vec![pb::Campaign {
            campaign_id: "double11".into(),
            starts_at: ts(T0 + 3_600_000),
            ends_at: ts(T0 + 7_200_000),
            actions: vec!["payment".into()],
            multiplier_percent: 200,
        }],
        ..programme()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_earns_what_its_rules_say_and_the_reply_names_each_rule() {
    let h = Harness::start().await;
    configure(&h, with_rules()).await;
    let mut c = h.ledger().await;
    let r = c.record_activity(payment("p1", "ann", 1234, &["instalment"])).await.unwrap().into_inner();
    // 1234 yuan at 1 point per 100 yuan = 12, instalment x2 = 24.
    assert_eq!(r.granted_points, 24);
    assert_eq!(r.balance.unwrap().available, 24);
    let applied = &r.applied_rules[0];
    assert_eq!((applied.rule_id.as_str(), applied.points, applied.multiplier_percent), ("payment", 24, 200));
    assert_eq!(applied.multipliers[0].source, "tag:instalment");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_tells_what_the_next_record_activity_gives_and_writes_nothing() {
    let h = Harness::start().await;
    configure(&h, with_rules()).await;
    let mut c = h.ledger().await;
    h.clock.advance(3_600_000); // inside Double 11
    let before = h.records();
    let preview = c.preview_activity(payment("p1", "bob", 500, &[])).await.unwrap().into_inner();
    assert_eq!(h.records(), before, "a preview writes nothing");
    let r = c.record_activity(payment("p1", "bob", 500, &[])).await.unwrap().into_inner();
    assert_eq!((preview.points, preview.growth), (r.granted_points, 10));
    assert_eq!(preview.applied_rules, r.applied_rules);
    assert_eq!(preview.points, 10, "500 yuan = 5 points, doubled by the campaign");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_daily_count_stops_the_fourth_login_of_the_day() {
    let h = Harness::start().await;
    configure(&h, with_rules()).await;
    let mut c = h.ledger().await;
    for i in 0..4 {
        c.record_activity(activity(&format!("l{i}"), "cat", "login")).await.unwrap();
    }
    let r = c.record_activity(activity("l4", "cat", "login")).await.unwrap().into_inner();
    assert_eq!((r.granted_points, r.applied_rules[0].capped_points), (0, 1));
    assert_eq!(r.balance.unwrap().available, 3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_penalty_takes_points_and_its_reply_grants_negative_points() {
    let h = Harness::start().await;
    configure(&h, with_rules()).await;
    let mut c = h.ledger().await;
    c.earn(earn("e1", "dan", 20)).await.unwrap();
    let r = c.record_activity(activity("r1", "dan", "reported")).await.unwrap().into_inner();
    assert_eq!(r.granted_points, -12);
    assert_eq!(r.balance.unwrap().available, 8);
    // Beyond the balance under ALLOW_DEBT: debt.
    let r = c.record_activity(activity("r2", "dan", "reported")).await.unwrap().into_inner();
    let b = r.balance.unwrap();
    assert_eq!((b.available, b.debt), (0, 4));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_activity_is_answered_as_first_decided() {
    let h = Harness::start().await;
    configure(&h, with_rules()).await;
    let mut c = h.ledger().await;
    let first = c.record_activity(payment("p1", "eve", 300, &[])).await.unwrap().into_inner();
    let again = c.record_activity(payment("p1", "eve", 300, &[])).await.unwrap().into_inner();
    assert!(again.replayed);
    assert_eq!((again.granted_points, again.applied_rules), (first.granted_points, first.applied_rules));
    let e = c.record_activity(payment("p1", "eve", 999, &[])).await.expect_err("same id, other facts");
    assert_eq!(e.code(), Code::AlreadyExists);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_inactive_action_is_refused_with_its_reason() {
    let h = Harness::start().await;
    configure(&h, with_rules()).await;
    let mut c = h.ledger().await;
    rejected!(h, c.record_activity(activity("x1", "fay", "nope")), Code::NotFound, "EARNING_RULE_NOT_FOUND");
    rejected!(
        h,
        c.record_activity(activity("x2", "fay", "old_task")),
        Code::FailedPrecondition,
        "EARNING_RULE_NOT_ACTIVE"
    );
    let negative = pb::RecordActivityRequest { amount_minor: -1, ..activity("x3", "fay", "login") };
    let e = rejected!(h, c.record_activity(negative), Code::InvalidArgument, "");
    assert_eq!(bad_field_of(&e), "amount_minor");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activities_go_in_a_submit_batch_like_any_command() {
    use pb::batch_result::Result as R;
    let h = Harness::start().await;
    configure(&h, with_rules()).await;
    let mut c = h.ledger().await;
    let commands = ["l1", "l2"]
        .iter()
        .map(|id| pb::BatchCommand {
            command: Some(pb::batch_command::Command::Activity(activity(id, "gus", "login"))),
        })
        .collect();
    let results = c.submit_batch(pb::SubmitBatchRequest { commands }).await.unwrap().into_inner().results;
    let granted: Vec<i64> = results
        .into_iter()
        .map(|r| match r.result {
            Some(R::Reply(r)) => r.granted_points,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(granted, [1, 1]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_that_do_not_hold_together_are_refused_naming_the_field() {
    let h = Harness::start().await;
    let cases: Vec<(pb::Programme, &str)> = vec![
        (
            pb::Programme { earning_rules: vec![rule("a", "x", 1), rule("a", "y", 1)], ..programme() },
            "programme.earning_rules[1].rule_id",
        ),
        (
            pb::Programme { earning_rules: vec![rule("a", "x y", 1)], ..programme() },
            "programme.earning_rules[0].action",
        ),
        (pb::Programme { earning_rules: vec![rule("a", "x", 0)], ..programme() }, "programme.earning_rules[0].points"),
        (
            pb::Programme { earning_rules: vec![rule("a", "x", 1), rule("b", "x", -1)], ..programme() },
            "programme.earning_rules[1].points",
        ),
        (
            pb::Programme {
                earning_rules: vec![pb::EarningRule { starts_at: ts(T0 + 10), ends_at: ts(T0), ..rule("a", "x", 1) }],
                ..programme()
            },
            "programme.earning_rules[0].ends_at",
        ),
        (
            pb::Programme {
                campaigns: vec![pb::Campaign {
                    campaign_id: "c".into(),
                    starts_at: ts(T0),
                    ends_at: ts(T0 + 1000),
                    multiplier_percent: 5000,
                    ..Default::default()
                }],
                ..programme()
            },
            "programme.campaigns[0].multiplier_percent",
        ),
        (
            pb::Programme { level_multipliers_percent: [("gold".to_string(), 150)].into(), ..programme() },
            "programme.level_multipliers_percent[gold]",
        ),
    ];
    for (i, (p, field)) in cases.into_iter().enumerate() {
        let e = configure_refused(&h, &format!("bad-{i}"), p).await;
        assert_eq!((e.code(), bad_field_of(&e).as_str()), (Code::InvalidArgument, field), "{e:?}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cash_ratio_of_a_programme_changes_only_with_allow_ratio_change() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let e = configure_refused(&h, "ratio-1", pb::Programme { points_per_cash_unit: 200, ..programme() }).await;
    assert_eq!((e.code(), reason_of(&e).as_str()), (Code::FailedPrecondition, "RATIO_CHANGE_NOT_ALLOWED"));
    let changed = h
        .admin()
        .await
        .configure_programme(pb::ConfigureProgrammeRequest {
            request_id: "ratio-2".into(),
            programme: Some(pb::Programme { points_per_cash_unit: 200, allow_ratio_change: true, ..programme() }),
            operator: "ops".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .programme
        .unwrap();
    assert_eq!((changed.points_per_cash_unit, changed.allow_ratio_change), (200, true));
    // The day's book says the ratio changed, and from what (T0 is 2026-03-10 08:00 in Shanghai).
    let channel = tonic::transport::Channel::from_shared(h.url()).unwrap().connect().await.unwrap();
    let book = pb::reconciliation_client::ReconciliationClient::new(channel)
        .get_daily_book(pb::GetDailyBookRequest {
            tenant_id: "shop".into(),
            programme_id: "points".into(),
            date: "2026-03-10".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((book.points_per_cash_unit, book.ratio_changed_from), (200, 100));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growth_alone_is_an_earn_of_zero_points() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    let r = c.earn(pb::EarnRequest { points: 0, growth: Some(5), ..earn("g1", "hal", 0) }).await.unwrap().into_inner();
    let b = r.balance.unwrap();
    assert_eq!((b.available, b.growth), (0, 5));
    let e = c.earn(earn("g2", "hal", 0)).await.expect_err("neither points nor growth");
    assert_eq!((e.code(), bad_field_of(&e).as_str()), (Code::InvalidArgument, "points"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_with_rule_changes_replays_to_byte_identical_views_and_books() {
    let h = Harness::start().await;
    configure(&h, with_rules()).await;
    let mut c = h.ledger().await;
    for i in 0..5 {
        c.record_activity(payment(&format!("p{i}"), "ivy", 100 * (i + 1), &["instalment"])).await.unwrap();
        c.record_activity(activity(&format!("l{i}"), "ivy", "login")).await.unwrap();
    }
    // Logins are worth 5 from now on; the earlier activities keep what they got.
    let mut changed = with_rules();
    changed.earning_rules[0].points = 5;
    h.admin()
        .await
        .configure_programme(pb::ConfigureProgrammeRequest {
            request_id: "rules-2".into(),
            programme: Some(changed),
            operator: "ops".into(),
        })
        .await
        .unwrap();
    h.clock.advance(86_400_000);
    let r = c.record_activity(activity("l9", "ivy", "login")).await.unwrap().into_inner();
    assert_eq!((r.granted_points, r.programme_version), (5, 2));
    c.record_activity(activity("r1", "ivy", "reported")).await.unwrap();
    let (dir, _clock) = h.stop().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_points-ledger"))
        .args(["verify", "--data-dir", dir.path().to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("byte-identical"), "{text}");
}
