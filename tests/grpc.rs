//! Every RPC over a real socket on 127.0.0.1:0, and every status code, with
//! the check that a rejected command writes nothing.

use crate::common;

use common::*;
use points_ledger::proto as pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_round_trips_and_queries_see_it() {
    let h = Harness::start().await;
    let cfg = configure(&h, programme()).await;
    assert_eq!(cfg.programme.as_ref().unwrap().version, 1);
    let mut c = h.ledger().await;

    let r = c
        .earn(pb::EarnRequest { growth: Some(500), order_ref: Some("o-1".into()), ..earn("e1", "alice", 1000) })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.replayed);
    assert_eq!(
        r.balance.unwrap(),
        pb::AccountBalance { available: 1000, reserved: 0, debt: 0, growth: 500, pending: 0 }
    );
    assert_eq!((r.granted_points, r.forfeited_points, r.programme_version), (1000, 0, 1));

    let r = c.spend(spend("s1", "alice", 300)).await.unwrap().into_inner();
    assert_eq!(r.balance.unwrap().available, 700);

    let r = c
        .reserve(pb::ReserveRequest {
            request_id: "r1".into(),
            account: account("alice"),
            points: 200,
            order_ref: "o-2".into(),
            timeout_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.balance.unwrap().available, r.balance.unwrap().reserved), (500, 200));
    let r = c
        .capture_reservation(pb::CaptureReservationRequest {
            request_id: "c1".into(),
            account: account("alice"),
            reservation_id: "r1".into(),
            points: Some(150),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.balance.unwrap().available, r.balance.unwrap().reserved), (550, 0));

    c.reserve(pb::ReserveRequest {
        request_id: "r2".into(),
        account: account("alice"),
        points: 50,
        order_ref: "o-3".into(),
        timeout_seconds: 600,
        ..Default::default()
    })
    .await
    .unwrap();
    let r = c
        .release_reservation(pb::ReleaseReservationRequest {
            request_id: "rel2".into(),
            account: account("alice"),
            reservation_id: "r2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.balance.unwrap().available, 550);

    let r = c.refund(refund("rf1", "alice", "s1", 100)).await.unwrap().into_inner();
    assert_eq!(r.balance.unwrap().available, 650);
    let r = c.refund(refund("rf2", "alice", "c1", 150)).await.unwrap().into_inner();
    assert_eq!(r.balance.unwrap().available, 800);

    let r = c
        .reverse_earn(pb::ReverseEarnRequest { growth: Some(200), ..reverse("rv1", "alice", "e1", 100) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.balance.unwrap(),
        pb::AccountBalance { available: 700, reserved: 0, debt: 0, growth: 300, pending: 0 }
    );

    let mut admin = h.admin().await;
    let r = c.adjust(adjust("a1", "alice", -50, "ops-7", "double grant")).await.unwrap().into_inner();
    assert_eq!(r.balance.unwrap().available, 650);

    let r = admin
        .freeze_account(pb::FreezeAccountRequest {
            request_id: "f1".into(),
            account: account("alice"),
            earning: true,
            spending: false,
            operator: "risk".into(),
            reason: "review".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.events.len(), 1);
    admin
        .unfreeze_account(pb::UnfreezeAccountRequest {
            request_id: "u1".into(),
            account: account("alice"),
            earning: true,
            spending: false,
            operator: "risk".into(),
            reason: "ok".into(),
        })
        .await
        .unwrap();

    let r = c
        .expire(pb::ExpireRequest {
            request_id: "x1".into(),
            account: account("alice"),
            all_points: true,
            reason: "blacklisted".into(),
            operator: "risk-ops".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.balance.unwrap().available, 0);

    // Queries, read-your-writes through min_position.
    let acct = c
        .get_account(pb::GetAccountRequest {
            account: account("alice"),
            min_position: r.position,
            as_of: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((acct.available, acct.reserved, acct.debt, acct.growth), (0, 0, 0, 300));
    assert!(acct.lots.is_empty());
    assert_eq!(acct.position.unwrap().offset, r.position.unwrap().offset);

    // The statement, paged: the running balance ends where the account is.
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_entries(pb::ListEntriesRequest {
                account: account("alice"),
                page_size: 3,
                page_token: token.clone(),
                min_position: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 3);
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(entries.len() >= 13, "{} entries", entries.len());
    assert_eq!(entries.iter().map(|e| e.delta).sum::<i64>(), 0);
    assert_eq!(entries.last().unwrap().balance.unwrap().available, 0);
    assert_eq!(entries[0].request_id, "e1");

    // As of a time before the expiry: folded from the statement.
    h.clock.advance(1000);
    c.earn(earn("e2", "alice", 10)).await.unwrap();
    let before = c
        .get_account(pb::GetAccountRequest {
            account: account("alice"),
            min_position: None,
            as_of: Some(pbjson_types::Timestamp { seconds: T0 / 1000, nanos: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.available, 0, "everything up to T0 included the expiry");

    let p = admin
        .get_programme(pb::GetProgrammeRequest { tenant_id: "shop".into(), programme_id: "points".into(), version: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p.version, p.time_zone.as_str(), p.unit_name.as_str()), (1, "Asia/Shanghai", "积分"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_get_the_original_answer_and_other_content_is_already_exists() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    let first = c.earn(earn("e1", "bob", 100)).await.unwrap().into_inner();
    let again = c.earn(earn("e1", "bob", 100)).await.unwrap().into_inner();
    assert!(again.replayed);
    assert_eq!(pb::CommandReply { replayed: false, ..again }, first);
    rejected!(h, c.earn(earn("e1", "bob", 101)), Code::AlreadyExists, "REQUEST_ID_REUSED");
    // Configure is idempotent too.
    let mut a = h.admin().await;
    let req = pb::ConfigureProgrammeRequest {
        request_id: "cfg-x".into(),
        programme: Some(programme()),
        operator: "ops".into(),
    };
    let v2 = a.configure_programme(req.clone()).await.unwrap().into_inner();
    let v2b = a.configure_programme(req.clone()).await.unwrap().into_inner();
    assert!(v2b.replayed && !v2.replayed);
    assert_eq!(v2.programme.unwrap().version, 2);
    let mut other = req;
    other.operator = "someone-else".into();
    let e = a.configure_programme(other).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field_and_writes_nothing() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    c.earn(earn("seed", "carol", 100)).await.unwrap();
    let ia = Code::InvalidArgument;
    let cases: Vec<(pb::EarnRequest, &str)> = vec![
        (earn("", "carol", 1), "request_id"),
        (earn(&"x".repeat(129), "carol", 1), "request_id"),
        (earn("ok", "", 1), "account.member_id"),
        (earn("ok", &"m".repeat(65), 1), "account.member_id"),
        (earn("ok", "bad member!", 1), "account.member_id"),
        (earn("ok", "carol", 0), "points"),
        (earn("ok", "carol", -1), "points"),
        (pb::EarnRequest { reason: String::new(), ..earn("ok", "carol", 1) }, "reason"),
        (pb::EarnRequest { account: None, ..earn("ok", "carol", 1) }, "account"),
        (pb::EarnRequest { growth: Some(-1), ..earn("ok", "carol", 1) }, "growth"),
        (
            pb::EarnRequest {
                metadata: (0..17).map(|i| (format!("k{i}"), "v".into())).collect(),
                ..earn("ok", "carol", 1)
            },
            "metadata",
        ),
        (pb::EarnRequest { metadata: [("k".into(), "v".repeat(257))].into(), ..earn("ok", "carol", 1) }, "metadata[k]"),
        (pb::EarnRequest { client_ip: "1".repeat(65), ..earn("ok", "carol", 1) }, "client_ip"),
        (
            pb::EarnRequest {
                expires_at: Some(pbjson_types::Timestamp { seconds: 1, nanos: 0 }),
                ..earn("ok", "carol", 1)
            },
            "expires_at",
        ),
    ];
    for (req, field) in cases {
        let err = rejected!(h, c.earn(req), ia, "");
        assert_eq!(bad_field_of(&err), field, "{err:?}");
    }
    // Past the per-command maximum (no sum can overflow then).
    let err = rejected!(h, c.earn(earn("big", "carol", i64::MAX)), ia, "");
    assert_eq!(bad_field_of(&err), "points");
    rejected!(h, c.spend(spend("s", "carol", 0)), ia, "");
    rejected!(
        h,
        c.reserve(pb::ReserveRequest {
            request_id: "r".into(),
            account: account("carol"),
            points: 1,
            order_ref: "o".into(),
            timeout_seconds: 0,
            ..Default::default()
        }),
        ia,
        ""
    );
    rejected!(
        h,
        c.reserve(pb::ReserveRequest {
            request_id: "r".into(),
            account: account("carol"),
            points: 1,
            order_ref: String::new(),
            timeout_seconds: 5,
            ..Default::default()
        }),
        ia,
        ""
    );
    rejected!(h, c.adjust(adjust("a", "carol", 0, "o", "r")), ia, "");
    rejected!(h, c.adjust(adjust("a", "carol", 5, "", "r")), ia, "");
    rejected!(
        h,
        c.expire(pb::ExpireRequest {
            request_id: "x".into(),
            account: account("carol"),
            all_points: true,
            reason: String::new(),
            ..Default::default()
        }),
        ia,
        ""
    );
    let err = c
        .list_entries(pb::ListEntriesRequest { account: account("carol"), page_size: 501, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((err.code(), bad_field_of(&err).as_str()), (ia, "page_size"));
    let err = c
        .list_entries(pb::ListEntriesRequest {
            account: account("carol"),
            page_token: "zz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ia);
    // Bad programme rules.
    let mut a = h.admin().await;
    for (p, field) in [
        (pb::Programme { time_zone: "Mars/Olympus".into(), ..programme() }, "programme.time_zone"),
        (pb::Programme { points_per_cash_unit: 0, ..programme() }, "programme.points_per_cash_unit"),
        (pb::Programme { validity_rounding: 42, ..programme() }, "programme.validity_rounding"),
        (pb::Programme { max_order_share_percent: 101, ..programme() }, "programme.max_order_share_percent"),
        (
            pb::Programme {
                levels: vec![
                    pb::LevelThreshold { name: "金牌".into(), min_growth: 10 },
                    pb::LevelThreshold { name: "银牌".into(), min_growth: 5 },
                ],
                ..programme()
            },
            "programme.levels[1].min_growth",
        ),
    ] {
        let err = a
            .configure_programme(pb::ConfigureProgrammeRequest {
                request_id: "c".into(),
                programme: Some(p),
                operator: "ops".into(),
            })
            .await
            .unwrap_err();
        assert_eq!((err.code(), bad_field_of(&err).as_str()), (ia, field));
    }
    let err = a
        .configure_programme(pb::ConfigureProgrammeRequest {
            request_id: "c".into(),
            programme: Some(pb::Programme { programme_daily_issuance_cap: -5, ..programme() }),
            operator: "ops".into(),
        })
        .await
        .unwrap_err();
    assert_eq!((err.code(), bad_field_of(&err).as_str()), (ia, "programme.programme_daily_issuance_cap"));
    let acct = c.get_account(pb::GetAccountRequest { account: account("carol"), ..Default::default() }).await;
    assert!(acct.is_ok());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_failed_precondition_and_resource_exhausted() {
    let h = Harness::start().await;
    configure(
        &h,
        pb::Programme {
            member_daily_earn_cap: 1000,
            cap_policy: pb::CapPolicy::Reject as i32,
            max_order_share_percent: 50,
            ..programme()
        },
    )
    .await;
    let mut c = h.ledger().await;
    let nf = Code::NotFound;
    let fp = Code::FailedPrecondition;
    // Unknown programme, spend, earn, reservation.
    let mut req = earn("x", "dave", 1);
    req.account.as_mut().unwrap().programme_id = "coins".into();
    rejected!(h, c.earn(req), nf, "PROGRAMME_NOT_FOUND");
    c.earn(earn("e1", "dave", 500)).await.unwrap();
    rejected!(h, c.refund(refund("rf", "dave", "nope", 1)), nf, "SPEND_NOT_FOUND");
    rejected!(h, c.reverse_earn(reverse("rv", "dave", "nope", 1)), nf, "EARN_NOT_FOUND");
    rejected!(
        h,
        c.release_reservation(pb::ReleaseReservationRequest {
            request_id: "rl".into(),
            account: account("dave"),
            reservation_id: "nope".into(),
            ..Default::default()
        }),
        nf,
        "RESERVATION_NOT_FOUND"
    );
    let err = h
        .admin()
        .await
        .get_programme(pb::GetProgrammeRequest { tenant_id: "shop".into(), programme_id: "coins".into(), version: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), nf);

    // Insufficient points, max share, refund beyond, settled reservation, frozen.
    let big_order =
        |id: &str, points| pb::SpendRequest { order_cash_amount: Some(1_000_000), ..spend(id, "dave", points) };
    rejected!(h, c.spend(big_order("s", 501)), fp, "INSUFFICIENT_POINTS");
    rejected!(
        h,
        c.spend(pb::SpendRequest { order_cash_amount: Some(100), ..spend("s", "dave", 51) }),
        fp,
        "ORDER_SHARE_EXCEEDED"
    );
    rejected!(h, c.spend(spend("s", "dave", 5)), Code::InvalidArgument, "ORDER_CASH_AMOUNT_REQUIRED");
    c.spend(big_order("s1", 100)).await.unwrap();
    rejected!(h, c.refund(refund("rf", "dave", "s1", 101)), fp, "REFUND_EXCEEDS_SPEND");
    rejected!(h, c.reverse_earn(reverse("rv", "dave", "e1", 501)), fp, "REVERSAL_EXCEEDS_EARN");
    c.reserve(pb::ReserveRequest {
        request_id: "r1".into(),
        account: account("dave"),
        points: 10,
        order_ref: "o".into(),
        timeout_seconds: 60,
        order_cash_amount: Some(1_000_000),
        ..Default::default()
    })
    .await
    .unwrap();
    c.release_reservation(pb::ReleaseReservationRequest {
        request_id: "rl1".into(),
        account: account("dave"),
        reservation_id: "r1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    rejected!(
        h,
        c.capture_reservation(pb::CaptureReservationRequest {
            request_id: "cp".into(),
            account: account("dave"),
            reservation_id: "r1".into(),
            ..Default::default()
        }),
        fp,
        "RESERVATION_SETTLED"
    );
    h.admin()
        .await
        .freeze_account(pb::FreezeAccountRequest {
            request_id: "f".into(),
            account: account("dave"),
            earning: false,
            spending: true,
            operator: "risk".into(),
            reason: "fraud".into(),
        })
        .await
        .unwrap();
    rejected!(h, c.spend(big_order("s2", 1)), fp, "ACCOUNT_FROZEN");

    // Daily cap under the reject policy.
    c.earn(earn("e2", "dave", 500)).await.unwrap();
    rejected!(h, c.earn(earn("e3", "dave", 1)), Code::ResourceExhausted, "DAILY_EARN_CAP_REACHED");
    h.stop().await;
}

fn with<T>(token: &str, req: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(req);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_gate_tenants_and_admin_operations() {
    let h = Harness::start_with(|c| c.auth = auth("# tokens\nadm * admin\nshop-app shop\nother-app other\n")).await;
    let mut a = h.admin().await;
    let cfg = |t| {
        with(
            t,
            pb::ConfigureProgrammeRequest {
                request_id: "c1".into(),
                programme: Some(programme()),
                operator: "ops".into(),
            },
        )
    };
    // The caller is checked before the request (issue 30).
    assert_eq!(
        a.configure_programme(tonic::Request::new(pb::ConfigureProgrammeRequest::default())).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        a.configure_programme(with("adm", pb::ConfigureProgrammeRequest::default())).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(a.configure_programme(cfg("shop-app")).await.unwrap_err().code(), Code::PermissionDenied);
    a.configure_programme(cfg("adm")).await.unwrap();
    let mut c = h.ledger().await;
    let before = h.records();
    let err = c.earn(earn("e1", "erin", 5)).await.unwrap_err();
    assert_eq!((err.code(), reason_of(&err).as_str()), (Code::Unauthenticated, "UNAUTHENTICATED"));
    assert_eq!(c.earn(with("nope", earn("e1", "erin", 5))).await.unwrap_err().code(), Code::Unauthenticated);
    let err = c.earn(with("other-app", earn("e1", "erin", 5))).await.unwrap_err();
    assert_eq!((err.code(), reason_of(&err).as_str()), (Code::PermissionDenied, "TENANT_NOT_ALLOWED"));
    let adj = adjust("a", "erin", 5, "o", "r");
    assert_eq!(c.adjust(with("shop-app", adj.clone())).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(h.records(), before);
    c.earn(with("shop-app", earn("e1", "erin", 5))).await.unwrap();
    c.adjust(with("adm", adj)).await.unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_statement_pages_through_every_entry_once_in_order() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    // 45 commands (some records carry two events: an earn and its level
    // change would, here a spend past two lots) spread over several rows.
    let mut last = None;
    for i in 0..45 {
        let r = if i % 3 == 2 {
            c.spend(spend(&format!("s{i}"), "lin", 5)).await.unwrap().into_inner()
        } else {
            c.earn(earn(&format!("e{i}"), "lin", 10 + i)).await.unwrap().into_inner()
        };
        last = r.position;
    }
    let whole = c
        .list_entries(pb::ListEntriesRequest {
            account: account("lin"),
            page_size: 500,
            min_position: last,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.entries.len(), 45);
    assert!(whole.next_page_token.is_empty());
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_entries(pb::ListEntriesRequest {
                account: account("lin"),
                page_size: 7,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, whole.entries);
    let mut running = 0;
    for e in &paged {
        running += e.delta;
        let b = e.balance.unwrap();
        assert_eq!(b.available + b.reserved, running, "{e:?}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_every_point_needs_an_admin_token_and_an_operator() {
    let h = Harness::start_with(|c| c.auth = auth("adm * admin\nshop-app shop\n")).await;
    let mut a = h.admin().await;
    a.configure_programme(with(
        "adm",
        pb::ConfigureProgrammeRequest { request_id: "c1".into(), programme: Some(programme()), operator: "ops".into() },
    ))
    .await
    .unwrap();
    let mut c = h.ledger().await;
    c.earn(with("shop-app", earn("e1", "ivy", 500))).await.unwrap();
    let recycle = |operator: &str| pb::ExpireRequest {
        request_id: "x1".into(),
        account: account("ivy"),
        all_points: true,
        reason: "blacklisted".into(),
        operator: operator.into(),
        ..Default::default()
    };
    let before = h.records();
    // A business token may expire due lots, never recycle an account.
    let err = c.expire(with("shop-app", recycle("risk-ops"))).await.unwrap_err();
    assert_eq!((err.code(), reason_of(&err).as_str()), (Code::PermissionDenied, "ADMIN_REQUIRED"));
    let err = c.expire(with("adm", recycle(""))).await.unwrap_err();
    assert_eq!((err.code(), bad_field_of(&err).as_str()), (Code::InvalidArgument, "operator"));
    assert_eq!(h.records(), before, "a refused recycle writes nothing");
    let due = pb::ExpireRequest { request_id: "x0".into(), account: account("ivy"), ..Default::default() };
    c.expire(with("shop-app", due)).await.unwrap();
    let r = c.expire(with("adm", recycle("risk-ops"))).await.unwrap().into_inner();
    assert_eq!(r.balance.unwrap().available, 0);
    let expired = r.events.iter().find_map(|e| match &e.event {
        Some(pb::ledger_event::Event::PointsExpired(x)) => Some(x.clone()),
        _ => None,
    });
    assert_eq!(expired.map(|x| (x.points, x.operator)), Some((500, "risk-ops".to_string())));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_position_in_another_partition_than_the_accounts_is_invalid_argument() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    let r = c.earn(earn("e1", "fay", 5)).await.unwrap().into_inner();
    let mut wrong = r.position.unwrap();
    wrong.partition += 1;
    let err = c
        .get_account(pb::GetAccountRequest {
            account: account("fay"),
            min_position: Some(wrong),
            as_of: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_expires_due_lots_and_times_out_reservations_as_events() {
    let h = Harness::start().await;
    configure(
        &h,
        pb::Programme { validity_days: 10, validity_rounding: pb::ValidityRounding::None as i32, ..programme() },
    )
    .await;
    let mut c = h.ledger().await;
    c.earn(earn("e1", "gus", 100)).await.unwrap();
    c.earn(earn("e2", "gus", 50)).await.unwrap();
    c.reserve(hold("r1", "gus", 30, 60)).await.unwrap();
    // Reminders: both lots expire within 15 days; ordered by expiry.
    let exp = c
        .list_expiring(pb::ListExpiringRequest {
            tenant_id: "shop".into(),
            programme_id: "points".into(),
            within_days: 0,
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exp.lots.len(), 1);
    assert!(!exp.next_page_token.is_empty());
    let exp2 = c
        .list_expiring(pb::ListExpiringRequest {
            tenant_id: "shop".into(),
            programme_id: "points".into(),
            within_days: 0,
            page_size: 10,
            page_token: exp.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exp.lots.len() + exp2.lots.len(), 2);
    assert!(exp2.next_page_token.is_empty());
    let none = c
        .list_expiring(pb::ListExpiringRequest {
            tenant_id: "shop".into(),
            programme_id: "points".into(),
            within_days: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.lots.is_empty());

    // After the timeout the writer releases the hold by itself.
    let before = h.records();
    h.clock.advance(61_000);
    wait_until(|| h.records() > before).await;
    // After the validity every point expires by itself.
    h.clock.advance(10 * 86_400_000);
    wait_until(|| h.records() > before + 1).await;
    let mut last = None;
    for _ in 0..100 {
        let a = c
            .get_account(pb::GetAccountRequest { account: account("gus"), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        if a.available == 0 && a.reserved == 0 {
            last = Some(a);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(last.is_some(), "points did not expire");
    let entries = c
        .list_entries(pb::ListEntriesRequest { account: account("gus"), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let kinds: Vec<_> = entries
        .iter()
        .map(|e| {
            e.event
                .as_ref()
                .unwrap()
                .event
                .as_ref()
                .map(|x| format!("{x:?}").split('(').next().unwrap().to_string())
                .unwrap()
        })
        // The lots are earned inside the 15-day reminder window: their
        // reminders (tests/reminders.rs) come whenever the scheduler ticks.
        .filter(|k| k != "ExpiryReminderDue")
        .collect();
    assert_eq!(kinds, ["PointsEarned", "PointsEarned", "PointsReserved", "ReservationReleased", "PointsExpired"]);
    assert_eq!(entries.last().unwrap().delta, -150);
    h.stop().await;
}

/// A hold of `points` for order "o" that times out after `timeout_seconds`.
fn hold(id: &str, member: &str, points: i64, timeout_seconds: i64) -> pb::ReserveRequest {
    pb::ReserveRequest {
        request_id: id.into(),
        account: account(member),
        points,
        order_ref: "o".into(),
        timeout_seconds,
        ..Default::default()
    }
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("condition not reached in 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer() {
    let h = Harness::start().await;
    let channel = tonic::transport::Channel::from_shared(h.url()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let s = health
        .check(tonic_health::pb::HealthCheckRequest { service: "points.v1.PointsLedger".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let s = health
        .check(tonic_health::pb::HealthCheckRequest { service: "points.v1.Reconciliation".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    use tonic_reflection::pb::v1alpha::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let listed = format!("{resp:?}");
    for s in ["points.v1.PointsLedger", "points.v1.ProgrammeAdmin", "points.v1.Reconciliation", "grpc.health.v1.Health"]
    {
        assert!(listed.contains(s), "{s} missing from {listed}");
    }
    // v1 answers too, and error details resolve (grpcurl shows ErrorInfo by name).
    use tonic_reflection::pb::v1 as r1;
    let channel = tonic::transport::Channel::from_shared(h.url()).unwrap().connect().await.unwrap();
    let mut refl = r1::server_reflection_client::ServerReflectionClient::new(channel);
    let reqs = vec![
        r1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(String::new())),
        },
        r1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(r1::server_reflection_request::MessageRequest::FileContainingSymbol(
                "google.rpc.ErrorInfo".into(),
            )),
        },
    ];
    let mut stream = refl.server_reflection_info(tokio_stream::iter(reqs)).await.unwrap().into_inner();
    let listed = format!("{:?}", stream.message().await.unwrap().unwrap());
    assert!(listed.contains("points.v1.PointsLedger"), "{listed}");
    let file = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(
            file.message_response,
            Some(r1::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{file:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_clean_restart() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    for i in 0..20 {
        c.earn(earn(&format!("e{i}"), "hal", 10)).await.unwrap();
    }
    let (dir, clock) = h.stop_for_restart().await;
    let h = Harness::start_in(dir, clock, |_| {}).await;
    let mut c = h.ledger().await;
    let again = c.earn(earn("e3", "hal", 10)).await.unwrap().into_inner();
    assert!(again.replayed);
    let r = c.spend(spend("s", "hal", 200)).await.unwrap().into_inner();
    assert_eq!(r.balance.unwrap().available, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_batch_answers_each_command_on_its_own_in_order() {
    use pb::batch_command::Command as C;
    use pb::batch_result::Result as R;
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    let batch = || pb::SubmitBatchRequest {
        commands: vec![
            pb::BatchCommand { command: Some(C::Earn(earn("b-e1", "ann", 100))) },
            // The same account, later in the batch: decided after the earn.
            pb::BatchCommand { command: Some(C::Spend(spend("b-s1", "ann", 60))) },
            pb::BatchCommand { command: Some(C::Earn(earn("b-e2", "bob", 0))) },
            pb::BatchCommand { command: Some(C::Spend(spend("b-s2", "bob", 5))) },
            pb::BatchCommand { command: Some(C::Earn(earn("b-e3", "cid", 7))) },
            pb::BatchCommand { command: None },
        ],
    };
    let results = c.submit_batch(batch()).await.unwrap().into_inner().results;
    assert_eq!(results.len(), 6);
    let reply = |i: usize| match &results[i].result {
        Some(R::Reply(r)) => r.clone(),
        other => panic!("command {i}: {other:?}"),
    };
    let error = |i: usize| match &results[i].result {
        Some(R::Error(e)) => e.clone(),
        other => panic!("command {i}: {other:?}"),
    };
    assert_eq!(reply(0).balance.unwrap().available, 100);
    assert_eq!(reply(1).balance.unwrap().available, 40, "the spend saw the earn before it");
    let e = error(2);
    assert_eq!((e.code, e.field.as_str()), (Code::InvalidArgument as i32, "points"));
    let e = error(3);
    assert_eq!((e.code, e.reason.as_str()), (Code::FailedPrecondition as i32, "INSUFFICIENT_POINTS"));
    assert_eq!(reply(4).balance.unwrap().available, 7);
    assert_eq!(error(5).field, "command");
    // The same batch again: the accepted ones are replayed, nothing doubles.
    let again = c.submit_batch(batch()).await.unwrap().into_inner().results;
    for i in [0, 1, 4] {
        match &again[i].result {
            Some(R::Reply(r)) => assert!(r.replayed && r.balance == reply(i).balance, "{i}: {r:?}"),
            other => panic!("command {i}: {other:?}"),
        }
    }
    // Limits.
    let err = c.submit_batch(pb::SubmitBatchRequest { commands: vec![] }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let many =
        (0..1001).map(|i| pb::BatchCommand { command: Some(C::Earn(earn(&format!("m-{i}"), "dan", 1))) }).collect();
    let err = c.submit_batch(pb::SubmitBatchRequest { commands: many }).await.unwrap_err();
    assert_eq!((err.code(), bad_field_of(&err).as_str()), (Code::InvalidArgument, "commands"));
    // A full batch of 1000 lands.
    let full: Vec<_> = (0..1000)
        .map(|i| pb::BatchCommand { command: Some(C::Earn(earn(&format!("f-{i}"), &format!("m{}", i % 37), 1))) })
        .collect();
    let results = c.submit_batch(pb::SubmitBatchRequest { commands: full }).await.unwrap().into_inner().results;
    assert!(results.iter().all(|r| matches!(r.result, Some(R::Reply(_)))));
    h.stop().await;
}

/// A writer without state (here: its views deleted) folds a long log
/// behind, as a rebuild does, and keeps what its catch-up through the live
/// path keeps: retries answered from the idempotency records, the day's
/// issuance against the programme-wide cap, the due index (a hold times
/// out by itself afterwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_without_state_folds_the_log_behind_and_keeps_what_its_live_catch_up_keeps() {
    let h = Harness::start().await;
    let cap = pb::Programme {
        programme_daily_issuance_cap: 1000,
        cap_policy: pb::CapPolicy::Truncate as i32,
        validity_days: 10,
        validity_rounding: pb::ValidityRounding::None as i32,
        ..programme()
    };
    configure(&h, cap).await;
    let mut c = h.ledger().await;
    let first = c.earn(earn("e1", "gus", 100)).await.unwrap().into_inner();
    c.earn(earn("e2", "gus", 50)).await.unwrap();
    c.earn(earn("e3", "amy", 450)).await.unwrap();
    c.spend(spend("s1", "amy", 50)).await.unwrap();
    c.reserve(hold("r1", "gus", 30, 60)).await.unwrap();
    let (dir, clock) = h.stop_for_restart().await;
    std::fs::remove_dir_all(dir.path().join("views")).unwrap();
    let h = Harness::start_in(dir, clock, |c| c.writer.bulk_catch_up_records_min = 0).await;
    let mut c = h.ledger().await;
    let again = c.earn(earn("e1", "gus", 100)).await.unwrap().into_inner();
    assert!(again.replayed);
    assert_eq!((again.position, again.granted_points), (first.position, 100));
    let gus = pb::GetAccountRequest { account: account("gus"), ..Default::default() };
    let a = c.get_account(gus.clone()).await.unwrap().into_inner();
    assert_eq!((a.available, a.reserved), (120, 30));
    // 600 of the day's 1,000 were issued before the restart.
    let capped = c.earn(earn("e4", "bob", 600)).await.unwrap().into_inner();
    assert_eq!((capped.granted_points, capped.forfeited_points), (400, 200));
    let before = h.records();
    h.clock.advance(61_000);
    wait_until(|| h.records() > before).await;
    let mut released = false;
    for _ in 0..100 {
        let a = c.get_account(gus.clone()).await.unwrap().into_inner();
        if (a.available, a.reserved) == (150, 0) {
            released = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(released, "the hold did not time out after the fold");
    // A fold behind that did not finish leaves its partition marked: the
    // next start deletes the views and folds the log again.
    let (dir, clock) = h.stop_for_restart().await;
    let views = points_ledger::store::Db::open(&dir.path().join("views"), points_ledger::store::VIEW_CFS).unwrap();
    points_ledger::projection::mark_rebuilding(&views, 0, true).unwrap();
    drop(views);
    let h = Harness::start_in(dir, clock, |_| {}).await;
    let mut c = h.ledger().await;
    assert!(c.earn(earn("e4", "bob", 600)).await.unwrap().into_inner().replayed);
    let a = c.get_account(gus).await.unwrap().into_inner();
    assert_eq!((a.available, a.reserved), (150, 0));
    let partitions = h.events.partitions();
    let (dir, _) = h.stop().await;
    let views = points_ledger::tools::audit::open_views_read_only(dir.path()).unwrap();
    assert!(!points_ledger::projection::rebuilding(&views.snapshot(), partitions).unwrap());
}
