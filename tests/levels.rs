//! Levels end to end: growth raises the level, a reversal lowers it, and a
//! member who stops buying is downgraded by the writer's scheduler when the
//! window passes (no command needed); GetAccount's level view and
//! ListLevelChanges show it, and a replay from offset zero reproduces it.

use crate::common;

use std::time::Duration;

use common::*;
use points_ledger::proto as pb;
use points_ledger::tools::audit;

const DAY: i64 = 86_400_000;

fn with_levels() -> pb::Programme {
    pb::Programme {
        levels: [("注册", 0), ("铜牌", 100), ("银牌", 500), ("金牌", 2000)]
            .iter()
            .map(|(n, g)| pb::LevelThreshold { name: (*n).into(), min_growth: *g })
            .collect(),
        level_window_days: 30,
        ..programme()
    }
}

async fn account_now(h: &Harness, at: Option<pb::LogPosition>) -> pb::Account {
    h.ledger()
        .await
        .get_account(pb::GetAccountRequest {
            account: account("lee"),
            min_position: at,
            as_of: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn levels_rise_fall_with_reversals_and_lapse_when_the_window_passes() {
    let h = Harness::start().await;
    configure(&h, with_levels()).await;
    let mut c = h.ledger().await;

    let r = c.earn(pb::EarnRequest { growth: Some(600), ..earn("o1", "lee", 100) }).await.unwrap().into_inner();
    let events: Vec<_> = r.events.iter().filter_map(|e| e.event.clone()).collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, pb::ledger_event::Event::LevelChanged(l) if l.to == "银牌" && l.from.is_empty())),
        "{events:?}"
    );
    let a = account_now(&h, r.position).await;
    assert_eq!(a.level, "银牌");
    let s = a.level_status.unwrap();
    assert_eq!((s.level.as_str(), s.growth_in_window, s.window_days), ("银牌", 600, 30));
    assert_eq!((s.next_level.as_str(), s.growth_to_next), ("金牌", 1400));
    // T0 is 08:00 on 2026-03-10 in Shanghai: the growth leaves at the start of
    // 2026-04-09 there, 2026-04-08T16:00Z; keeping 银牌 then takes 500 more.
    let boundary = T0 + 30 * DAY - 8 * 3_600_000;
    assert_eq!(s.next_evaluation.as_ref().map(|t| t.seconds * 1000), Some(boundary));
    assert_eq!(s.growth_to_keep, 500);

    let r = c
        .reverse_earn(pb::ReverseEarnRequest { growth: Some(200), ..reverse("rv", "lee", "o1", 10) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(account_now(&h, r.position).await.level, "铜牌");

    // The window passes with no purchase: the scheduler downgrades.
    h.clock.set(boundary);
    let mut lapsed = None;
    for _ in 0..100 {
        let a = account_now(&h, None).await;
        if a.level == "注册" {
            lapsed = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = lapsed.expect("the member was not downgraded when the window passed");
    assert_eq!(a.level_status.as_ref().unwrap().growth_in_window, 0);
    assert_eq!(a.growth, 400, "lifetime growth is kept");

    // The history, one per page and all at once.
    let list = |token: String, size: u32| {
        let mut c = c.clone();
        async move {
            c.list_level_changes(pb::ListLevelChangesRequest {
                account: account("lee"),
                page_size: size,
                page_token: token,
                min_position: None,
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let all = list(String::new(), 0).await;
    let path: Vec<_> = all.changes.iter().map(|c| (c.from.as_str(), c.to.as_str())).collect();
    assert_eq!(path, vec![("", "银牌"), ("银牌", "铜牌"), ("铜牌", "注册")]);
    assert_eq!(all.changes[1].why, "growth reversed");
    assert!(all.changes[2].why.contains("left the window"), "{}", all.changes[2].why);
    assert_eq!(all.changes[2].at.as_ref().unwrap().seconds * 1000, boundary);
    assert!(all.next_page_token.is_empty());
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(token, 1).await;
        paged.extend(page.changes);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, all.changes);

    // A replay from zero reproduces the level view byte for byte.
    let events = h.events.clone();
    let (dir, _broker) = h.stop_keep_broker().await;
    let views = audit::open_views_read_only(dir.path()).unwrap();
    assert_eq!(audit::verify(events.as_ref(), &views).unwrap().1, None);
}

fn adjust_growth(id: &str, growth: i64) -> pb::AdjustGrowthRequest {
    pb::AdjustGrowthRequest {
        request_id: id.into(),
        account: account("lee"),
        growth,
        operator: "ops".into(),
        reason: "review deleted".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_moves_growth_up_and_down_but_never_below_zero() {
    let h = Harness::start().await;
    configure(&h, with_levels()).await;
    let mut c = h.ledger().await;
    let up = c.adjust_growth(adjust_growth("g1", 150)).await.unwrap().into_inner();
    assert_eq!(up.balance.unwrap().growth, 150);
    assert_eq!(account_now(&h, up.position).await.level, "铜牌", "growth alone raises the level");
    let down = c.adjust_growth(adjust_growth("g2", -400)).await.unwrap().into_inner();
    assert_eq!(down.balance.unwrap().growth, 0);
    let Some(pb::ledger_event::Event::GrowthAdjusted(g)) = down.events[0].event.clone() else { panic!("{down:?}") };
    assert_eq!((g.requested, g.growth), (-400, -150), "the shortfall is reported");
    assert_eq!(account_now(&h, down.position).await.level, "注册");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_set_by_hand_holds_against_evaluation_until_its_hold_ends() {
    let h = Harness::start().await;
    configure(&h, with_levels()).await;
    let mut c = h.ledger().await;
    let set = pb::SetLevelRequest {
        request_id: "l1".into(),
        account: account("lee"),
        level: "金牌".into(),
        operator: "ops".into(),
        reason: "VIP customer".into(),
        hold_until: Some(pbjson_types::Timestamp { seconds: (T0 + 10 * DAY) / 1000, nanos: 0 }),
    };
    h.admin().await.set_level(set.clone()).await.unwrap();
    let r = c.earn(pb::EarnRequest { growth: Some(10), ..earn("o1", "lee", 10) }).await.unwrap().into_inner();
    assert_eq!(account_now(&h, r.position).await.level, "金牌", "held: 10 growth does not lower it");
    h.clock.advance(11 * DAY);
    let r = c.earn(pb::EarnRequest { growth: Some(10), ..earn("o2", "lee", 10) }).await.unwrap().into_inner();
    assert_eq!(account_now(&h, r.position).await.level, "注册", "after the hold, evaluation decides");
    let unknown = pb::SetLevelRequest { request_id: "l2".into(), level: "platinum".into(), ..set };
    let e = h.admin().await.set_level(unknown).await.expect_err("no such level");
    assert_eq!((e.code(), reason_of(&e).as_str()), (tonic::Code::NotFound, "LEVEL_NOT_FOUND"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_re_evaluated_when_the_level_rules_change_without_a_command_of_theirs() {
    let h = Harness::start().await;
    configure(&h, with_levels()).await;
    let mut c = h.ledger().await;
    let members = ["ann", "bob", "cat", "dan"];
    for m in members {
        c.earn(pb::EarnRequest { growth: Some(150), ..earn(&format!("o-{m}"), m, 10) }).await.unwrap();
    }
    // Bronze now needs 200 growth.
    let mut stricter = with_levels();
    stricter.levels[1].min_growth = 200;
    h.admin()
        .await
        .configure_programme(pb::ConfigureProgrammeRequest {
            request_id: "levels-2".into(),
            programme: Some(stricter),
            operator: "ops".into(),
        })
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for m in members {
        loop {
            let a = c
                .get_account(pb::GetAccountRequest { account: account(m), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            if a.level == "注册" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{m} kept {}", a.level);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    h.stop().await;
}

/// Monthly RFM over payments: bought within 7 days 3, 30 days 2; 1 and 3
/// purchases 1 and 2; 100 and 500 yuan 1 and 2. Bronze from 4, gold from 6.
fn rfm_programme() -> pb::Programme {
    let bands = |b: &[(i64, i64)]| {
        b.iter().map(|(threshold, score)| pb::RfmBand { threshold: *threshold, score: *score }).collect()
    };
    pb::Programme {
        levels: [("注册", 0), ("铜牌", 4), ("金牌", 6)]
            .iter()
            .map(|(n, g)| pb::LevelThreshold { name: (*n).into(), min_growth: *g })
            .collect(),
        earning_rules: vec![rule("pay", "payment", 5)],
        growth_model: pb::GrowthModel::Rfm as i32,
        rfm: Some(pb::RfmRules {
            period_months: 1,
            purchase_actions: vec!["payment".into()],
            recency: bands(&[(7, 3), (30, 2)]),
            frequency: bands(&[(1, 1), (3, 2)]),
            monetary: bands(&[(10_000, 1), (50_000, 2)]),
        }),
        ..programme()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfm_rules_are_validated_at_configure_programme() {
    let h = Harness::start().await;
    let with = |f: &dyn Fn(&mut pb::RfmRules)| {
        let mut p = rfm_programme();
        f(p.rfm.as_mut().unwrap());
        p
    };
    let cases = [
        (pb::Programme { rfm: None, ..rfm_programme() }, "programme.rfm"),
        (pb::Programme { growth_model: pb::GrowthModel::Behaviour as i32, ..rfm_programme() }, "programme.rfm"),
        (with(&|r| r.period_months = 2), "programme.rfm.period_months"),
        (with(&|r| r.purchase_actions.clear()), "programme.rfm.purchase_actions"),
        (with(&|r| r.purchase_actions = vec!["no spaces".into()]), "programme.rfm.purchase_actions[0]"),
        (with(&|r| r.recency.clear()), "programme.rfm.recency"),
        (with(&|r| r.frequency[1].threshold = 1), "programme.rfm.frequency[1].threshold"),
        (with(&|r| r.monetary[0].threshold = -1), "programme.rfm.monetary[0].threshold"),
        (with(&|r| r.monetary[1].score = -1), "programme.rfm.monetary[1].score"),
    ];
    for (i, (p, field)) in cases.into_iter().enumerate() {
        let e = configure_refused(&h, &format!("bad-{i}"), p).await;
        assert_eq!((e.code(), bad_field_of(&e).as_str()), (tonic::Code::InvalidArgument, field), "{e:?}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_rfm_the_scheduler_evaluates_members_at_the_period_end_and_levels_follow() {
    let h = Harness::start().await;
    configure(&h, rfm_programme()).await;
    let mut c = h.ledger().await;
    // T0 is 2026-03-10 08:00 in Shanghai: three payments of 300 yuan in March.
    let mut last = None;
    for (i, d) in [0, 5, 10].into_iter().enumerate() {
        h.clock.set(T0 + d * DAY);
        let r = c.record_activity(payment(&format!("p{i}"), "lee", 300, &[])).await.unwrap().into_inner();
        let Some(pb::ledger_event::Event::ActivityRecorded(a)) = r.events[0].event.clone() else { panic!("{r:?}") };
        assert!(a.purchase);
        last = r.position;
    }
    let a = account_now(&h, last).await;
    assert_eq!(a.level, "注册");
    // The period ends at the start of April in Shanghai, 2026-03-31T16:00Z.
    let april = T0 + 21 * DAY + 16 * 3_600_000;
    assert_eq!(a.level_status.as_ref().unwrap().next_evaluation.as_ref().map(|t| t.seconds * 1000), Some(april));

    h.clock.set(april);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let a = loop {
        let a = account_now(&h, None).await;
        if a.level == "金牌" {
            break a;
        }
        assert!(std::time::Instant::now() < deadline, "not evaluated at the period end: {}", a.level);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // 11 days before the 31st (2) + 3 purchases (2) + 900 yuan (2).
    assert_eq!(a.level_status.as_ref().unwrap().growth_in_window, 6);

    // Nothing bought in April: at the end of April the member drops.
    let may = april + 30 * DAY;
    h.clock.set(may);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let a = account_now(&h, None).await;
        if a.level == "注册" {
            assert_eq!(a.level_status.as_ref().unwrap().growth_in_window, 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not evaluated at the end of April: {}", a.level);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let changes = c
        .list_level_changes(pb::ListLevelChangesRequest { account: account("lee"), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .changes;
    let path: Vec<_> = changes.iter().map(|c| (c.from.as_str(), c.to.as_str(), c.why.as_str())).collect();
    assert_eq!(
        path,
        vec![
            // Placed at the first command (its RFM growth 0 before any evaluation).
            ("", "注册", "level rules re-evaluated"),
            ("注册", "金牌", "RFM evaluation"),
            ("金牌", "注册", "RFM evaluation")
        ]
    );

    // A replay from zero reproduces the views byte for byte.
    let events = h.events.clone();
    let (dir, _broker) = h.stop_keep_broker().await;
    let views = audit::open_views_read_only(dir.path()).unwrap();
    assert_eq!(audit::verify(events.as_ref(), &views).unwrap().1, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_a_programme_to_rfm_re_evaluates_members_by_their_rfm_growth() {
    let h = Harness::start().await;
    configure(&h, with_levels()).await;
    let mut c = h.ledger().await;
    let r = c.earn(pb::EarnRequest { growth: Some(150), ..earn("o1", "lee", 10) }).await.unwrap().into_inner();
    assert_eq!(account_now(&h, r.position).await.level, "铜牌");
    // Time for the scheduler to finish its walk of the first version.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The same levels, now over RFM growth (none measured yet: 0).
    let rfm = pb::Programme { levels: with_levels().levels, level_window_days: 30, ..rfm_programme() };
    h.admin()
        .await
        .configure_programme(pb::ConfigureProgrammeRequest {
            request_id: "rfm".into(),
            programme: Some(rfm),
            operator: "ops".into(),
        })
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let a = account_now(&h, None).await;
        if a.level == "注册" {
            assert_eq!(a.growth, 150, "earned growth is kept");
            assert_eq!(a.level_status.unwrap().growth_in_window, 0, "the level view shows the RFM growth");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "kept {}", a.level);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.stop().await;
}
