//! `what-if` through the real binary: activities recorded over gRPC, the
//! service stopped, then the period decided again under a rules file, and
//! the report read as JSON.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::*;
use points_ledger::proto as pb;

/// 2026-03-10 in Asia/Shanghai (T0 is 08:00 there).
const DAY0: &str = "2026-03-10";
/// The day after.
const DAY1: &str = "2026-03-11";
const DAY_MS: i64 = 86_400_000;

/// Login +1, at most 3 a day.
fn login(points: i64) -> pb::EarningRule {
    pb::EarningRule { daily_count_max: 3, ..rule("login", "login", points) }
}

/// Payment: 1 point and 1 growth per 100 yuan for personal members,
/// instalments x2.
fn payment_rule() -> pb::EarningRule {
    let mut payment = rule("payment", "payment", 0);
    payment.amount_rates.insert("personal".into(), pb::AmountRate { amount_minor: 10_000, points: 1, growth: 1 });
    payment.tag_multipliers_percent.insert("instalment".into(), 200);
    payment
}

fn rules(earning_rules: Vec<pb::EarningRule>) -> pb::Programme {
    pb::Programme { earning_rules, ..programme() }
}

/// Levels by growth (silver from 10), silver members earning x1.5, and a
/// report penalty of 12.
fn with_levels() -> pb::Programme {
    pb::Programme {
        levels: vec![
            pb::LevelThreshold { name: "bronze".into(), min_growth: 0 },
            pb::LevelThreshold { name: "silver".into(), min_growth: 10 },
        ],
        level_multipliers_percent: [("silver".to_string(), 150)].into_iter().collect(),
        ..rules(vec![login(1), payment_rule(), rule("reported", "reported", -12)])
    }
}

/// Runs the binary; (success, standard output, standard error).
fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_points-ledger")).args(args).env("RUST_LOG", "warn").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// `what-if` of the days `from..=to` of the stopped service in `dir` under
/// `proposed`, as JSON.
fn what_if(dir: &Path, flags: &[String], proposed: &pb::Programme, from: &str, to: &str) -> serde_json::Value {
    let file = dir.join("proposed.json");
    std::fs::write(&file, serde_json::to_string_pretty(proposed).unwrap()).unwrap();
    let mut args = vec!["what-if", "--data-dir", dir.to_str().unwrap(), "--tenant", "shop", "--programme", "points"];
    args.extend(["--rules", file.to_str().unwrap(), "--from", from, "--to", to, "--format", "json"]);
    args.extend(flags.iter().map(String::as_str));
    let (ok, out, err) = run(&args);
    assert!(ok, "what-if failed: {err}");
    assert!(!err.contains("left out") && !err.contains("quarantined"), "every shadow decision folded: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Five logins of ann on DAY0 under login +1, at most 3 a day.
async fn five_logins() -> (tempfile::TempDir, Vec<String>, Option<common::broker::Tansu>) {
    let h = Harness::start().await;
    configure(&h, rules(vec![login(1), payment_rule()])).await;
    let mut c = h.ledger().await;
    for i in 0..5 {
        c.record_activity(activity(&format!("l{i}"), "ann", "login")).await.unwrap();
    }
    let flags = h.log_flags();
    let (dir, broker) = h.stop_keep_broker().await;
    (dir, flags, broker)
}

/// Ann reaches silver on DAY0; on DAY1 (the period) bob does too, both log
/// in past the rule's limit, ann pays by instalment at silver x1.5, earns,
/// spends, is reported and loses growth by hand, bob's earn is reversed
/// with its growth, and cat is set to silver by hand and logs in: 13
/// activities of 3 members.
async fn two_days_of_history() -> (tempfile::TempDir, Vec<String>, Option<common::broker::Tansu>) {
    let h = Harness::start().await;
    configure(&h, with_levels()).await;
    let mut c = h.ledger().await;
    // The day before the period: ann reaches silver (growth 12) and earns.
    c.record_activity(payment("p0", "ann", 1234, &[])).await.unwrap();
    c.earn(pb::EarnRequest { growth: Some(3), ..earn("e0", "ann", 100) }).await.unwrap();
    c.record_activity(activity("l0", "ann", "login")).await.unwrap();
    h.clock.advance(DAY_MS);
    // The period: bob from bronze to silver, logins past the rule's limit,
    // an instalment payment at silver x1.5, a plain earn, a spend, a penalty.
    c.record_activity(payment("p1", "bob", 2000, &[])).await.unwrap();
    for i in 1..5 {
        c.record_activity(activity(&format!("l{i}"), "ann", "login")).await.unwrap();
        c.record_activity(activity(&format!("l{i}"), "bob", "login")).await.unwrap();
    }
    c.record_activity(payment("p1", "ann", 500, &["instalment"])).await.unwrap();
    c.earn(earn("e1", "ann", 40)).await.unwrap();
    c.spend(spend("s1", "ann", 120)).await.unwrap();
    c.record_activity(activity("r1", "ann", "reported")).await.unwrap();
    c.record_activity(activity("l5", "bob", "login")).await.unwrap();
    // Growth moved by hand and by a reversal; cat's level set by hand.
    c.adjust_growth(pb::AdjustGrowthRequest {
        request_id: "g1".into(),
        account: account("ann"),
        growth: -3,
        operator: "ops".into(),
        reason: "review deleted".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.earn(pb::EarnRequest { growth: Some(4), ..earn("e2", "bob", 30) }).await.unwrap();
    c.reverse_earn(pb::ReverseEarnRequest { growth: Some(4), ..reverse("v2", "bob", "e2", 10) }).await.unwrap();
    let set = pb::SetLevelRequest {
        request_id: "s1".into(),
        account: account("cat"),
        level: "silver".into(),
        operator: "ops".into(),
        reason: "VIP customer".into(),
        hold_until: Some(pbjson_types::Timestamp { seconds: (T0 + 10 * DAY_MS) / 1000, nanos: 0 }),
    };
    h.admin().await.set_level(set).await.unwrap();
    c.record_activity(activity("l1", "cat", "login")).await.unwrap();
    let flags = h.log_flags();
    let (dir, broker) = h.stop_keep_broker().await;
    (dir, flags, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_in_force_proposed_again_report_no_difference() {
    let (dir, flags, _broker) = two_days_of_history().await;
    let r = what_if(dir.path(), &flags, &with_levels(), DAY1, DAY1);
    assert_eq!(r["activities"], 13, "{r:#}");
    assert_eq!(r["actual"], r["proposed"], "{r:#}");
    assert_ne!(r["actual"]["points"], 0, "{r:#}");
    for row in r["by_rule"].as_array().unwrap() {
        assert_eq!(row["actual_points"], row["proposed_points"], "{r:#}");
    }
    assert_eq!(r["by_rule"].as_array().unwrap().len(), 3, "{r:#}");
    assert_eq!(r["refused"], serde_json::json!([]), "{r:#}");
    assert_eq!(r["level_changes"], serde_json::json!([]), "{r:#}");
    assert_eq!((r["members"].as_i64(), r["members_affected"].as_i64()), (Some(3), Some(0)), "{r:#}");
    assert_eq!(r["liability_cash_minor_delta"], 0, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_level_threshold_reports_the_members_who_would_stay_below_it_and_their_lost_multiplier() {
    let (dir, flags, _broker) = two_days_of_history().await;
    let mut proposed = with_levels();
    // Silver from 40 growth: ann (15 before the period, 22 after) and bob
    // (20) stay bronze; cat's level set by hand holds.
    proposed.levels[1].min_growth = 40;
    let r = what_if(dir.path(), &flags, &proposed, DAY1, DAY1);
    let expected = serde_json::json!([{"actual_level": "silver", "proposed_level": "bronze", "members": 2}]);
    assert_eq!(r["level_changes"], expected, "{r:#}");
    // Ann's instalment payment: 10 points and growth at bronze, not 15 at silver x1.5.
    let payment = r["by_rule"].as_array().unwrap().iter().find(|row| row["rule_id"] == "payment").unwrap().clone();
    assert_eq!((payment["actual_points"].as_i64(), payment["proposed_points"].as_i64()), (Some(35), Some(30)), "{r:#}");
    assert_eq!((r["actual"]["growth"].as_i64(), r["proposed"]["growth"].as_i64()), (Some(35), Some(30)), "{r:#}");
    assert_eq!(r["members_affected"], 1, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doubled_login_rule_reports_the_doubled_points_within_the_rules_daily_limit() {
    let (dir, flags, _broker) = five_logins().await;
    let r = what_if(dir.path(), &flags, &rules(vec![login(2), payment_rule()]), DAY0, DAY0);
    assert_eq!(r["activities"], 5, "{r:#}");
    // Three of the five logins count, at 1 point and at 2.
    assert_eq!((r["actual"]["points"].as_i64(), r["proposed"]["points"].as_i64()), (Some(3), Some(6)), "{r:#}");
    let expected =
        serde_json::json!([{"rule_id": "login", "occurrences": 5, "actual_points": 3, "proposed_points": 6}]);
    assert_eq!(r["by_rule"], expected, "{r:#}");
    let day = &r["by_day"][0];
    assert_eq!((day["date"].as_str(), day["activities"].as_i64()), (Some(DAY0), Some(5)), "{r:#}");
    assert_eq!((day["actual_points"].as_i64(), day["proposed_points"].as_i64()), (Some(3), Some(6)), "{r:#}");
    assert_eq!(r["members_affected"], 1, "{r:#}");
    // 3 more points at 100 points per yuan: 3 fen.
    assert_eq!(r["liability_cash_minor_delta"], 3, "{r:#}");
    assert_eq!(r["refused"], serde_json::json!([]), "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activities_of_an_action_the_proposed_rules_lack_are_reported_refused_with_their_reason() {
    let (dir, flags, _broker) = five_logins().await;
    let r = what_if(dir.path(), &flags, &rules(vec![payment_rule()]), DAY0, DAY0);
    let expected = serde_json::json!([{"reason": "EARNING_RULE_NOT_FOUND", "action": "login", "activities": 5}]);
    assert_eq!(r["refused"], expected, "{r:#}");
    assert_eq!((r["actual"]["points"].as_i64(), r["proposed"]["points"].as_i64()), (Some(3), Some(0)), "{r:#}");
    assert_eq!(r["liability_cash_minor_delta"], -3, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_reads_beside_the_running_service_and_writes_nothing() {
    let h = Harness::start().await;
    configure(&h, rules(vec![login(1)])).await;
    let mut c = h.ledger().await;
    for i in 0..5 {
        c.record_activity(activity(&format!("l{i}"), "ann", "login")).await.unwrap();
    }
    let before = h.records();
    let r = what_if(h.dir.path(), &h.log_flags(), &rules(vec![login(2)]), DAY0, DAY0);
    assert_eq!((r["actual"]["points"].as_i64(), r["proposed"]["points"].as_i64()), (Some(3), Some(6)), "{r:#}");
    assert_eq!(h.records(), before, "what-if appended nothing");
    // The service goes on taking commands.
    c.record_activity(activity("l5", "ann", "login")).await.unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_format_names_the_rules_and_the_refusals_for_people() {
    let (dir, flags, _broker) = five_logins().await;
    let file = dir.path().join("no-login.json");
    std::fs::write(&file, serde_json::to_string(&rules(vec![payment_rule()])).unwrap()).unwrap();
    let mut args = vec!["what-if", "--data-dir", dir.path().to_str().unwrap(), "--tenant", "shop"];
    args.extend(["--programme", "points", "--rules", file.to_str().unwrap(), "--from", DAY0, "--to", DAY0]);
    args.extend(flags.iter().map(String::as_str));
    let (ok, out, err) = run(&args);
    assert!(ok, "{err}");
    assert!(out.contains("login") && out.contains("EARNING_RULE_NOT_FOUND"), "{out}");
    assert!(out.contains("liability"), "{out}");
}

/// Runs `what-if` on a directory without a log (flags and rules are
/// checked first); (success, standard error).
fn refused_flags(dir: &Path, rules_text: &str, from: &str, to: &str) -> (bool, String) {
    let file = dir.join("rules.json");
    std::fs::write(&file, rules_text).unwrap();
    let args = ["what-if", "--data-dir", dir.to_str().unwrap(), "--tenant", "shop", "--programme", "points"];
    let (ok, _, err) = run(&[&args[..], &["--rules", file.to_str().unwrap(), "--from", from, "--to", to]].concat());
    (ok, err)
}

#[test]
fn a_period_that_ends_before_it_starts_is_refused_before_anything_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, err) = refused_flags(dir.path(), "{}", DAY1, DAY0);
    assert!(!ok && err.contains("--from 2026-03-11 is after --to 2026-03-10"), "{err}");
    let (ok, err) = refused_flags(dir.path(), "{}", "2026-13-01", DAY0);
    assert!(!ok && err.contains("YYYY-MM-DD"), "{err}");
}

#[test]
fn a_rules_file_that_is_not_a_programme_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, err) = refused_flags(dir.path(), "earning_rules: []", DAY0, DAY0);
    assert!(!ok && err.contains("rules.json: not JSON"), "{err}");
    let (ok, err) = refused_flags(dir.path(), r#"{"tenant_id": "shop", "no_such_field": 1}"#, DAY0, DAY0);
    assert!(!ok && err.contains("not a Programme in the protobuf JSON mapping"), "{err}");
}

#[test]
fn rules_that_do_not_validate_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = pb::Programme { points_per_cash_unit: 0, ..rules(vec![login(1)]) };
    let (ok, err) = refused_flags(dir.path(), &serde_json::to_string(&bad).unwrap(), DAY0, DAY0);
    assert!(!ok && err.contains("programme.points_per_cash_unit"), "{err}");
    let twice = rules(vec![login(1), login(2)]);
    let (ok, err) = refused_flags(dir.path(), &serde_json::to_string(&twice).unwrap(), DAY0, DAY0);
    assert!(!ok && err.contains("earning_rules"), "{err}");
    let other = pb::Programme { programme_id: "coins".into(), ..rules(vec![login(1)]) };
    let (ok, err) = refused_flags(dir.path(), &serde_json::to_string(&other).unwrap(), DAY0, DAY0);
    assert!(!ok && err.contains("is programme shop/coins, not shop/points"), "{err}");
}
