//! The console in a real browser: Debian's chromium, headless, driven over
//! the DevTools protocol. An admin signs in, looks a member up, makes an
//! adjustment with a reason and confirms it, and sees the balance and the
//! statement show it with the operator and the client; the books chart
//! renders (its screenshot is not blank). Skipped without chromium unless
//! POINTS_LEDGER_TEST_REQUIRE_CHROMIUM is set (`scripts/test` installs it
//! and sets it).

use crate::common;

use std::ffi::OsStr;

use common::*;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use points_ledger::api::Auth;
use points_ledger::proto as pb;

const CLIENTS: &str = "\
desk    token:t-desk  shop  points  read,admin,finance
reader  token:t-read  shop  points  read
app     token:t-app   shop  points  earn,spend,read
";

const CHROMIUM: &str = "/usr/bin/chromium";

/// The browser, or None when the test is to be skipped.
fn browser() -> Option<Browser> {
    if !std::path::Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var_os("POINTS_LEDGER_TEST_REQUIRE_CHROMIUM").is_none(),
            "chromium is required here: scripts/ensure-chromium installs it"
        );
        eprintln!("skipped: no {CHROMIUM} (scripts/ensure-chromium installs it)");
        return None;
    }
    let options = LaunchOptions::default_builder()
        .path(Some(CHROMIUM.into()))
        .headless(true)
        .sandbox(false)
        .window_size(Some((1200, 1600)))
        .args(vec![OsStr::new("--disable-background-networking"), OsStr::new("--no-first-run")])
        .build()
        .unwrap();
    Some(Browser::new(options).expect("start chromium"))
}

fn text_of(tab: &Tab, selector: &str) -> String {
    tab.wait_for_element(selector).unwrap().get_inner_text().unwrap()
}

/// Signs in, adjusts m1 by 50 with a reason, and returns the member page's
/// balance and the statement's text once the client shows.
fn adjust_in_the_browser(tab: &Tab, base: &str) -> (String, String) {
    tab.navigate_to(&format!("{base}/console/login")).unwrap().wait_until_navigated().unwrap();
    tab.wait_for_element("#token").unwrap().click().unwrap();
    tab.type_str("t-desk").unwrap();
    tab.wait_for_element("#sign-in").unwrap().click().unwrap();
    tab.wait_until_navigated().unwrap();
    tab.wait_for_element("input[name=member]").unwrap().click().unwrap();
    tab.type_str("m1").unwrap().press_key("Enter").unwrap();
    tab.wait_until_navigated().unwrap();
    assert_eq!(text_of(tab, "#available"), "100");
    tab.wait_for_element("#adjust-points").unwrap().click().unwrap();
    tab.type_str("50").unwrap();
    tab.wait_for_element("form:has(#adjust-submit) input[name=reason]").unwrap().click().unwrap();
    tab.type_str("goodwill after a lost parcel").unwrap();
    tab.wait_for_element("#adjust-submit").unwrap().click().unwrap();
    tab.wait_until_navigated().unwrap();
    assert_eq!(text_of(tab, "#confirm-kind"), "adjust");
    tab.wait_for_element("#confirm").unwrap().click().unwrap();
    tab.wait_until_navigated().unwrap();
    let balance = text_of(tab, "#available");
    // The client comes from the audit log, which the books fold a moment later.
    for _ in 0..50 {
        let statement = text_of(tab, "#statement");
        if statement.contains("desk") && statement.contains("PointsAdjusted") {
            return (balance, statement);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        tab.reload(true, None).unwrap().wait_until_navigated().unwrap();
    }
    panic!("the statement never showed the adjustment with its client");
}

/// A read-only client, signed in in a browser context of its own, sees the
/// member but no action.
fn read_only_sees_no_action(browser: &Browser, base: &str) {
    let context = browser.new_context().unwrap();
    let tab = context.new_tab().unwrap();
    tab.navigate_to(&format!("{base}/console/login")).unwrap().wait_until_navigated().unwrap();
    tab.wait_for_element("#token").unwrap().click().unwrap();
    tab.type_str("t-read").unwrap();
    tab.wait_for_element("#sign-in").unwrap().click().unwrap();
    tab.wait_until_navigated().unwrap();
    let member = format!("{base}/console/member?programme=shop/points&member=m1");
    tab.navigate_to(&member).unwrap().wait_until_navigated().unwrap();
    assert_eq!(text_of(&tab, "#available"), "150");
    assert!(tab.find_element("#adjust-submit").is_err(), "a read-only client sees the adjust form");
}

/// Whether a PNG has more than one colour.
fn not_blank(png_bytes: &[u8]) -> bool {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.line_size / info.width as usize;
    let pixels: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    pixels.len() > 2
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_adjusts_a_member_in_the_browser_and_the_books_chart_renders() {
    let Some(browser) = browser() else { return };
    let h = Harness::start_with(|c| c.auth = Auth::parse_clients(CLIENTS).unwrap()).await;
    let cfg = pb::ConfigureProgrammeRequest {
        request_id: "cfg".into(),
        programme: Some(programme()),
        operator: "ops".into(),
    };
    h.admin().await.configure_programme(as_client("t-desk", cfg)).await.unwrap();
    let earned = h.ledger().await.earn(as_client("t-app", earn("e1", "m1", 100))).await.unwrap().into_inner();
    // The pages read the views: wait until they have the earn.
    let seen = pb::GetAccountRequest { account: account("m1"), min_position: earned.position, ..Default::default() };
    h.ledger().await.get_account(as_client("t-app", seen)).await.unwrap();
    let base = format!("http://{}", h.admin_addr);
    let shot = tokio::task::spawn_blocking(move || {
        let tab = browser.new_tab().unwrap();
        let (balance, statement) = adjust_in_the_browser(&tab, &base);
        assert_eq!(balance, "150");
        assert!(statement.contains("goodwill") || statement.contains("console-"), "{statement}");
        let row = statement.lines().find(|l| l.contains("PointsAdjusted")).unwrap().to_string();
        assert!(row.contains("desk"), "operator and client in the row: {row}");
        let books = format!("{base}/console/books?programme=shop/points&from=2026-03-01&to=2026-03-10");
        tab.navigate_to(&books).unwrap().wait_until_navigated().unwrap();
        let chart = tab.wait_for_element("#books-chart").unwrap();
        let shot = chart.capture_screenshot(CaptureScreenshotFormatOption::Png).unwrap();
        read_only_sees_no_action(&browser, &base);
        shot
    })
    .await
    .unwrap();
    assert!(not_blank(&shot), "the books chart's screenshot is blank");
    std::fs::write(h.dir.path().join("books-chart.png"), &shot).unwrap();
}
