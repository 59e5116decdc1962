//! TLS and mutual TLS on the gRPC listener, over real sockets on
//! 127.0.0.1, with certificates made by the project's own `dev-certs`
//! code: who is served and who is refused, reloads, client identities in
//! the tokens file, forwarding over TLS, and the `dev-certs` command.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::tls::*;
use common::*;
use points_ledger::api::forward::{path, ForwardTls, Forwarder};
use points_ledger::proto as pb;
use points_ledger::proto::programme_admin_client::ProgrammeAdminClient;
use points_ledger::tools::dev_certs::{self, Validity};
use tonic::Code;

/// A mutual-TLS service (client CA `ca`), its files and its CA.
async fn mutual(tokens: Option<&str>) -> (Harness, ServerFiles, dev_certs::Ca) {
    let ca = ca("test CA");
    let files = ServerFiles::new(&server_cert(&ca), Some(&ca));
    let h = start_tls(files.load(), tokens).await;
    (h, files, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_certificate_from_the_ca_is_served() {
    let (h, _files, ca) = mutual(None).await;
    let client = client_cert(&ca, "dev-client");
    health(endpoint(h.addr, &ca, Some(&client))).await.unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused() {
    let (h, _files, ca) = mutual(None).await;
    assert!(health(endpoint(h.addr, &ca, None)).await.is_err());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused() {
    let (h, _files, ca) = mutual(None).await;
    let stranger = client_cert(&common::tls::ca("another CA"), "dev-client");
    assert!(health(endpoint(h.addr, &ca, Some(&stranger))).await.is_err());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_refused() {
    let (h, _files, ca) = mutual(None).await;
    let expired = ca.client("dev-client", Validity::expired()).unwrap();
    assert!(health(endpoint(h.addr, &ca, Some(&expired))).await.is_err());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_to_a_tls_port_is_refused() {
    let (h, _files, _ca) = mutual(None).await;
    let plain = tonic::transport::Endpoint::from_shared(h.url()).unwrap().timeout(Duration::from_secs(5));
    assert!(health(plain).await.is_err());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_silent_handshakes_do_not_stop_the_listener() {
    let (h, _files, ca) = mutual(None).await;
    // A client that connects and says nothing holds one handshake slot.
    let _silent = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    assert!(health(endpoint(h.addr, &ca, None)).await.is_err());
    let plain = tonic::transport::Endpoint::from_shared(h.url()).unwrap().timeout(Duration::from_secs(5));
    assert!(health(plain).await.is_err());
    health(endpoint(h.addr, &ca, Some(&client_cert(&ca, "dev-client")))).await.unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stays_silent_is_disconnected_at_the_handshake_deadline() {
    use tokio::io::AsyncReadExt;
    let ca = ca("test CA");
    let files = ServerFiles::new(&server_cert(&ca), Some(&ca));
    let tls = points_ledger::server::tls::Tls::load(files.tls_files()).unwrap();
    let h = start_tls(std::sync::Arc::new(tls.with_handshake_timeout(Duration::from_millis(200))), None).await;
    let mut silent = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the silent connection is still open: {read:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_tool_asks_a_mutual_tls_instance_with_its_certificate() {
    let (h, _files, ca) = mutual(Some("cert:ops * admin\n")).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.issued.cert_pem).unwrap();
    let (cert, key) = write_pair(dir.path(), "ops", &client_cert(&ca, "ops"));
    let out = Command::new(env!("CARGO_BIN_EXE_points-ledger"))
        .args(["cluster", "--json", "--target", &h.addr.to_string(), "--tls-ca"])
        .arg(dir.path().join("ca.pem"))
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&h.addr.to_string()));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_new_handshakes_the_new_certificate_and_keeps_open_connections() {
    let (old_ca, new_ca) = (ca("old CA"), ca("new CA"));
    let files = ServerFiles::new(&server_cert(&old_ca), None);
    let tls = files.load();
    let h = start_tls(tls.clone(), None).await;
    let before = health(endpoint(h.addr, &old_ca, None)).await.unwrap();

    files.put_server(&server_cert(&new_ca));
    tls.reload().unwrap();

    health_on(&before).await.expect("the connection opened before the reload keeps working");
    assert!(health(endpoint(h.addr, &old_ca, None)).await.is_err(), "a new handshake still saw the old certificate");
    health(endpoint(h.addr, &new_ca, None)).await.expect("a new handshake sees the new certificate");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_fails_keeps_the_certificate_it_had() {
    let ca = ca("test CA");
    let files = ServerFiles::new(&server_cert(&ca), None);
    let tls = files.load();
    let h = start_tls(tls.clone(), None).await;
    std::fs::write(files.path("server-key.pem"), "not a key").unwrap();
    let err = tls.reload().unwrap_err();
    assert!(format!("{err:#}").contains("server-key.pem"), "{err:#}");
    health(endpoint(h.addr, &ca, None)).await.expect("still served with the certificate loaded before");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cert_line_in_the_tokens_file_grants_its_client_admin_rights() {
    let (h, _files, ca) = mutual(Some("cert:ops * admin\n")).await;
    let channel = health(endpoint(h.addr, &ca, Some(&client_cert(&ca, "ops")))).await.unwrap();
    let reply = ProgrammeAdminClient::new(channel).configure_programme(configure_request(programme())).await;
    assert!(reply.is_ok(), "{reply:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_not_in_the_tokens_file_is_refused() {
    let (h, _files, ca) = mutual(Some("cert:ops * admin\n")).await;
    let channel = health(endpoint(h.addr, &ca, Some(&client_cert(&ca, "stranger")))).await.unwrap();
    let mut c = points_ledger::proto::points_ledger_client::PointsLedgerClient::new(channel);
    let err = c.earn(earn("e1", "alice", 5)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_tokens_file_a_verified_client_is_a_member_but_not_an_admin() {
    let (h, _files, ca) = mutual(None).await;
    let channel = health(endpoint(h.addr, &ca, Some(&client_cert(&ca, "dev-client")))).await.unwrap();
    let err = ProgrammeAdminClient::new(channel.clone())
        .configure_programme(configure_request(programme()))
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason_of(&err).as_str()), (Code::PermissionDenied, "ADMIN_REQUIRED"));
    let mut c = points_ledger::proto::points_ledger_client::PointsLedgerClient::new(channel);
    // A member call passes access control and reaches the ledger (which
    // knows no programme "points" yet).
    assert_eq!(c.earn(earn("e1", "alice", 5)).await.unwrap_err().code(), Code::NotFound);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_with_the_instances_tls_settings_reaches_a_mutual_tls_instance() {
    let ca = ca("cluster CA");
    let server = server_cert(&ca);
    let files = ServerFiles::new(&server, Some(&ca));
    // The instances present their server certificate (CN points-ledger)
    // when they forward; its line lets forwarded commands through.
    let tokens = format!("cert:{} * admin\ncert:ops * admin\n", dev_certs::SERVER_NAME);
    let h = start_tls(files.load(), Some(&tokens)).await;
    let admin = health(endpoint(h.addr, &ca, Some(&client_cert(&ca, "ops")))).await.unwrap();
    ProgrammeAdminClient::new(admin).configure_programme(configure_request(programme())).await.unwrap();

    let settings = ForwardTls {
        ca_pem: ca.issued.cert_pem.clone().into_bytes(),
        identity: Some((server.cert_pem.clone().into_bytes(), server.key_pem.clone().into_bytes())),
    };
    let forwarder = Forwarder::new(Some(settings));
    let metadata = tonic::metadata::MetadataMap::new();
    let reply = forwarder
        .unary::<pb::EarnRequest, pb::CommandReply>(
            &h.addr.to_string(),
            path::EARN,
            &metadata,
            "test",
            earn("e1", "alice", 5),
            0,
        )
        .await;
    assert_eq!(reply.unwrap().into_inner().balance.unwrap().available, 5);

    let plain = Forwarder::new(None);
    let err = plain
        .unary::<pb::EarnRequest, pb::CommandReply>(
            &h.addr.to_string(),
            path::EARN,
            &metadata,
            "test",
            earn("e2", "alice", 5),
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), "PARTITION_MOVING", "{err:?}");
    h.stop().await;
}

#[test]
fn dev_certs_writes_the_six_files_it_names_and_refuses_to_overwrite_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_points-ledger"))
            .arg("dev-certs")
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let first = run(&["--host", "ledger.internal", "--client-name", "shop-app"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    for name in ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem"] {
        assert!(out.join(name).exists(), "{name} missing");
    }
    let again = run(&[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(run(&["--force"]).status.success());
}

#[test]
fn a_client_identity_is_its_common_name_then_its_alternative_names() {
    let ca = ca("test CA");
    let issued = ca.client_with_sans("app-7", &["app.shop.internal", "spiffe://shop/app"], today()).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap();
    let id = points_ledger::server::tls::client_identity(&der).unwrap();
    assert_eq!(id.names, ["app-7", "app.shop.internal", "spiffe://shop/app"]);
}

/// The real binary: SIGHUP swaps the certificate for new handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_makes_the_running_binary_serve_the_new_certificate() {
    let (old_ca, new_ca) = (ca("old CA"), ca("new CA"));
    let files = ServerFiles::new(&server_cert(&old_ca), None);
    let (cert, key) = (files.path("server.pem"), files.path("server-key.pem"));
    let served = Served::start(&[
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ]);
    let before = health(endpoint(served.addr, &old_ca, None)).await.unwrap();

    files.put_server(&server_cert(&new_ca));
    served.signal(SIGHUP);
    let mut swapped = false;
    for _ in 0..100 {
        if health(endpoint(served.addr, &new_ca, None)).await.is_ok() {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(swapped, "the new certificate was not served after SIGHUP");
    health_on(&before).await.expect("the connection opened before SIGHUP keeps working");
    assert!(served.stop(), "a clean stop on SIGTERM");
}
