//! `ListAuditLog`: every admin act once, with the client that sent it and
//! the operator it names, in order, page by page.

use crate::common;

use common::*;
use points_ledger::api::Auth;
use points_ledger::proto as pb;

const CLIENTS: &str = "\
root   token:t-root  *     *       *
desk   token:t-desk  shop  points  read,admin
app    token:t-app   shop  points  earn,spend
";

/// Every entry of the programme's audit log, `page_size` at a time, once
/// the books have folded `expected` entries (they trail the log).
async fn audit_log(h: &Harness, page_size: u32, expected: usize) -> Vec<pb::AuditEntry> {
    let mut admin = h.admin().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = pb::ListAuditLogRequest {
                tenant_id: "shop".into(),
                programme_id: "points".into(),
                page_size,
                page_token,
                ..Default::default()
            };
            let page = admin.list_audit_log(as_client("t-desk", r)).await.unwrap().into_inner();
            all.extend(page.entries);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        if all.len() >= expected || std::time::Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn acts(h: &Harness) {
    let (mut l, mut a) = (h.ledger().await, h.admin().await);
    let cfg = pb::ConfigureProgrammeRequest {
        request_id: "cfg".into(),
        programme: Some(programme()),
        operator: "ops".into(),
    };
    a.configure_programme(as_client("t-root", cfg)).await.unwrap();
    h.clock.advance(1000);
    l.earn(as_client("t-app", earn("e1", "m1", 100))).await.unwrap();
    h.clock.advance(1000);
    l.adjust(as_client("t-desk", adjust("adj", "m1", 50, "alice", "goodwill"))).await.unwrap();
    h.clock.advance(1000);
    let freeze = pb::FreezeAccountRequest {
        request_id: "frz".into(),
        account: account("m1"),
        earning: true,
        operator: "bob".into(),
        reason: "farming".into(),
        ..Default::default()
    };
    a.freeze_account(as_client("t-desk", freeze)).await.unwrap();
    h.clock.advance(1000);
    let recycle = pb::ExpireRequest {
        request_id: "rec".into(),
        account: account("m1"),
        all_points: true,
        reason: "blacklisted".into(),
        operator: "carol".into(),
        ..Default::default()
    };
    l.expire(as_client("t-desk", recycle)).await.unwrap();
    h.clock.advance(1000);
    let hook = pb::ConfigureWebhookRequest {
        request_id: "wh".into(),
        operator: "dave".into(),
        tenant_id: "shop".into(),
        programme_id: "points".into(),
        webhook_id: "crm".into(),
        url: "http://127.0.0.1:9/hook".into(),
        secret: "0123456789abcdef".into(),
        ..Default::default()
    };
    a.configure_webhook(as_client("t-desk", hook)).await.unwrap();
    h.clock.advance(1000);
    // A retry is the same act: listed once.
    l.adjust(as_client("t-desk", adjust("adj", "m1", 50, "alice", "goodwill"))).await.unwrap();
    h.clock.advance(1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_act_is_listed_once_with_its_client_and_operator() {
    let h = Harness::start_with(|c| c.auth = Auth::parse_clients(CLIENTS).unwrap()).await;
    acts(&h).await;
    let log = audit_log(&h, 100, 5).await;
    let seen: Vec<(&str, &str, &str)> =
        log.iter().map(|e| (e.action.as_str(), e.client.as_str(), e.operator.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("configure_programme", "root", "ops"),
            ("adjust", "desk", "alice"),
            ("freeze", "desk", "bob"),
            ("recycle", "desk", "carol"),
            ("configure_webhook", "desk", "dave"),
        ],
        "{log:#?}"
    );
    let adjust = &log[1];
    assert_eq!((adjust.amount, adjust.reason.as_str(), adjust.request_id.as_str()), (50, "goodwill", "adj"));
    assert_eq!(adjust.account.as_ref().unwrap().member_id, "m1");
    assert_eq!(log[3].amount, -150, "recycling took the whole balance");
    assert!(log[0].account.is_none());
    assert_eq!(log[0].position.unwrap().partition, 3, "the control stream, numbered after the partitions");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_pages_without_loss_or_repeat() {
    let h = Harness::start_with(|c| c.auth = Auth::parse_clients(CLIENTS).unwrap()).await;
    acts(&h).await;
    let whole = audit_log(&h, 100, 5).await;
    let paged = audit_log(&h, 2, 5).await;
    assert_eq!(paged, whole);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_is_for_admin_clients() {
    let h = Harness::start_with(|c| c.auth = Auth::parse_clients(CLIENTS).unwrap()).await;
    acts(&h).await;
    let r = pb::ListAuditLogRequest { tenant_id: "shop".into(), programme_id: "points".into(), ..Default::default() };
    let err = h.admin().await.list_audit_log(as_client("t-app", r)).await.unwrap_err();
    assert_eq!(reason_of(&err), "ADMIN_REQUIRED");
}
