//! Webhook deliveries posted to a real HTTP receiver on 127.0.0.1: what a
//! receiver gets, and how an attempt fails (a refusing status, a redirect,
//! nothing listening).

use crate::common::receiver;

use points_ledger::webhook::{signature, PostError, Poster, DELIVERY_ID_HEADER, SIGNATURE_HEADER};
use receiver::{Answer, Receiver};

const SECRET: &[u8] = b"whsec_test-secret";
const BODY: &[u8] = br#"{"type":"points.earned","account":"shop/points/m1","points":120}"#;

async fn post(url: &str, delivery_id: &str) -> Result<(), PostError> {
    Poster::new().unwrap().post(url, SECRET, delivery_id, BODY).await
}

#[tokio::test]
async fn a_delivery_is_a_json_post_of_the_body_as_it_is() {
    let receiver = Receiver::start(Answer::status(204)).await;

    post(&receiver.url("/hooks/points"), "d-1").await.unwrap();

    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].method, "POST");
    assert_eq!(received[0].path, "/hooks/points");
    assert_eq!(received[0].header("content-type"), "application/json");
    assert_eq!(received[0].body, BODY);
}

#[tokio::test]
async fn a_delivery_carries_its_id_and_a_signature_the_receiver_can_verify() {
    let receiver = Receiver::start(Answer::status(200)).await;

    post(&receiver.url("/hook"), "01J9Z6Q4W3-7").await.unwrap();

    let got = &receiver.received()[0];
    assert_eq!(got.header(DELIVERY_ID_HEADER), "01J9Z6Q4W3-7");
    assert_eq!(got.header(SIGNATURE_HEADER), signature(SECRET, &got.body));
    assert_ne!(got.header(SIGNATURE_HEADER), signature(b"another secret", &got.body));
}

#[tokio::test]
async fn a_delivery_names_the_service_and_its_version_as_user_agent() {
    let receiver = Receiver::start(Answer::status(200)).await;

    post(&receiver.url("/hook"), "d-1").await.unwrap();

    assert_eq!(receiver.received()[0].header("user-agent"), format!("points-ledger/{}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn a_receiver_answering_503_fails_the_attempt_with_that_status() {
    let receiver = Receiver::start(Answer::status(503)).await;

    let err = post(&receiver.url("/hook"), "d-1").await.unwrap_err();

    assert!(matches!(err, PostError::Status { status: 503, .. }), "{err:?}");
    assert_eq!(err.to_string(), "HTTP 503 Service Unavailable");
}

#[tokio::test]
async fn a_refusal_keeps_only_the_start_of_the_receivers_body_on_one_line() {
    let body = format!("database\n  is down: {}", "x".repeat(10_000));
    let receiver = Receiver::start(Answer::status(500).with_body(&body)).await;

    let err = post(&receiver.url("/hook"), "d-1").await.unwrap_err();

    let PostError::Status { status: 500, snippet } = &err else { panic!("{err:?}") };
    assert_eq!(snippet.chars().count(), 200);
    assert!(snippet.starts_with("database is down: xxx"), "{snippet}");
    assert!(err.to_string().starts_with("HTTP 500 Internal Server Error: database is down: xxx"), "{err}");
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_fails_the_attempt() {
    let elsewhere = Receiver::start(Answer::status(200)).await;
    let receiver = Receiver::start(Answer::status(307).with_header("location", &elsewhere.url("/hook"))).await;

    let err = post(&receiver.url("/hook"), "d-1").await.unwrap_err();

    assert!(matches!(err, PostError::Status { status: 307, .. }), "{err:?}");
    assert!(elsewhere.received().is_empty(), "the redirect was followed");
}

#[tokio::test]
async fn a_port_with_nothing_listening_fails_the_attempt_as_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();

    let err = post(&format!("http://127.0.0.1:{port}/hook"), "d-1").await.unwrap_err();

    assert!(matches!(err, PostError::Connect(_)), "{err:?}");
    assert_eq!(err.to_string(), "connection refused");
}

#[tokio::test]
async fn a_url_that_is_not_taken_is_not_sent() {
    let receiver = Receiver::start(Answer::status(200)).await;
    let with_userinfo = receiver.base.replace("http://", "http://user:pass@");

    let err = post(&with_userinfo, "d-1").await.unwrap_err();

    assert!(matches!(err, PostError::Invalid(_)), "{err:?}");
    assert!(receiver.received().is_empty());
}
