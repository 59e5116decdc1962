//! The load generator works end to end (its own server, one second, a few
//! workers). No timing is asserted: only that it ran and saw no errors.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_its_own_server_and_reports_figures() {
    let json = tempfile::NamedTempFile::new().unwrap();
    let figures = points_ledger::loadgen::run(points_ledger::loadgen::Options {
        target: None,
        accounts: 50,
        concurrency: 4,
        duration_seconds: 1,
        mix: points_ledger::loadgen::parse_mix("earn=60,spend=20,reserve=5,refund=5,query=10").unwrap(),
        json: Some(json.path().to_path_buf()),
        seed: 7,
    })
    .await
    .unwrap();
    assert!(figures["commands"].as_u64().unwrap() > 0);
    assert_eq!(figures["errors"], serde_json::json!({}), "{figures}");
    for k in ["commands_per_second", "p50_ms", "p99_ms", "p999_ms", "expected_rejections"] {
        assert!(figures.get(k).is_some(), "{k} missing");
    }
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(json.path()).unwrap()).unwrap();
    // Floats need not round-trip through JSON to the last bit; the counts must.
    for k in ["commands", "ok", "expected_rejections", "errors", "mix", "accounts"] {
        assert_eq!(written[k], figures[k], "{k}");
    }
    assert!(points_ledger::loadgen::parse_mix("fly=1").is_err());
}
