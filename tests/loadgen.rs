//! The load generator works end to end, as a user runs it: `points-ledger
//! bench` (its own server, one second, a few workers), on the embedded log
//! and on Kafka (tansu), with the floors measured in the same run. No timing
//! is asserted: only that it ran, saw no errors and reported every figure.

use crate::common;

use std::process::Command;

/// Runs `points-ledger bench` with a small load and `extra` flags; returns
/// the figures it wrote with `--json` (and checks they are what it printed).
fn bench(extra: &[&str]) -> serde_json::Value {
    let json = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_points-ledger"))
        .args(["bench", "--accounts", "50", "--concurrency", "4", "--duration-seconds", "1", "--seed", "7"])
        .args(["--mix", "earn=60,spend=20,reserve=5,refund=5,query=10", "--partitions", "2"])
        .arg("--json")
        .arg(json.path())
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run points-ledger bench");
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(json.path()).unwrap()).unwrap();
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Floats need not round-trip through JSON to the last bit; the counts must.
    for k in ["commands", "ok", "expected_rejections", "errors", "mix", "accounts"] {
        assert_eq!(written[k], printed[k], "{k}");
    }
    written
}

#[test]
fn bench_drives_its_own_server_and_reports_figures() {
    let figures = bench(&["--floors"]);
    assert!(figures["commands"].as_u64().unwrap() > 0);
    assert_eq!(figures["errors"], serde_json::json!({}), "{figures}");
    for k in ["commands_per_second", "p50_ms", "p99_ms", "p999_ms", "expected_rejections"] {
        assert!(figures.get(k).is_some(), "{k} missing");
    }
    for k in [
        "grpc_empty_calls_per_second",
        "rocksdb_sync_write_batch_records_per_second",
        "rocksdb_random_key_rows_per_second",
        "no_database_commands_per_second",
    ] {
        assert!(figures["floors"][k].as_f64().unwrap() > 0.0, "{k}: {figures}");
    }
}

#[test]
fn bench_refuses_an_unknown_operation() {
    let out = Command::new(env!("CARGO_BIN_EXE_points-ledger"))
        .args(["bench", "--mix", "fly=1", "--duration-seconds", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn bench_on_kafka_measures_the_raw_producer_in_the_same_run() {
    let Some(_) = common::broker::available() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = common::broker::Tansu::start(dir.path());
    let bootstrap = broker.bootstrap();
    let figures = bench(&["--floors", "--log", "kafka", "--kafka-brokers", &bootstrap, "--kafka-topic", "bench"]);
    assert!(figures["commands"].as_u64().unwrap() > 0);
    assert_eq!(figures["errors"], serde_json::json!({}), "{figures}");
    for k in ["grpc_empty_calls_per_second", "kafka_raw_producer_records_per_second"] {
        assert!(figures["floors"][k].as_f64().unwrap() > 0.0, "{k}: {figures}");
    }
    assert!(figures["target"].as_str().unwrap().contains("kafka"), "{figures}");
}

#[test]
fn bench_sends_submit_batch_calls() {
    let figures = bench(&["--batch", "50", "--hot", "10/90"]);
    assert!(figures["commands"].as_u64().unwrap() >= 50);
    assert_eq!(figures["errors"], serde_json::json!({}), "{figures}");
    assert_eq!(figures["batch"], 50);
    assert_eq!(figures["hot"], "90% of commands to 10% of accounts");
}

/// Two runs against one server (as a user measuring before and after a
/// change would do) reuse no request id: no ALREADY_EXISTS in the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_against_the_same_server_reuses_no_request_id() {
    let h = common::Harness::start().await;
    let target = h.addr.to_string();
    for _ in 0..2 {
        let t = target.clone();
        let figures = tokio::task::spawn_blocking(move || bench(&["--target", &t])).await.unwrap();
        assert!(figures["ok"].as_u64().unwrap() > 0, "{figures}");
        assert_eq!(figures["errors"], serde_json::json!({}), "{figures}");
    }
    h.stop().await;
}
