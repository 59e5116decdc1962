//! The load generator works end to end (its own server, one second, a few
//! workers), on the embedded log and on Kafka (tansu), with the floors
//! measured in the same run. No timing is asserted: only that it ran, saw no
//! errors and reported every figure.

mod common;

use points_ledger::log::kafka::KafkaConfig;
use points_ledger::server::LogConfig;

fn options(log: LogConfig, floors: bool) -> points_ledger::loadgen::Options {
    points_ledger::loadgen::Options {
        target: None,
        accounts: 50,
        hot: None,
        concurrency: 4,
        duration_seconds: 1,
        mix: points_ledger::loadgen::parse_mix("earn=60,spend=20,reserve=5,refund=5,query=10").unwrap(),
        json: None,
        seed: 7,
        log,
        partitions: 2,
        batch: 1,
        floors,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_its_own_server_and_reports_figures() {
    let json = tempfile::NamedTempFile::new().unwrap();
    let figures = points_ledger::loadgen::run(points_ledger::loadgen::Options {
        json: Some(json.path().to_path_buf()),
        ..options(LogConfig::Embedded, true)
    })
    .await
    .unwrap();
    assert!(figures["commands"].as_u64().unwrap() > 0);
    assert_eq!(figures["errors"], serde_json::json!({}), "{figures}");
    for k in ["commands_per_second", "p50_ms", "p99_ms", "p999_ms", "expected_rejections"] {
        assert!(figures.get(k).is_some(), "{k} missing");
    }
    for k in [
        "grpc_empty_calls_per_second",
        "rocksdb_sync_write_batch_records_per_second",
        "rocksdb_random_key_rows_per_second",
    ] {
        assert!(figures["floors"][k].as_f64().unwrap() > 0.0, "{k}: {figures}");
    }
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(json.path()).unwrap()).unwrap();
    // Floats need not round-trip through JSON to the last bit; the counts must.
    for k in ["commands", "ok", "expected_rejections", "errors", "mix", "accounts"] {
        assert_eq!(written[k], figures[k], "{k}");
    }
    assert!(points_ledger::loadgen::parse_mix("fly=1").is_err());
    assert_eq!(points_ledger::loadgen::parse_hot("20/80").unwrap(), (20, 80));
    assert!(points_ledger::loadgen::parse_hot("0/80").is_err());
    assert!(points_ledger::loadgen::parse_hot("20").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_on_kafka_measures_the_raw_producer_in_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::broker::Tansu::start(dir.path());
    let kafka = KafkaConfig::new(&broker.bootstrap(), "bench", 2);
    let figures = points_ledger::loadgen::run(options(LogConfig::Kafka(kafka), true)).await.unwrap();
    assert!(figures["commands"].as_u64().unwrap() > 0);
    assert_eq!(figures["errors"], serde_json::json!({}), "{figures}");
    for k in ["grpc_empty_calls_per_second", "kafka_raw_producer_records_per_second"] {
        assert!(figures["floors"][k].as_f64().unwrap() > 0.0, "{k}: {figures}");
    }
    assert!(figures["target"].as_str().unwrap().contains("kafka"), "{figures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_sends_submit_batch_calls() {
    let figures = points_ledger::loadgen::run(points_ledger::loadgen::Options {
        batch: 50,
        hot: Some((10, 90)),
        ..options(LogConfig::Embedded, false)
    })
    .await
    .unwrap();
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
    for _ in 0..2 {
        let figures = points_ledger::loadgen::run(points_ledger::loadgen::Options {
            target: Some(format!("http://{}", h.addr)),
            ..options(LogConfig::Embedded, false)
        })
        .await
        .unwrap();
        assert!(figures["ok"].as_u64().unwrap() > 0, "{figures}");
        assert_eq!(figures["errors"], serde_json::json!({}), "{figures}");
    }
    h.stop().await;
}
