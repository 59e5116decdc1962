//! Scopes from a clients file: every RPC against every operation, a store's
//! client kept to its store, and a member's accounts across the stores a
//! caller may see.

use crate::common;

use common::*;
use points_ledger::api::Auth;
use points_ledger::proto as pb;
use tonic::{Code, Status};

const CLIENTS: &str = "\
earner   token:t-earn   shop  points  earn
spender  token:t-spend  shop  points  spend
reader   token:t-read   shop  points  read
admin    token:t-admin  shop  points  admin
finance  token:t-fin    shop  points  finance
store-2  token:t-other  shop  other   *
root     token:t-root   *     *       *
";

/// The single-operation clients, by the operation they hold.
const ONE_OPERATION: [(&str, &str); 5] =
    [("earn", "t-earn"), ("spend", "t-spend"), ("read", "t-read"), ("admin", "t-admin"), ("finance", "t-fin")];

async fn started() -> Harness {
    let h = Harness::start_with(|c| c.auth = Auth::parse_clients(CLIENTS).unwrap()).await;
    let mut admin = h.admin().await;
    for id in ["points", "other"] {
        let p = pb::Programme { programme_id: id.into(), ..programme() };
        let r = pb::ConfigureProgrammeRequest {
            request_id: format!("cfg-{id}"),
            programme: Some(p),
            operator: "ops".into(),
        };
        admin.configure_programme(as_client("t-root", r)).await.unwrap();
    }
    let mut ledger = h.ledger().await;
    for id in ["points", "other"] {
        let key = Some(pb::AccountKey { programme_id: id.into(), ..account("m1").unwrap() });
        let e = pb::EarnRequest { account: key.clone(), ..earn(&format!("seed-{id}"), "m1", 1000) };
        let position = ledger.earn(as_client("t-root", e)).await.unwrap().into_inner().position;
        // Queries read the views: wait until they have the earn.
        let seen = pb::GetAccountRequest { account: key, min_position: position, ..Default::default() };
        ledger.get_account(as_client("t-root", seen)).await.unwrap();
    }
    h
}

/// The RPCs and the operation each needs.
const TABLE: &[(&str, &str)] = &[
    ("Earn", "earn"),
    ("RecordActivity", "earn"),
    ("PreviewActivity", "earn"),
    ("ReverseEarn", "earn"),
    ("Expire", "earn"),
    ("SubmitBatch", "earn"),
    ("Spend", "spend"),
    ("Reserve", "spend"),
    ("CaptureReservation", "spend"),
    ("ReleaseReservation", "spend"),
    ("Refund", "spend"),
    ("GetAccount", "read"),
    ("ListEntries", "read"),
    ("ListExpiring", "read"),
    ("ListLevelChanges", "read"),
    ("GetProgramme", "read"),
    ("Subscribe", "read"),
    ("Adjust", "admin"),
    ("ExpireAll", "admin"),
    ("AdjustGrowth", "admin"),
    ("ListPendingPoints", "admin"),
    ("ReleasePendingPoints", "admin"),
    ("ForfeitPendingPoints", "admin"),
    ("UnholdAccount", "admin"),
    ("ConfigureProgramme", "admin"),
    ("FreezeAccount", "admin"),
    ("UnfreezeAccount", "admin"),
    ("SetLevel", "admin"),
    ("ListAlerts", "admin"),
    ("AcknowledgeAlert", "admin"),
    ("ResolveAlert", "admin"),
    ("ConfigureWebhook", "admin"),
    ("ListWebhookDeliveries", "admin"),
    ("GetAccountRisk", "admin"),
    ("GetIssuance", "admin"),
    ("ListAuditLog", "admin"),
    ("ApproveAdjustment", "admin"),
    ("RejectAdjustment", "admin"),
    ("GetDailyBook", "finance"),
];

/// Calls `rpc` on the points programme as the client of `token`; only
/// whether access control let it through matters.
async fn call(h: &Harness, rpc: &str, token: &str, n: usize) -> Result<(), Status> {
    let (mut l, mut a) = (h.ledger().await, h.admin().await);
    let key = account("m1");
    let id = format!("{rpc}-{n}");
    let (t, p) = ("shop".to_string(), "points".to_string());
    let op = || "ops".to_string();
    let why = || "scope test".to_string();
    let alert = || pb::AlertActionRequest {
        request_id: id.clone(),
        tenant_id: t.clone(),
        programme_id: p.clone(),
        alert_id: "a1".into(),
        operator: op(),
        ..Default::default()
    };
    let pending = || pb::ReleasePendingPointsRequest {
        request_id: id.clone(),
        account: key.clone(),
        operator: op(),
        reason: why(),
        ..Default::default()
    };
    let freeze = || pb::FreezeAccountRequest {
        request_id: id.clone(),
        account: key.clone(),
        earning: true,
        operator: op(),
        reason: why(),
        ..Default::default()
    };
    match rpc {
        "Earn" => l.earn(as_client(token, earn(&id, "m1", 10))).await.map(drop),
        "RecordActivity" => l.record_activity(as_client(token, activity(&id, "m1", "check_in"))).await.map(drop),
        "PreviewActivity" => l.preview_activity(as_client(token, activity(&id, "m1", "check_in"))).await.map(drop),
        "ReverseEarn" => l.reverse_earn(as_client(token, reverse(&id, "m1", "seed-points", 1))).await.map(drop),
        "Expire" => l
            .expire(as_client(token, pb::ExpireRequest { request_id: id, account: key, ..Default::default() }))
            .await
            .map(drop),
        "ExpireAll" => {
            let r = pb::ExpireRequest {
                request_id: id,
                account: key,
                all_points: true,
                reason: why(),
                operator: op(),
                ..Default::default()
            };
            l.expire(as_client(token, r)).await.map(drop)
        }
        "SubmitBatch" => {
            let c = pb::BatchCommand { command: Some(pb::batch_command::Command::Earn(earn(&id, "m1", 10))) };
            let reply = l.submit_batch(as_client(token, pb::SubmitBatchRequest { commands: vec![c] })).await?;
            match reply.into_inner().results.remove(0).result {
                Some(pb::batch_result::Result::Error(e)) => {
                    use tonic_types::{ErrorDetails, StatusExt};
                    let details = ErrorDetails::with_error_info(e.reason, "points-ledger", []);
                    Err(Status::with_error_details(Code::from(e.code), e.message, details))
                }
                _ => Ok(()),
            }
        }
        "Spend" => l.spend(as_client(token, spend(&id, "m1", 1))).await.map(drop),
        "Reserve" => {
            let r = pb::ReserveRequest {
                request_id: id,
                account: key,
                points: 1,
                order_ref: "o1".into(),
                timeout_seconds: 60,
                ..Default::default()
            };
            l.reserve(as_client(token, r)).await.map(drop)
        }
        "CaptureReservation" => {
            let r = pb::CaptureReservationRequest {
                request_id: id,
                account: key,
                reservation_id: "none".into(),
                ..Default::default()
            };
            l.capture_reservation(as_client(token, r)).await.map(drop)
        }
        "ReleaseReservation" => {
            let r = pb::ReleaseReservationRequest {
                request_id: id,
                account: key,
                reservation_id: "none".into(),
                ..Default::default()
            };
            l.release_reservation(as_client(token, r)).await.map(drop)
        }
        "Refund" => l.refund(as_client(token, refund(&id, "m1", "none", 1))).await.map(drop),
        "GetAccount" => l
            .get_account(as_client(token, pb::GetAccountRequest { account: key, ..Default::default() }))
            .await
            .map(drop),
        "ListEntries" => l
            .list_entries(as_client(token, pb::ListEntriesRequest { account: key, ..Default::default() }))
            .await
            .map(drop),
        "ListExpiring" => {
            let r = pb::ListExpiringRequest { tenant_id: t, programme_id: p, ..Default::default() };
            l.list_expiring(as_client(token, r)).await.map(drop)
        }
        "ListLevelChanges" => {
            let r = pb::ListLevelChangesRequest { account: key, ..Default::default() };
            l.list_level_changes(as_client(token, r)).await.map(drop)
        }
        "GetProgramme" => {
            let r = pb::GetProgrammeRequest { tenant_id: t, programme_id: p, ..Default::default() };
            a.get_programme(as_client(token, r)).await.map(drop)
        }
        "Subscribe" => {
            let mut f = pb::feed_client::FeedClient::connect(h.url()).await.unwrap();
            let r = pb::SubscribeRequest { tenant_id: t, programme_id: p, from_now: true, ..Default::default() };
            f.subscribe(as_client(token, r)).await.map(drop)
        }
        "Adjust" => l.adjust(as_client(token, adjust(&id, "m1", 5, "ops", "scope test"))).await.map(drop),
        "AdjustGrowth" => {
            let r = pb::AdjustGrowthRequest {
                request_id: id,
                account: key,
                growth: 5,
                operator: op(),
                reason: why(),
                ..Default::default()
            };
            l.adjust_growth(as_client(token, r)).await.map(drop)
        }
        "ListPendingPoints" => {
            let r = pb::ListPendingPointsRequest { account: key, ..Default::default() };
            l.list_pending_points(as_client(token, r)).await.map(drop)
        }
        "ReleasePendingPoints" => l.release_pending_points(as_client(token, pending())).await.map(drop),
        "ForfeitPendingPoints" => {
            let r = pending();
            let f = pb::ForfeitPendingPointsRequest {
                request_id: r.request_id,
                account: r.account,
                operator: r.operator,
                reason: r.reason,
                ..Default::default()
            };
            l.forfeit_pending_points(as_client(token, f)).await.map(drop)
        }
        "UnholdAccount" => {
            let r = pending();
            let u = pb::UnholdAccountRequest {
                request_id: r.request_id,
                account: r.account,
                operator: r.operator,
                reason: r.reason,
                ..Default::default()
            };
            l.unhold_account(as_client(token, u)).await.map(drop)
        }
        "ConfigureProgramme" => {
            let r = pb::ConfigureProgrammeRequest { request_id: id, programme: Some(programme()), operator: op() };
            a.configure_programme(as_client(token, r)).await.map(drop)
        }
        "FreezeAccount" => a.freeze_account(as_client(token, freeze())).await.map(drop),
        "UnfreezeAccount" => {
            let f = freeze();
            let u = pb::UnfreezeAccountRequest {
                request_id: f.request_id,
                account: f.account,
                earning: true,
                operator: f.operator,
                reason: f.reason,
                ..Default::default()
            };
            a.unfreeze_account(as_client(token, u)).await.map(drop)
        }
        "SetLevel" => {
            let r = pb::SetLevelRequest {
                request_id: id,
                account: key,
                level: "gold".into(),
                operator: op(),
                reason: why(),
                ..Default::default()
            };
            a.set_level(as_client(token, r)).await.map(drop)
        }
        "ListAlerts" => {
            let r = pb::ListAlertsRequest { tenant_id: t, programme_id: p, ..Default::default() };
            a.list_alerts(as_client(token, r)).await.map(drop)
        }
        "AcknowledgeAlert" => a.acknowledge_alert(as_client(token, alert())).await.map(drop),
        "ResolveAlert" => a.resolve_alert(as_client(token, alert())).await.map(drop),
        "ConfigureWebhook" => {
            let r = pb::ConfigureWebhookRequest {
                request_id: id,
                operator: op(),
                tenant_id: t,
                programme_id: p,
                webhook_id: "w1".into(),
                url: "http://127.0.0.1:9/hook".into(),
                secret: "0123456789abcdef".into(),
                ..Default::default()
            };
            a.configure_webhook(as_client(token, r)).await.map(drop)
        }
        "ListWebhookDeliveries" => {
            let r = pb::ListWebhookDeliveriesRequest { tenant_id: t, programme_id: p, ..Default::default() };
            a.list_webhook_deliveries(as_client(token, r)).await.map(drop)
        }
        "GetAccountRisk" => {
            let r = pb::GetAccountRiskRequest { account: key, ..Default::default() };
            a.get_account_risk(as_client(token, r)).await.map(drop)
        }
        "GetIssuance" => {
            let r = pb::GetIssuanceRequest {
                tenant_id: t,
                programme_id: p,
                from_date: "2026-03-10".into(),
                to_date: "2026-03-10".into(),
            };
            a.get_issuance(as_client(token, r)).await.map(drop)
        }
        "GetDailyBook" => {
            let r = pb::GetDailyBookRequest { tenant_id: t, programme_id: p, date: "2026-03-10".into() };
            h.reconciliation().await.get_daily_book(as_client(token, r)).await.map(drop)
        }
        "ListAuditLog" => {
            let r = pb::ListAuditLogRequest { tenant_id: t, programme_id: p, ..Default::default() };
            a.list_audit_log(as_client(token, r)).await.map(drop)
        }
        "ApproveAdjustment" | "RejectAdjustment" => {
            let r = pb::AdjustmentApprovalRequest {
                request_id: id,
                approval_id: "none".into(),
                operator: op(),
                reason: why(),
                account: key,
            };
            if rpc == "ApproveAdjustment" {
                a.approve_adjustment(as_client(token, r)).await.map(drop)
            } else {
                a.reject_adjustment(as_client(token, r)).await.map(drop)
            }
        }
        other => panic!("no call for {other}"),
    }
}

fn refused(r: &Result<(), Status>) -> bool {
    matches!(r, Err(s) if matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_lets_through_exactly_the_clients_with_its_operation() {
    let h = started().await;
    let mut wrong = Vec::new();
    for (n, (rpc, needs)) in TABLE.iter().enumerate() {
        for (held, token) in ONE_OPERATION {
            let answer = call(&h, rpc, token, n).await;
            if refused(&answer) == (held == *needs) {
                wrong.push(format!("{rpc} by a client with `{held}`: {answer:?}"));
            }
            if let Err(s) = &answer {
                if refused(&answer) && s.code() == Code::PermissionDenied && !s.message().contains(needs) {
                    wrong.push(format!("{rpc}: the refusal does not name `{needs}`: {}", s.message()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_client_cannot_reach_another_stores_accounts_or_books() {
    let h = started().await;
    let mut wrong = Vec::new();
    for (n, (rpc, _)) in TABLE.iter().enumerate() {
        let answer = call(&h, rpc, "t-other", n).await;
        let right =
            matches!(&answer, Err(s) if s.code() == Code::PermissionDenied && reason_of(s) == "PROGRAMME_NOT_ALLOWED");
        if !right {
            wrong.push(format!("{rpc}: {answer:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_layout_needs_a_client_of_every_tenant_and_programme() {
    let h = started().await;
    let mut c = pb::cluster_client::ClusterClient::connect(h.url()).await.unwrap();
    let err = c.describe_cluster(as_client("t-other", pb::DescribeClusterRequest {})).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    c.describe_cluster(as_client("t-root", pb::DescribeClusterRequest {})).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_members_accounts_are_listed_in_the_programmes_the_caller_may_read() {
    let h = started().await;
    let mut l = h.ledger().await;
    let list = |token: &str| {
        as_client(token, pb::ListMemberAccountsRequest { tenant_id: "shop".into(), member_id: "m1".into() })
    };
    let programmes = |r: pb::ListMemberAccountsResponse| -> Vec<String> {
        r.accounts.into_iter().map(|a| a.account.unwrap().programme_id).collect()
    };
    assert_eq!(programmes(l.list_member_accounts(list("t-root")).await.unwrap().into_inner()), ["other", "points"]);
    assert_eq!(programmes(l.list_member_accounts(list("t-read")).await.unwrap().into_inner()), ["points"]);
    assert_eq!(programmes(l.list_member_accounts(list("t-other")).await.unwrap().into_inner()), ["other"]);
    assert!(programmes(l.list_member_accounts(list("t-earn")).await.unwrap().into_inner()).is_empty());
    let err = l.list_member_accounts(list("nobody")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let balance = l.list_member_accounts(list("t-read")).await.unwrap().into_inner().accounts[0].available;
    assert_eq!(balance, 1000);
}

/// Asks for the programme as the client of `token` until `done` holds for
/// the answer (the file is read again within seconds), at most 20 s.
async fn until_answer(served: &common::tls::Served, token: &str, done: impl Fn(&Result<(), Status>) -> bool) {
    let url = format!("http://127.0.0.1:{}", served.addr.port());
    let mut a = pb::programme_admin_client::ProgrammeAdminClient::connect(url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = pb::GetProgrammeRequest { tenant_id: "shop".into(), programme_id: "points".into(), version: 0 };
        let answer = a.get_programme(as_client(token, r)).await.map(drop);
        if done(&answer) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "still {answer:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_clients_file_is_read_again_when_it_changes_and_a_bad_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clients");
    std::fs::write(&file, "reader token:t-read shop points read\n").unwrap();
    let served = common::tls::Served::start(&["--clients-file".as_ref(), file.as_os_str()]);
    served.wait_plain_text().await;
    // Known and allowed: the programme is not there yet (NOT_FOUND).
    until_answer(&served, "t-read", |a| matches!(a, Err(s) if s.code() == Code::NotFound)).await;
    std::fs::write(&file, "reader token:t-read2 shop points read\n").unwrap();
    until_answer(&served, "t-read", |a| matches!(a, Err(s) if s.code() == Code::Unauthenticated)).await;
    until_answer(&served, "t-read2", |a| matches!(a, Err(s) if s.code() == Code::NotFound)).await;
    // A file that does not parse leaves the rules in force.
    std::fs::write(&file, "reader t-read3 shop points read\n").unwrap();
    served.signal(common::tls::SIGHUP);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    until_answer(&served, "t-read2", |a| matches!(a, Err(s) if s.code() == Code::NotFound)).await;
    assert!(served.stop());
}
