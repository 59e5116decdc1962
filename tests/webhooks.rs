//! Webhooks against a real HTTP receiver on 127.0.0.1: each event arrives
//! signed with its delivery id; a receiver that refuses for a while gets
//! everything afterwards, in order per partition (duplicates only with the
//! same delivery id); deliveries show where they stand; a restart of the
//! service during delivery loses nothing.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::receiver::{Answer, Receiver};
use common::*;
use points_ledger::proto as pb;
use points_ledger::webhook::{signature, DELIVERY_ID_HEADER, SIGNATURE_HEADER};

const SECRET: &str = "whsec-0123456789abcdef";

fn webhook(id: &str, url: &str) -> pb::ConfigureWebhookRequest {
    pb::ConfigureWebhookRequest {
        request_id: format!("wh-{id}"),
        operator: "ops".into(),
        tenant_id: "shop".into(),
        programme_id: "points".into(),
        webhook_id: id.into(),
        url: url.into(),
        event_types: vec!["PointsEarned".into(), "PointsSpent".into()],
        secret: SECRET.into(),
        disabled: false,
    }
}

/// Eight members earn and spend: 16 deliveries.
async fn traffic(h: &Harness, round: &str) {
    let mut c = h.ledger().await;
    for m in 0..8 {
        let member = format!("m{m}");
        c.earn(earn(&format!("{round}-e{m}"), &member, 100)).await.unwrap();
        c.spend(spend(&format!("{round}-s{m}"), &member, 10)).await.unwrap();
    }
}

/// Waits (up to 60 s) until the receiver has `n` distinct deliveries.
async fn until_delivered(receiver: &Receiver, n: usize) -> BTreeSet<String> {
    for _ in 0..600 {
        let ids = delivered(receiver);
        if ids.len() >= n {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} of {n} deliveries arrived", delivered(receiver).len());
}

/// The delivery ids of the requests the receiver took (2xx).
fn delivered(receiver: &Receiver) -> BTreeSet<String> {
    receiver.received().iter().filter(|r| r.ok).map(|r| r.header(DELIVERY_ID_HEADER).to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_arrives_signed_with_its_delivery_id() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let receiver = Receiver::start(Answer::status(204)).await;
    h.admin().await.configure_webhook(webhook("crm", &receiver.url("/hook"))).await.unwrap();
    traffic(&h, "a").await;
    until_delivered(&receiver, 16).await;
    for r in receiver.received() {
        assert_eq!(r.header(SIGNATURE_HEADER), signature(SECRET.as_bytes(), &r.body));
        assert_eq!(r.header("content-type"), "application/json");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(format!("crm:{}", body["id"].as_str().unwrap()), r.header(DELIVERY_ID_HEADER));
        assert!(["points.v1.PointsEarned", "points.v1.PointsSpent"].contains(&body["type"].as_str().unwrap()));
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_refusing_for_a_while_gets_everything_afterwards_and_deliveries_show_the_failure() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let receiver = Receiver::start(Answer::status(503)).await;
    let mut admin = h.admin().await;
    admin.configure_webhook(webhook("crm", &receiver.url("/hook"))).await.unwrap();
    traffic(&h, "a").await;
    // The worker tries, fails and waits.
    let failed = loop {
        let r = pb::ListWebhookDeliveriesRequest {
            tenant_id: "shop".into(),
            programme_id: "points".into(),
            ..Default::default()
        };
        let listed = admin.list_webhook_deliveries(r).await.unwrap().into_inner();
        if let Some(d) = listed.deliveries.into_iter().find(|d| d.attempts > 0) {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failed.state, pb::WebhookDeliveryState::Failed as i32);
    assert!(failed.last_error.contains("503"), "{failed:?}");
    assert!(failed.next_attempt_at.is_some() && failed.delivery_id.starts_with("crm:"));
    receiver.answer(Answer::status(200));
    traffic(&h, "b").await;
    let ids = until_delivered(&receiver, 32).await;
    assert_eq!(ids.len(), 32);
    // Each partition's deliveries in log order (the first time each arrived).
    let mut firsts: Vec<(u32, u64)> = Vec::new();
    for r in receiver.received().iter().filter(|r| r.ok) {
        let id = r.header(DELIVERY_ID_HEADER).trim_start_matches("crm:").to_string();
        let mut parts = id.split('-').map(|x| x.parse::<u64>().unwrap());
        let (p, o) = (parts.next().unwrap() as u32, parts.next().unwrap());
        if !firsts.contains(&(p, o)) {
            firsts.push((p, o));
        }
    }
    for p in firsts.iter().map(|(p, _)| *p).collect::<BTreeSet<_>>() {
        let offsets: Vec<u64> = firsts.iter().filter(|(q, _)| *q == p).map(|(_, o)| *o).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "partition {p}: {offsets:?}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_delivery_loses_nothing() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let receiver = Receiver::start(Answer::status(503)).await;
    h.admin().await.configure_webhook(webhook("crm", &receiver.url("/hook"))).await.unwrap();
    traffic(&h, "a").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (dir, clock) = h.stop_for_restart().await;
    receiver.answer(Answer::status(204));
    let h = Harness::start_in(dir, clock, |_| {}).await;
    traffic(&h, "b").await;
    assert_eq!(until_delivered(&receiver, 32).await.len(), 32);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_with_a_bad_url_or_a_short_secret_is_refused_naming_the_field() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut admin = h.admin().await;
    let e = admin.configure_webhook(webhook("crm", "ftp://example.com/x")).await.unwrap_err();
    assert_eq!((e.code(), bad_field_of(&e)), (tonic::Code::InvalidArgument, "url".to_string()));
    let short = pb::ConfigureWebhookRequest { secret: "short".into(), ..webhook("crm", "http://127.0.0.1:9/x") };
    let e = admin.configure_webhook(short).await.unwrap_err();
    assert_eq!(bad_field_of(&e), "secret");
    h.stop().await;
}
