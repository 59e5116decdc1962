//! What a hostile caller tries first, over a real socket: sequences of
//! ordinary commands that would mint points, request ids reused across
//! accounts, amounts at and past their bounds, invisible characters, odd
//! page tokens and positions. Each is refused cleanly or does exactly what
//! the contract says, and a refusal writes nothing.

use crate::common;

use common::*;
use points_ledger::api::validate::POINTS_PER_COMMAND_MAX;
use points_ledger::proto as pb;
use tonic::Code;

fn within_balance() -> pb::Programme {
    pb::Programme {
        programme_id: "coins".into(),
        clawback_policy: pb::ClawbackPolicy::WithinBalance as i32,
        ..programme()
    }
}

fn in_programme<T>(programme: &str, mut req: T, account: impl FnOnce(&mut T) -> &mut Option<pb::AccountKey>) -> T {
    account(&mut req).as_mut().unwrap().programme_id = programme.into();
    req
}

/// The account's (available, reserved, debt) as its view has it now (the
/// callers here wait for what they asked, or read after the writes settled).
async fn balance(h: &Harness, programme: &str, member: &str) -> (i64, i64, i64) {
    let mut key = account(member);
    key.as_mut().unwrap().programme_id = programme.into();
    let a = h
        .ledger()
        .await
        .get_account(pb::GetAccountRequest { account: key, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    (a.available, a.reserved, a.debt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_after_a_reversal_leaves_nothing_to_spend_under_either_clawback_policy() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    configure(&h, within_balance()).await;
    let mut c = h.ledger().await;
    for p in ["points", "coins"] {
        c.earn(in_programme(p, earn("e1", "mallory", 100), |r| &mut r.account)).await.unwrap();
        c.spend(in_programme(p, spend("s1", "mallory", 100), |r| &mut r.account)).await.unwrap();
        c.reverse_earn(in_programme(p, reverse("r1", "mallory", "e1", 100), |r| &mut r.account)).await.unwrap();
        let r = c.refund(in_programme(p, refund("f1", "mallory", "s1", 100), |r| &mut r.account)).await.unwrap();
        let b = r.into_inner().balance.unwrap();
        assert_eq!((b.available, b.reserved, b.debt), (0, 0, 0), "{p}: both orders refunded");
        rejected!(
            h,
            c.spend(in_programme(p, spend("s2", "mallory", 1), |r| &mut r.account)),
            Code::FailedPrecondition,
            "INSUFFICIENT_POINTS"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_id_sent_at_once_for_eight_members_is_eight_commands_each_retried_to_its_own_answer() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let c = h.ledger().await;
    let send = |c: &pb::points_ledger_client::PointsLedgerClient<_>, m: usize| {
        let mut c = c.clone();
        tokio::spawn(async move { c.earn(earn("1", &format!("m{m}"), 10 + m as i64)).await.map(|r| r.into_inner()) })
    };
    let first: Vec<_> = (0..8).map(|m| send(&c, m)).collect();
    let mut answers = Vec::new();
    for t in first {
        answers.push(t.await.unwrap().expect("each member's command is its own"));
    }
    for (m, a) in answers.iter().enumerate() {
        assert!(!a.replayed);
        assert_eq!(a.balance.unwrap().available, 10 + m as i64);
    }
    let retries: Vec<_> = (0..8).map(|m| send(&c, m)).collect();
    for (m, t) in retries.into_iter().enumerate() {
        let again = t.await.unwrap().expect("a retry gets its own answer back");
        assert!(again.replayed);
        assert_eq!(pb::CommandReply { replayed: false, ..again }, answers[m]);
    }
    // Other content under the same id on the same account is still refused.
    rejected!(h, c.clone().earn(earn("1", "m0", 99)), Code::AlreadyExists, "REQUEST_ID_REUSED");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amounts_past_the_per_command_maximum_are_invalid_argument() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    let max = POINTS_PER_COMMAND_MAX;
    c.earn(earn("at-max", "whale", max)).await.expect("the maximum itself is accepted");
    let e = rejected!(h, c.earn(earn("e1", "whale", max + 1)), Code::InvalidArgument, "");
    assert_eq!(bad_field_of(&e), "points");
    let e = rejected!(h, c.earn(earn("e2", "whale", i64::MAX)), Code::InvalidArgument, "");
    assert_eq!(bad_field_of(&e), "points");
    let e = rejected!(
        h,
        c.earn(pb::EarnRequest { growth: Some(max + 1), ..earn("e3", "whale", 1) }),
        Code::InvalidArgument,
        ""
    );
    assert_eq!(bad_field_of(&e), "growth");
    let e = rejected!(h, c.spend(spend("s1", "whale", max + 1)), Code::InvalidArgument, "");
    assert_eq!(bad_field_of(&e), "points");
    let e = rejected!(h, c.adjust(adjust("a1", "whale", -(max + 1), "ops", "fix")), Code::InvalidArgument, "");
    assert_eq!(bad_field_of(&e), "points");
    let e = rejected!(h, c.adjust(adjust("a2", "whale", i64::MIN, "ops", "fix")), Code::InvalidArgument, "");
    assert_eq!(bad_field_of(&e), "points");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_characters_are_refused_in_request_ids_operators_reasons_and_metadata() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    for sneaky in ["order\u{202E}1", "order\u{200B}1", "\u{FEFF}order", "order\u{2066}1"] {
        let e = rejected!(h, c.earn(earn(sneaky, "eve", 1)), Code::InvalidArgument, "");
        assert_eq!(bad_field_of(&e), "request_id", "{sneaky:?}");
        let e = rejected!(h, c.adjust(adjust("a", "eve", 1, sneaky, "fix")), Code::InvalidArgument, "");
        assert_eq!(bad_field_of(&e), "operator", "{sneaky:?}");
        let e = rejected!(h, c.adjust(adjust("a", "eve", 1, "ops", sneaky)), Code::InvalidArgument, "");
        assert_eq!(bad_field_of(&e), "reason", "{sneaky:?}");
        let mut req = earn("m", "eve", 1);
        req.metadata.insert("channel".into(), sneaky.into());
        let e = rejected!(h, c.earn(req), Code::InvalidArgument, "");
        assert_eq!(bad_field_of(&e), "metadata[channel]", "{sneaky:?}");
    }
    // Chinese text and emoji are ordinary text.
    c.adjust(adjust("a-ok", "eve", 1, "运营-小王", "客服补偿 🎁")).await.unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_token_with_non_ascii_characters_is_invalid_argument() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    c.earn(earn("e1", "zoe", 1)).await.unwrap();
    for token in ["é0", "0é", "积分", "zz"] {
        let e = c
            .list_entries(pb::ListEntriesRequest {
                account: account("zoe"),
                page_token: token.into(),
                ..Default::default()
            })
            .await
            .expect_err("not a token this service issued");
        assert_eq!((e.code(), bad_field_of(&e).as_str()), (Code::InvalidArgument, "page_token"), "{token:?}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_position_past_the_end_of_a_partition_this_instance_writes_is_out_of_range_at_once() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    let r = c.earn(earn("e1", "yan", 1)).await.unwrap().into_inner();
    let at = r.position.unwrap();
    let ask = |offset| pb::GetAccountRequest {
        account: account("yan"),
        min_position: Some(pb::LogPosition { partition: at.partition, offset }),
        ..Default::default()
    };
    c.get_account(ask(at.offset)).await.expect("its own write");
    let e = c.get_account(ask(at.offset + 1_000_000)).await.expect_err("no such position");
    assert_eq!((e.code(), reason_of(&e).as_str()), (Code::OutOfRange, "POSITION_PAST_END"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expire_with_nothing_due_writes_nothing() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    c.earn(earn("e1", "ann", 5)).await.unwrap();
    let before = h.records();
    let r = c
        .expire(pb::ExpireRequest { request_id: "x1".into(), account: account("ann"), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.events.is_empty());
    assert_eq!(r.balance.unwrap().available, 5);
    assert_eq!(h.records(), before, "nothing due, nothing written");
    h.stop().await;
}

/// A request id of the contract's full length, so a record grows quickly
/// with the lots it lists.
fn long_id(i: usize) -> String {
    format!("{i:0>128}")
}

/// Every member in one partition (one writer), whose log takes records of
/// at most 8 KiB; the programme configured.
async fn one_partition_of_small_records() -> Harness {
    let h = Harness::start_with(|c| {
        c.partitions = 1;
        c.writer.record_bytes_max = 8 * 1024;
    })
    .await;
    configure(&h, programme()).await;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_record_would_not_fit_is_refused_alone_and_the_others_go_on() {
    let h = one_partition_of_small_records().await;
    let mut c = h.ledger().await;
    for i in 0..100 {
        c.earn(earn(&long_id(i), "whale", 1)).await.unwrap();
    }
    // The whale's spend lists 100 lots of 128-character ids: ~14 KB.
    let whale = {
        let mut c = c.clone();
        tokio::spawn(async move { c.spend(spend("s-all", "whale", 100)).await })
    };
    let others: Vec<_> = (0..8)
        .map(|m| {
            let mut c = c.clone();
            tokio::spawn(async move { c.earn(earn("e", &format!("m{m}"), 5)).await })
        })
        .collect();
    let e = whale.await.unwrap().expect_err("too large a record");
    assert_eq!((e.code(), reason_of(&e).as_str()), (Code::ResourceExhausted, "RECORD_TOO_LARGE"));
    for t in others {
        t.await.unwrap().expect("another member's command is not failed by the whale's");
    }
    assert_eq!(balance(&h, "points", "whale").await.0, 100, "the refused spend wrote nothing");
    c.spend(spend("s-part", "whale", 20)).await.expect("a smaller spend fits");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_settlement_that_cannot_be_written_is_set_aside_with_an_alert_and_the_partition_goes_on() {
    let h = one_partition_of_small_records().await;
    let mut c = h.ledger().await;
    let expires_at = Some(pbjson_types::Timestamp { seconds: T0 / 1000 + 3600, nanos: 0 });
    for i in 0..100 {
        c.earn(pb::EarnRequest { expires_at, ..earn(&long_id(i), "whale", 1) }).await.unwrap();
    }
    c.earn(pb::EarnRequest { expires_at, ..earn("e1", "minnow", 7) }).await.unwrap();
    // The whale's expiry would list 100 lots of 128-character ids: ~14 KB.
    h.clock.advance(2 * 3600 * 1000);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while balance(&h, "points", "minnow").await.0 > 0 {
        assert!(std::time::Instant::now() < deadline, "the rest of the due index did not move on");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let alert = common::hostile::alert_where(&h, |a| a.rule == "scheduled_settlement_set_aside").await;
    let alert = alert.expect("an alert names the set-aside settlement");
    assert!(alert.subject.contains("whale") && alert.subject.contains("RECORD_TOO_LARGE"), "{alert:?}");
    assert_eq!(balance(&h, "points", "whale").await.0, 100, "nothing of the whale's settlement was written");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_due_lots_than_one_record_holds_expire_a_record_at_a_time() {
    use points_ledger::domain::DUE_ITEMS_PER_RECORD_MAX;
    let h = Harness::start_with(|c| c.partitions = 1).await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    let lots = DUE_ITEMS_PER_RECORD_MAX + 500;
    let expires_at = Some(pbjson_types::Timestamp { seconds: T0 / 1000 + 3600, nanos: 0 });
    earn_lots(&mut c, "whale", "w", lots, 1, expires_at).await;
    c.earn(earn("e1", "minnow", 7)).await.unwrap();
    h.clock.advance(2 * 3600 * 1000);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while balance(&h, "points", "whale").await.0 > 0 {
        assert!(std::time::Instant::now() < deadline, "the due lots were not all expired");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let expiries = common::expiry_lot_counts(&h, "whale");
    assert!(expiries.len() >= 2 && expiries.iter().all(|n| *n <= DUE_ITEMS_PER_RECORD_MAX), "{expiries:?}");
    assert_eq!(expiries.iter().sum::<usize>(), lots);
    assert_eq!(balance(&h, "points", "minnow").await.0, 7);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_account_lists_the_lots_a_page_at_a_time_soonest_expiring_first() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    let mut last = None;
    for (i, hours) in [5, 1, 3, 2, 4].iter().enumerate() {
        let at = Some(pbjson_types::Timestamp { seconds: T0 / 1000 + hours * 3600, nanos: 0 });
        let r = c.earn(pb::EarnRequest { expires_at: at, ..earn(&format!("e{i}"), "pat", 10) }).await.unwrap();
        last = r.into_inner().position;
    }
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let a = c
            .get_account(pb::GetAccountRequest {
                account: account("pat"),
                min_position: last,
                lots_page_size: 2,
                lots_page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((a.lots_with_points, a.available), (5, 50), "{:?}", a.lots);
        assert!(a.lots.len() <= 2);
        seen.extend(a.lots.into_iter().map(|l| l.lot_id));
        token = a.lots_next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["e1", "e3", "e2", "e4", "e0"]);
    let e = c
        .get_account(pb::GetAccountRequest { account: account("pat"), lots_page_size: 1001, ..Default::default() })
        .await
        .expect_err("a page of at most 1000");
    assert_eq!((e.code(), bad_field_of(&e).as_str()), (Code::InvalidArgument, "lots_page_size"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whale_with_the_most_lots_an_account_may_hold_is_bounded_and_fails_no_one_else() {
    use points_ledger::domain::LOTS_WITH_POINTS_MAX;
    let h = Harness::start_with(|c| c.partitions = 1).await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    earn_lots(&mut c, "whale", "w", LOTS_WITH_POINTS_MAX, 1, None).await;
    let e = rejected!(h, c.earn(earn("one-more", "whale", 1)), Code::ResourceExhausted, "TOO_MANY_LOTS");
    assert!(e.message().contains("100000"), "{e:?}");
    // Beside it, in the same partition, an ordinary member is served as ever.
    c.earn(earn("e1", "minnow", 5)).await.unwrap();
    c.spend(spend("s1", "minnow", 2)).await.unwrap();
    let a = c
        .get_account(pb::GetAccountRequest { account: account("whale"), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((a.available, a.lots_with_points, a.lots.len()), (LOTS_WITH_POINTS_MAX as i64, 100_000, 100));
    // A spend of a few lots fits; then the whale may earn again.
    c.spend(spend("s-w", "whale", 10)).await.unwrap();
    c.earn(earn("again", "whale", 1)).await.expect("room for a lot again");
    // Its history is too long to fold on a call: refused, not a stalled server.
    let at = Some(pbjson_types::Timestamp { seconds: T0 / 1000 + 1, nanos: 0 });
    let e = c
        .get_account(pb::GetAccountRequest { account: account("whale"), as_of: at, ..Default::default() })
        .await
        .expect_err("more events than an as_of folds");
    assert_eq!((e.code(), reason_of(&e).as_str()), (Code::FailedPrecondition, "AS_OF_HISTORY_TOO_LONG"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_in_flight_bound_are_shed_with_resource_exhausted() {
    let h = Harness::start_with(|c| c.limits.requests_in_flight_max = 1).await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    let r = c.earn(earn("e1", "kim", 1)).await.unwrap().into_inner();
    // A read that waits for a position the view has not reached holds the
    // one slot for a while (it is near the end: not past it).
    let mut ahead = r.position.unwrap();
    ahead.offset += 2;
    let waiting = {
        let mut c = c.clone();
        tokio::spawn(async move {
            c.get_account(pb::GetAccountRequest {
                account: account("kim"),
                min_position: Some(ahead),
                ..Default::default()
            })
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let e = c.earn(earn("e2", "kim", 1)).await.expect_err("no slot left");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let held = waiting.await.unwrap().expect_err("the view never reached it");
    assert_eq!(held.code(), Code::Unavailable);
    c.earn(earn("e2", "kim", 1)).await.expect("a slot again once the first call ended");
    h.stop().await;
}

/// Arbitrary text: mostly short, any code point (controls, bidi, NUL,
/// surrogates are impossible in a Rust string), sometimes long.
fn text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        3 => proptest::collection::vec(any::<char>(), 0..12).prop_map(|v| v.into_iter().collect()),
        1 => "[a-z0-9_.:-]{1,70}",
        1 => proptest::collection::vec(any::<char>(), 100..300).prop_map(|v| v.into_iter().collect()),
    ]
}

#[test]
fn arbitrary_requests_are_answered_with_a_clear_status_and_never_break_the_server() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let h = rt.block_on(async {
        let h = Harness::start().await;
        configure(&h, programme()).await;
        h
    });
    let request = (text(), text(), text(), any::<i64>(), proptest::option::of(any::<i64>()), text(), text());
    let mut runner = TestRunner::new(Config { cases: 64, ..Config::default() });
    let result = runner.run(&request, |(id, member, reason, points, growth, key, value)| {
        rt.block_on(async {
            let mut c = h.ledger().await;
            let mut req = pb::EarnRequest {
                request_id: id.clone(),
                account: Some(pb::AccountKey {
                    tenant_id: "shop".into(),
                    programme_id: "points".into(),
                    member_id: member,
                }),
                points,
                reason,
                growth,
                ..Default::default()
            };
            req.metadata.insert(key, value);
            let answers = [
                c.earn(req).await.map(|_| ()),
                c.spend(spend(&id, "someone", points)).await.map(|_| ()),
                c.list_entries(pb::ListEntriesRequest {
                    account: account("someone"),
                    page_token: id,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            ];
            for a in answers {
                if let Err(e) = a {
                    prop_assert!(!matches!(e.code(), Code::Internal | Code::Unknown | Code::Unavailable), "{e:?}");
                    prop_assert!(!reason_of(&e).is_empty(), "every refusal names its reason: {e:?}");
                }
            }
            Ok(())
        })
    });
    rt.block_on(async {
        let mut c = h.ledger().await;
        c.earn(earn("after", "someone", 1)).await.expect("still serving");
        h.stop().await;
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
