//! The feed: a subscriber sees every item once, in log order per
//! partition, resumes from the positions it saw, is cut off when it stops
//! taking items (and resumes), and filters by programme and event type.
//! On Kafka too (`scripts/test` runs it again there).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use pb::feed_client::FeedClient;
use points_ledger::proto as pb;
use tonic::transport::Channel;

async fn feed(h: &Harness) -> FeedClient<Channel> {
    FeedClient::connect(h.url()).await.unwrap()
}

fn subscribe(from: Vec<pb::LogPosition>) -> pb::SubscribeRequest {
    pb::SubscribeRequest { tenant_id: "shop".into(), programme_id: "points".into(), from, ..Default::default() }
}

/// Takes `n` items (waiting up to 20 s for each).
async fn take(stream: &mut tonic::Streaming<pb::FeedItem>, n: usize) -> Vec<pb::FeedItem> {
    let mut items = Vec::new();
    while items.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(20), stream.message()).await;
        items.push(next.expect("an item within 20 s").unwrap().expect("the stream goes on"));
    }
    items
}

/// The last position seen in each partition.
fn last_positions(items: &[pb::FeedItem]) -> Vec<pb::LogPosition> {
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for i in items {
        let p = i.position.unwrap();
        last.insert(p.partition, p.offset);
    }
    last.into_iter().map(|(partition, offset)| pb::LogPosition { partition, offset }).collect()
}

/// Offsets come in order within each partition.
fn in_order(items: &[pb::FeedItem]) -> bool {
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    items.iter().all(|i| {
        let p = i.position.unwrap();
        let ok = last.get(&p.partition).is_none_or(|o| *o <= p.offset);
        last.insert(p.partition, p.offset);
        ok
    })
}

/// Eight members earn and spend: 16 events.
async fn traffic(h: &Harness, round: &str) {
    let mut c = h.ledger().await;
    for m in 0..8 {
        let member = format!("m{m}");
        c.earn(earn(&format!("{round}-e{m}"), &member, 100)).await.unwrap();
        c.spend(spend(&format!("{round}-s{m}"), &member, 10)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_from_its_positions_and_sees_every_item_once_in_order() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    traffic(&h, "a").await;
    let mut stream = feed(&h).await.subscribe(subscribe(Vec::new())).await.unwrap().into_inner();
    let first = take(&mut stream, 16).await;
    drop(stream);
    assert!(in_order(&first));
    let types: BTreeSet<&str> = first.iter().map(|i| i.r#type.as_str()).collect();
    assert_eq!(types, BTreeSet::from(["PointsEarned", "PointsSpent"]));
    let body: serde_json::Value = serde_json::from_str(&first[0].json).unwrap();
    assert_eq!((body["id"].as_str(), body["specversion"].as_str()), (Some(first[0].id.as_str()), Some("1.0")));

    traffic(&h, "b").await;
    let resume_from = last_positions(&first);
    let mut stream = feed(&h).await.subscribe(subscribe(resume_from.clone())).await.unwrap().into_inner();
    // The record at each position again, then the new round.
    let second = take(&mut stream, 16 + resume_from.len()).await;
    assert!(in_order(&second));
    let ids: BTreeSet<&str> = first.iter().chain(&second).map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), 32, "every item, each under one id");
    let again: Vec<_> = second.iter().filter(|i| !i.json.contains("\"b-")).collect();
    assert_eq!(again.len(), resume_from.len(), "only the records at the positions given come again");
    // Nothing more comes.
    assert!(tokio::time::timeout(Duration::from_millis(500), stream.message()).await.is_err());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_taking_items_is_cut_off_and_resumes_from_its_position() {
    let h = Harness::start_with(|c| c.limits.feed_stall = Duration::from_millis(300)).await;
    configure(&h, programme()).await;
    let commands: Vec<pb::BatchCommand> = (0..1000)
        .map(|i| pb::BatchCommand {
            command: Some(pb::batch_command::Command::Earn(earn(&format!("e{i}"), &format!("m{}", i % 50), 1))),
        })
        .collect();
    let mut c = h.ledger().await;
    for round in 0..4 {
        let batch: Vec<_> = commands
            .iter()
            .map(|b| {
                let mut b = b.clone();
                if let Some(pb::batch_command::Command::Earn(e)) = &mut b.command {
                    e.request_id = format!("{round}-{}", e.request_id);
                }
                b
            })
            .collect();
        c.submit_batch(pb::SubmitBatchRequest { commands: batch }).await.unwrap();
    }
    // A client with small HTTP/2 windows: what it does not read stays at the server.
    let channel = tonic::transport::Endpoint::from_shared(h.url())
        .unwrap()
        .initial_stream_window_size(Some(16 << 10))
        .initial_connection_window_size(Some(16 << 10))
        .connect()
        .await
        .unwrap();
    let mut stream = FeedClient::new(channel).subscribe(subscribe(Vec::new())).await.unwrap().into_inner();
    let mut seen = take(&mut stream, 1).await;
    // The subscriber takes nothing for a while: its buffer fills (on a
    // Kafka-protocol test broker the reading alone takes a few seconds) and
    // stays full.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let cut = loop {
        let next = tokio::time::timeout(Duration::from_secs(20), stream.message()).await;
        match next.unwrap_or_else(|_| panic!("the stream stalled after {} items", seen.len())) {
            Ok(Some(item)) => seen.push(item),
            Ok(None) => panic!("the stream ended without a status after {} items", seen.len()),
            Err(status) => break status,
        }
    };
    assert_eq!(cut.code(), tonic::Code::ResourceExhausted);
    assert_eq!(reason_of(&cut), "SUBSCRIBER_TOO_SLOW");
    assert!(seen.len() < 4000, "cut off before the end");
    let resume_from = last_positions(&seen);
    let mut stream = feed(&h).await.subscribe(subscribe(resume_from.clone())).await.unwrap().into_inner();
    let rest = take(&mut stream, 4000 - seen.len() + resume_from.len()).await;
    let ids: BTreeSet<&str> = seen.iter().chain(&rest).map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), 4000);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_sends_only_its_programmes_events_of_the_types_asked() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    configure(&h, pb::Programme { programme_id: "coins".into(), ..programme() }).await;
    let mut c = h.ledger().await;
    let coins = pb::EarnRequest {
        account: Some(pb::AccountKey { programme_id: "coins".into(), ..account("m1").unwrap() }),
        ..earn("c1", "m1", 5)
    };
    c.earn(coins).await.unwrap();
    traffic(&h, "a").await;
    let r = pb::SubscribeRequest { event_types: vec!["PointsSpent".into()], ..subscribe(Vec::new()) };
    let mut stream = feed(&h).await.subscribe(r).await.unwrap().into_inner();
    let items = take(&mut stream, 8).await;
    assert!(items.iter().all(|i| i.r#type == "PointsSpent" && i.account.as_ref().unwrap().programme_id == "points"));
    assert!(tokio::time::timeout(Duration::from_millis(500), stream.message()).await.is_err());
    let bad = pb::SubscribeRequest { event_types: vec!["PointsMinted".into()], ..subscribe(Vec::new()) };
    let e = feed(&h).await.subscribe(bad).await.unwrap_err();
    assert_eq!((e.code(), bad_field_of(&e)), (tonic::Code::InvalidArgument, "event_types".to_string()));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_now_sends_only_what_is_committed_after_the_subscription() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    traffic(&h, "a").await;
    let r = pb::SubscribeRequest { from_now: true, ..subscribe(Vec::new()) };
    let mut stream = feed(&h).await.subscribe(r).await.unwrap().into_inner();
    traffic(&h, "b").await;
    let items = take(&mut stream, 16).await;
    assert!(items.iter().all(|i| i.json.contains("\"b-")));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_programme_wide_alert_is_an_event_of_the_feed_raised_once() {
    let h = Harness::start().await;
    let risk = pb::RiskRules { issuance_spike_percent: 300, issuance_spike_min_points: 100, ..Default::default() };
    configure(&h, pb::Programme { risk: Some(risk), ..programme() }).await;
    traffic(&h, "a").await;
    let r = pb::SubscribeRequest { event_types: vec!["AlertRaised".into()], ..subscribe(Vec::new()) };
    let mut stream = feed(&h).await.subscribe(r.clone()).await.unwrap().into_inner();
    let item = take(&mut stream, 1).await.remove(0);
    let partitions = h.events.partitions();
    assert_eq!(item.position.unwrap().partition, partitions, "the control stream's lane");
    assert_eq!(item.account.as_ref().unwrap().member_id, "");
    let body: serde_json::Value = serde_json::from_str(&item.json).unwrap();
    assert_eq!(body["data"]["rule"].as_str(), Some("issuance_spike"));
    // A few looks of the raiser later, still one.
    drop(stream);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut stream = feed(&h).await.subscribe(r).await.unwrap().into_inner();
    take(&mut stream, 1).await;
    assert!(tokio::time::timeout(Duration::from_millis(500), stream.message()).await.is_err(), "raised once");
    h.stop().await;
}
