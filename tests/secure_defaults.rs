//! Secure by default: `serve` refuses to expose an open service, and what
//! only admins may see or do stays theirs.

use crate::common;

use common::tls::*;
use common::*;
use points_ledger::proto as pb;
use points_ledger::proto::cluster_client::ClusterClient;
use tonic::Code;

const TOKENS: &str = "adm * admin\nshop-adm shop admin\nshop-app shop\n";

/// Runs `serve` with `args` in a fresh data directory, without the
/// environment variable `unset`, expecting it to refuse to start: its stderr.
fn serve_refuses(args: &[&str], unset: &str) -> String {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_points-ledger"))
        .args(["serve", "--admin-listen", "127.0.0.1:0"])
        .args(args)
        .arg("--data-dir")
        .arg(data.path())
        .env_remove(unset)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn serve_beyond_loopback_without_access_control_refuses_to_start_and_names_the_flag() {
    let stderr = serve_refuses(&["--listen", "0.0.0.0:0"], "POINTS_LEDGER_INSECURE_NO_AUTH");
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");
}

#[test]
fn serve_refuses_to_create_kafka_topics_with_fewer_than_three_replicas_unless_told_it_is_a_test() {
    let args = ["--log", "kafka", "--kafka-brokers", "127.0.0.1:1", "--kafka-replication-factor", "1"];
    let stderr = serve_refuses(&args, "POINTS_LEDGER_KAFKA_ALLOW_LOW_REPLICATION");
    assert!(stderr.contains("--kafka-allow-low-replication"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_beyond_loopback_starts_with_insecure_no_auth() {
    let served = Served::start(&["--listen".as_ref(), "0.0.0.0:0".as_ref(), "--insecure-no-auth".as_ref()]);
    assert!(served.addr.ip().is_unspecified());
    served.wait_plain_text().await;
    assert!(served.stop(), "a clean stop on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_beyond_loopback_starts_with_a_tokens_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, TOKENS).unwrap();
    let served =
        Served::start(&["--listen".as_ref(), "0.0.0.0:0".as_ref(), "--auth-tokens-file".as_ref(), tokens.as_os_str()]);
    served.wait_plain_text().await;
    assert!(served.stop(), "a clean stop on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_cluster_needs_an_admin_client_of_every_tenant() {
    let h = Harness::start_with(|c| c.auth = auth(TOKENS)).await;
    let mut c = ClusterClient::connect(h.url()).await.unwrap();
    let ask = || pb::DescribeClusterRequest {};
    assert_eq!(c.describe_cluster(ask()).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(c.describe_cluster(bearer("shop-app", ask())).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(c.describe_cluster(bearer("shop-adm", ask())).await.unwrap_err().code(), Code::PermissionDenied);
    assert!(c.describe_cluster(bearer("adm", ask())).await.is_ok());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_programme_shows_the_risk_thresholds_to_admin_clients_only() {
    let h = Harness::start_with(|c| c.auth = auth(TOKENS)).await;
    let mut a = h.admin().await;
    a.configure_programme(bearer("adm", configure_request(programme_with_risk()))).await.unwrap();
    let get = || pb::GetProgrammeRequest { tenant_id: "shop".into(), programme_id: "points".into(), version: 0 };
    let seen_by_app = a.get_programme(bearer("shop-app", get())).await.unwrap().into_inner();
    assert_eq!(seen_by_app.risk, None);
    assert_eq!(seen_by_app.unit_name, "积分");
    let seen_by_admin = a.get_programme(bearer("shop-adm", get())).await.unwrap().into_inner();
    assert_eq!(seen_by_admin.risk, programme_with_risk().risk);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_programme_checks_the_caller_before_the_programme() {
    let h = Harness::start_with(|c| c.auth = auth(TOKENS)).await;
    let mut a = h.admin().await;
    let invalid = pb::Programme { validity_days: -1, time_zone: "Mars/Olympus".into(), ..programme() };
    let err = a.configure_programme(bearer("shop-app", configure_request(invalid.clone()))).await.unwrap_err();
    assert_eq!((err.code(), reason_of(&err).as_str()), (Code::PermissionDenied, "ADMIN_REQUIRED"));
    let err = a.configure_programme(tonic::Request::new(configure_request(invalid.clone()))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = a.configure_programme(bearer("adm", configure_request(invalid))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    h.stop().await;
}
