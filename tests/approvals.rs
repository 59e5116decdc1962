//! Maker-checker: an adjustment above the programme's threshold waits for a
//! second admin client, who approves or rejects it.

use crate::common;

use common::*;
use points_ledger::api::Auth;
use points_ledger::proto as pb;
use tonic::Code;

const CLIENTS: &str = "\
maker    token:t-maker    shop  points  read,admin
checker  token:t-checker  shop  points  read,admin
app      token:t-app      shop  points  earn,spend,read
";

async fn started() -> Harness {
    let h = Harness::start_with(|c| c.auth = Auth::parse_clients(CLIENTS).unwrap()).await;
    let p = pb::Programme { adjustment_approval_points: 1000, ..programme() };
    let cfg = pb::ConfigureProgrammeRequest { request_id: "cfg".into(), programme: Some(p), operator: "ops".into() };
    h.admin().await.configure_programme(as_client("t-maker", cfg)).await.unwrap();
    h.ledger().await.earn(as_client("t-app", earn("e1", "m1", 100))).await.unwrap();
    h
}

fn decision(id: &str, approval_id: &str, operator: &str) -> pb::AdjustmentApprovalRequest {
    pb::AdjustmentApprovalRequest {
        request_id: id.into(),
        approval_id: approval_id.into(),
        operator: operator.into(),
        reason: "checked the ticket".into(),
        account: account("m1"),
    }
}

fn available(r: &pb::CommandReply) -> i64 {
    r.balance.as_ref().unwrap().available
}

#[tokio::test(flavor = "multi_thread")]
async fn an_adjustment_above_the_threshold_waits_for_approval_and_one_below_does_not() {
    let h = started().await;
    let mut l = h.ledger().await;
    let small = l.adjust(as_client("t-maker", adjust("small", "m1", 1000, "alice", "goodwill"))).await.unwrap();
    let small = small.into_inner();
    assert_eq!((available(&small), small.pending_approval_id.as_str()), (1100, ""));
    let big = l.adjust(as_client("t-maker", adjust("big", "m1", -1001, "alice", "fraud"))).await;
    let big = big.unwrap().into_inner();
    assert_eq!((available(&big), big.pending_approval_id.as_str()), (1100, "big"));
    assert!(matches!(
        big.events[0].event,
        Some(pb::ledger_event::Event::AdjustmentRequested(ref r)) if r.client == "maker" && r.points == -1001
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_maker_cannot_approve_their_own_request_and_another_admin_can() {
    let h = started().await;
    let (mut l, mut a) = (h.ledger().await, h.admin().await);
    l.adjust(as_client("t-maker", adjust("big", "m1", 5000, "alice", "lost order"))).await.unwrap();
    rejected!(
        h,
        a.approve_adjustment(as_client("t-maker", decision("ok-1", "big", "alice"))),
        Code::FailedPrecondition,
        "APPROVER_IS_MAKER"
    );
    let approved = a.approve_adjustment(as_client("t-checker", decision("ok-2", "big", "bob"))).await.unwrap();
    let approved = approved.into_inner();
    assert_eq!(available(&approved), 5100);
    let kinds: Vec<_> = approved.events.iter().map(|e| e.event.clone().unwrap()).collect();
    assert!(
        matches!(&kinds[0], pb::ledger_event::Event::AdjustmentApproved(x) if x.client == "checker" && x.operator == "bob")
    );
    assert!(
        matches!(&kinds[1], pb::ledger_event::Event::PointsAdjusted(x) if x.points == 5000 && x.operator == "alice")
    );
    rejected!(
        h,
        a.approve_adjustment(as_client("t-checker", decision("ok-3", "big", "bob"))),
        Code::NotFound,
        "ADJUSTMENT_NOT_FOUND"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_adjustment_moves_nothing_and_can_no_longer_be_approved() {
    let h = started().await;
    let (mut l, mut a) = (h.ledger().await, h.admin().await);
    l.adjust(as_client("t-maker", adjust("big", "m1", 5000, "alice", "lost order"))).await.unwrap();
    let rejected = a.reject_adjustment(as_client("t-checker", decision("no-1", "big", "bob"))).await.unwrap();
    assert_eq!(available(&rejected.into_inner()), 100);
    rejected!(
        h,
        a.approve_adjustment(as_client("t-checker", decision("ok-1", "big", "bob"))),
        Code::NotFound,
        "ADJUSTMENT_NOT_FOUND"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_adjustment_survives_a_restart() {
    let h = started().await;
    h.ledger().await.adjust(as_client("t-maker", adjust("big", "m1", 5000, "alice", "lost order"))).await.unwrap();
    let (dir, clock) = h.stop_for_restart().await;
    let h = Harness::start_in(dir, clock, |c| c.auth = Auth::parse_clients(CLIENTS).unwrap()).await;
    let approved = h.admin().await.approve_adjustment(as_client("t-checker", decision("ok", "big", "bob"))).await;
    assert_eq!(available(&approved.unwrap().into_inner()), 5100);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_shows_both_identities() {
    let h = started().await;
    h.ledger().await.adjust(as_client("t-maker", adjust("big", "m1", 5000, "alice", "lost order"))).await.unwrap();
    h.admin().await.approve_adjustment(as_client("t-checker", decision("ok", "big", "bob"))).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..100 {
        let r =
            pb::ListAuditLogRequest { tenant_id: "shop".into(), programme_id: "points".into(), ..Default::default() };
        let log = h.admin().await.list_audit_log(as_client("t-checker", r)).await.unwrap().into_inner();
        seen = log.entries.into_iter().map(|e| (e.action, e.client, e.operator)).collect::<Vec<_>>();
        if seen.len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let of = |a: &str| seen.iter().find(|(x, ..)| x == a).map(|(_, c, o)| (c.as_str(), o.as_str()));
    assert_eq!(of("request_adjustment"), Some(("maker", "alice")), "{seen:?}");
    assert_eq!(of("approve_adjustment"), Some(("checker", "bob")));
    assert_eq!(of("adjust"), Some(("checker", "alice")));
}
