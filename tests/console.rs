//! The console over HTTP: signing in, a member's page, an adjustment made
//! with a reason and confirmed, what a read-only client gets, the books,
//! and the pages in Chinese. (`tests/console_browser.rs` drives the same in
//! a real browser.)

use crate::common;

use common::console::{input_value, Console};
use common::*;
use points_ledger::api::Auth;
use points_ledger::proto as pb;

const CLIENTS: &str = "\
desk     token:t-desk     shop  points  read,admin
checker  token:t-checker  shop  points  read,admin
reader   token:t-read     shop  points  read
finance  token:t-fin      shop  points  read,finance
app      token:t-app      shop  points  earn,spend,read
";

async fn started() -> Harness {
    let h = Harness::start_with(|c| c.auth = Auth::parse_clients(CLIENTS).unwrap()).await;
    let p = pb::Programme { adjustment_approval_points: 10_000, ..programme() };
    let cfg = pb::ConfigureProgrammeRequest { request_id: "cfg".into(), programme: Some(p), operator: "ops".into() };
    h.admin().await.configure_programme(as_client("t-desk", cfg)).await.unwrap();
    let earned = h.ledger().await.earn(as_client("t-app", earn("e1", "m1", 100))).await.unwrap().into_inner();
    // The pages read the views: wait until they have the earn.
    let seen = pb::GetAccountRequest { account: account("m1"), min_position: earned.position, ..Default::default() };
    h.ledger().await.get_account(as_client("t-app", seen)).await.unwrap();
    h
}

const MEMBER: &str = "/console/member?programme=shop/points&member=m1";

/// Posts the member page's `kind` form with these fields, confirms it, and
/// returns where it led.
async fn act(c: &Console, kind: &str, fields: &[(&str, &str)]) -> (u16, String, String) {
    let (_, page) = c.get(MEMBER).await;
    let token = input_value(&page, "form_token");
    let id = format!("console-{kind}-1");
    let mut form = vec![
        ("form_token", token.as_str()),
        ("programme", "shop/points"),
        ("member", "m1"),
        ("kind", kind),
        ("request_id", id.as_str()),
    ];
    form.extend_from_slice(fields);
    let (status, confirm, _) = c.post("/console/member/action", &form).await;
    assert_eq!(status, 200, "{confirm}");
    assert!(confirm.contains("id=\"confirm\""), "no confirmation step: {confirm}");
    form.push(("confirmed", "yes"));
    c.post("/console/member/action", &form).await
}

/// A confirmed adjustment of m1 by 5, with this form token.
fn confirmed_adjustment(form_token: &str) -> [(&str, &str); 9] {
    [
        ("form_token", form_token),
        ("programme", "shop/points"),
        ("member", "m1"),
        ("kind", "adjust"),
        ("request_id", "r1"),
        ("points", "5"),
        ("operator", "x"),
        ("reason", "y"),
        ("confirmed", "yes"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_need_a_session_and_a_wrong_token_is_refused() {
    let h = started().await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = http.get(format!("http://{}/console", h.admin_addr)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/console/login"));
    let url = format!("http://{}/console/login", h.admin_addr);
    let r = http.post(url).form(&[("token", "nope")]).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_page_shows_the_balance_the_lots_and_the_statement() {
    let h = started().await;
    let c = Console::sign_in(h.admin_addr, "t-desk").await;
    let (status, page) = c.get(MEMBER).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"available\">100<"), "{page}");
    assert!(page.contains("<td>e1</td>"), "the lot: {page}");
    assert!(page.contains("PointsEarned"), "the statement: {page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_adjustment_shows_in_the_balance_and_the_statement_with_its_operator_and_client() {
    let h = started().await;
    let c = Console::sign_in(h.admin_addr, "t-desk").await;
    let (status, _, location) =
        act(&c, "adjust", &[("points", "50"), ("operator", "alice"), ("reason", "goodwill")]).await;
    assert_eq!(status, 303);
    let (_, page) = c.get(&location).await;
    assert!(page.contains("id=\"available\">150<"), "{page}");
    // The client comes from the audit log, which the books fold a moment later.
    for _ in 0..50 {
        let (_, page) = c.get(MEMBER).await;
        let row = page.split("<tr>").find(|r| r.contains("PointsAdjusted")).expect("the adjustment in the statement");
        if row.contains("<td>alice</td>") && row.contains("<td>desk</td>") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the statement never showed the adjustment's operator and client");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_adjustment_waits_and_another_admin_approves_it_in_the_console() {
    let h = started().await;
    let desk = Console::sign_in(h.admin_addr, "t-desk").await;
    let (status, ..) =
        act(&desk, "adjust", &[("points", "20000"), ("operator", "alice"), ("reason", "lost order")]).await;
    assert_eq!(status, 303);
    assert!(desk.get(MEMBER).await.1.contains("id=\"available\">100<"));
    let refused =
        act(&desk, "approve", &[("approval_id", "console-adjust-1"), ("operator", "alice"), ("reason", "ok")]).await;
    assert_eq!(refused.0, 400, "the maker may not approve: {}", refused.1);
    let checker = Console::sign_in(h.admin_addr, "t-checker").await;
    let approved =
        act(&checker, "approve", &[("approval_id", "console-adjust-1"), ("operator", "bob"), ("reason", "ok")]).await;
    assert_eq!(approved.0, 303, "{}", approved.1);
    assert!(checker.get(&approved.2).await.1.contains("id=\"available\">20100<"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_client_sees_no_action_and_an_action_is_refused_with_403() {
    let h = started().await;
    let c = Console::sign_in(h.admin_addr, "t-read").await;
    let (status, page) = c.get(MEMBER).await;
    assert_eq!(status, 200);
    assert!(!page.contains("/console/member/action"), "a read-only client sees an action: {page}");
    // The session's own form token (from a page it may read): only the scope refuses.
    let token = input_value(&c.get("/console/programme?programme=shop/points").await.1, "form_token");
    let form = confirmed_adjustment(&token);
    assert_eq!(c.post("/console/member/action", &form).await.0, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_form_without_the_sessions_form_token_is_refused() {
    let h = started().await;
    let c = Console::sign_in(h.admin_addr, "t-desk").await;
    let form = confirmed_adjustment("forged");
    assert_eq!(c.post("/console/member/action", &form).await.0, 403);
    assert!(c.get(MEMBER).await.1.contains("id=\"available\">100<"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_books_draw_a_chart_and_download_as_csv_for_finance() {
    let h = started().await;
    let c = Console::sign_in(h.admin_addr, "t-fin").await;
    let (status, page) = c.get("/console/books?programme=shop/points&period=day&from=2026-03-01&to=2026-03-10").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<svg id=\"books-chart\""), "{page}");
    let (status, csv) =
        c.get("/console/books.csv?programme=shop/points&period=month&from=2026-03-01&to=2026-03-10").await;
    assert_eq!(status, 200);
    assert!(csv.starts_with("tenant_id,programme_id,date"), "{csv}");
    assert!(csv.contains("shop,points,2026-03,"), "{csv}");
    let reader = Console::sign_in(h.admin_addr, "t-read").await;
    assert_eq!(reader.get("/console/books?programme=shop/points").await.0, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_speaks_chinese_when_asked() {
    let h = started().await;
    let c = Console::sign_in(h.admin_addr, "t-desk").await;
    let (_, page) = c.get("/console?lang=zh").await;
    assert!(page.contains("积分账本控制台") && page.contains("lang=\"zh\""), "{page}");
    assert!(page.contains("积分)"), "the programme's unit name: {page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_programme_page_shows_each_version_and_what_it_changed() {
    let h = started().await;
    let p = pb::Programme { adjustment_approval_points: 10_000, reminder_days: 7, ..programme() };
    let cfg =
        pb::ConfigureProgrammeRequest { request_id: "cfg-2".into(), programme: Some(p), operator: "carol".into() };
    h.admin().await.configure_programme(as_client("t-checker", cfg)).await.unwrap();
    let c = Console::sign_in(h.admin_addr, "t-desk").await;
    let (status, page) = c.get("/console/programme?programme=shop/points").await;
    assert_eq!(status, 200, "{page}");
    let row = page.split("<tr>").find(|r| r.starts_with("<td class=\"n\">2</td>")).expect("version 2");
    assert!(row.contains("<td>checker</td>") && row.contains("<td>carol</td>"), "{row}");
    assert!(row.contains("reminder_days") && !row.contains("unit_name"), "{row}");
}
