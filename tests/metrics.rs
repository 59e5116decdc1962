//! The admin listener: `/metrics` counts exactly what was sent, `/healthz`
//! and `/readyz` answer probes.

use crate::common;

use common::*;
use tonic::Code;

/// The value of the sample `name{labels}` (labels as rendered), or 0.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_every_call_by_method_and_code_and_name_no_member() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    for i in 0..7 {
        c.earn(earn(&format!("e{i}"), &format!("member-{i}"), 100)).await.unwrap();
    }
    for i in 0..3 {
        let err = c.spend(spend(&format!("s{i}"), "member-0", 1_000_000)).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
    }
    let err = c.earn(earn("bad", "member-0", 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let (status, text) = h.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let handled = |rpc: &str, code: &str| {
        sample(&text, &format!(r#"points_ledger_grpc_server_handled_total{{rpc="{rpc}",code="{code}"}}"#))
    };
    assert_eq!(handled("Earn", "OK"), 7.0, "{text}");
    assert_eq!(handled("Spend", "FAILED_PRECONDITION"), 3.0);
    assert_eq!(handled("Earn", "INVALID_ARGUMENT"), 1.0);
    assert_eq!(handled("ConfigureProgramme", "OK"), 1.0);
    assert_eq!(sample(&text, r#"points_ledger_grpc_server_handling_seconds_count{rpc="Earn"}"#), 8.0);
    assert!(sample(&text, "points_ledger_writer_batch_commands_count") >= 1.0, "{text}");
    assert!(sample(&text, "points_ledger_writer_batch_commands_sum") >= 7.0);
    assert!(sample(&text, "points_ledger_log_append_seconds_count") >= 1.0);
    assert!(!text.contains("member-"), "a member id in the metrics:\n{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_method_the_service_does_not_serve_is_counted_as_unknown() {
    let h = Harness::start().await;
    let channel = tonic::transport::Channel::from_shared(h.url()).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/points.v1.PointsLedger/MintPoints");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let err = grpc.unary(tonic::Request::new(()), path, codec).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    let (_, text) = h.admin_get("/metrics").await;
    assert_eq!(
        sample(&text, r#"points_ledger_grpc_server_handled_total{rpc="unknown",code="UNIMPLEMENTED"}"#),
        1.0,
        "{text}"
    );
    assert!(!text.contains("MintPoints"));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness_answer_on_the_admin_listener() {
    let h = Harness::start().await;
    assert_eq!(h.admin_get("/healthz").await.0, 200);
    assert_eq!(h.admin_get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sampled_gauges_show_the_readers_lag_the_writers_modes_and_the_programmes_day() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    c.earn(earn("e1", "m1", 250)).await.unwrap();
    // The sampler reads the books every ten seconds, from the start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let series = r#"points_ledger_programme_points{tenant="shop",programme="points",movement="issued"}"#;
    loop {
        let (_, text) = h.admin_get("/metrics").await;
        if sample(&text, series) == 250.0 {
            assert!(text.contains(r#"points_ledger_lag_records{reader="views",partition="0"}"#), "{text}");
            assert!(text.contains(r#"points_ledger_rocksdb_running_compactions{database="books"}"#));
            let mode = |m: &str| sample(&text, &format!(r#"points_ledger_writer_mode{{partition="0",mode="{m}"}}"#));
            assert_eq!((mode("writing"), mode("following"), mode("fenced")), (1.0, 0.0, 0.0), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the day's issuance never showed:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_kafka_the_producer_and_the_readers_figures_are_exported() {
    let h = Harness::start().await;
    if h.broker.is_none() {
        return; // The embedded log has no Kafka client.
    }
    configure(&h, programme()).await;
    h.ledger().await.earn(earn("e1", "m1", 10)).await.unwrap();
    // librdkafka reports every 5 s; the sampler reads every second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, text) = h.admin_get("/metrics").await;
        let sent = sample(&text, r#"points_ledger_kafka{figure="producer_messages_sent"}"#);
        let received = sample(&text, r#"points_ledger_kafka{figure="consumer_messages_received"}"#);
        if sent > 0.0 && received > 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no Kafka figures:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
