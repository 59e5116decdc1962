//! The Kafka log on a real Kafka-protocol broker (tansu, started and stopped
//! here) and on librdkafka's mock cluster (for faults on cue): writers
//! arbitrated by the log, broker outages, partition-count checks.

use crate::common;

use std::time::Duration;

use common::broker::Tansu;
use common::*;
use points_ledger::clock::ManualClock;
use points_ledger::log::kafka::{KafkaConfig, KafkaLog, MockBroker};
use points_ledger::log::EventLog;
use points_ledger::proto as pb;
use points_ledger::server::LogConfig;
use points_ledger::store;
use points_ledger::tools::audit;
use tonic::Code;

fn kafka(bootstrap: &str, topic: &str, partitions: u32) -> KafkaConfig {
    let mut k = KafkaConfig::new(bootstrap, topic, partitions);
    k.append_timeout = Duration::from_millis(2000);
    k.request_timeout = Duration::from_millis(2000);
    k
}

async fn balance(h: &Harness, member: &str, at: Option<pb::LogPosition>) -> i64 {
    h.ledger()
        .await
        .get_account(pb::GetAccountRequest {
            account: account(member),
            min_position: at,
            as_of: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .available
}

/// Retries a command with the same request id until it is answered, as a
/// client would; the retries are bounded. Err: the last UNAVAILABLE message.
async fn try_earn_until_ok(h: &Harness, id: &str, member: &str, points: i64) -> Result<pb::CommandReply, String> {
    let mut last = String::new();
    for _ in 0..60 {
        match h.ledger().await.earn(earn(id, member, points)).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                last = e.message().to_string();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(last)
}

async fn earn_until_ok(h: &Harness, id: &str, member: &str, points: i64) -> pb::CommandReply {
    try_earn_until_ok(h, id, member, points).await.unwrap_or_else(|last| panic!("{id} never succeeded: {last}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_broker_going_down_gives_unavailable_then_the_service_recovers() {
    let broker = MockBroker::start(&[("m", 2), ("m-control", 1)]).unwrap();
    let servers = broker.bootstrap_servers();
    let h = Harness::start_with(|c| {
        c.partitions = 2;
        c.log = LogConfig::Kafka(kafka(&servers, "m", 2));
    })
    .await;
    configure(&h, programme()).await;
    earn_until_ok(&h, "e1", "ann", 100).await;

    broker.down().unwrap();
    let before = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(60), async {
        h.ledger().await.earn(earn("e2", "ann", 50)).await.unwrap_err()
    })
    .await
    .expect("a command must not hang while the broker is down");
    assert_eq!((err.code(), reason_of(&err).as_str()), (Code::Unavailable, "UNAVAILABLE"), "{err:?}");
    eprintln!("UNAVAILABLE after {:?} with the broker down", before.elapsed());

    broker.up().unwrap();
    let r = earn_until_ok(&h, "e2", "ann", 50).await;
    // Landed exactly once, whether the first try reached the log or not.
    assert_eq!(r.balance.unwrap().available, 150);
    assert_eq!(balance(&h, "ann", r.position).await, 150);
    let again = h.ledger().await.earn(earn("e2", "ann", 50)).await.unwrap().into_inner();
    assert!(again.replayed);
    h.stop().await;
}

#[test]
fn a_topic_with_another_partition_count_is_refused() {
    let Some(_) = common::broker::available() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(dir.path());
    let log = KafkaLog::open(kafka(&broker.bootstrap(), "counted", 2)).unwrap();
    assert_eq!(log.partitions(), 2);
    drop(log);
    let err = KafkaLog::open(kafka(&broker.bootstrap(), "counted", 3)).err().expect("refused");
    let message = err.to_string();
    assert!(message.contains("has 2 partitions but 3 are configured"), "{message}");
    // A tool that must not create topics says the topic is missing.
    let mut k = kafka(&broker.bootstrap(), "absent", 2);
    k.create_topics = false;
    assert!(KafkaLog::open(k).err().expect("refused").to_string().contains("does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_claim_wins_and_every_reader_agrees() {
    let Some(_) = common::broker::available() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(&dir.path().join("tansu"));
    let log = kafka(&broker.bootstrap(), "race", 2);
    let a = Harness::start_in(tempfile::tempdir().unwrap(), ManualClock::new(T0), |c| {
        c.partitions = 2;
        c.log = LogConfig::Kafka(log.clone());
        // No ticks: only its appends tell it it was taken over.
        c.writer.tick_interval_ms = 3_600_000;
    })
    .await;
    configure(&a, programme()).await;
    let first = earn_until_ok(&a, "a1", "kim", 100).await;
    assert!(first.position.is_some());

    // A second instance takes over every partition.
    let b = Harness::start_in(tempfile::tempdir().unwrap(), ManualClock::new(T0), |c| {
        c.partitions = 2;
        c.log = LogConfig::Kafka(log.clone());
    })
    .await;
    // (The first instance's ticks would find the newer claims by themselves;
    // this test wants its first append to find them.)
    let records_before = a.records();
    // The first writer still believes it owns kim's partition: its append is
    // void, it sees the newer claim when reading back, and says so.
    let err = a.ledger().await.earn(earn("a2", "kim", 7)).await.unwrap_err();
    assert_eq!((err.code(), common::reason_of(&err).as_str()), (Code::Unavailable, "PARTITION_MOVING"), "{err:?}");
    assert!(err.message().contains("newer writer"), "{}", err.message());
    assert!(a.records() > records_before, "the void record is in the log");
    // It has stopped writing that partition: a command sent to it goes to
    // the new owner (whose claim names its address), and its answer comes back.
    let via_a = a.ledger().await.earn(earn("a3", "kim", 1)).await.unwrap().into_inner();
    assert_eq!(via_a.balance.unwrap().available, 101, "decided by the new owner, which knows a1");
    // And learns of the other partition's takeover the same way; from then
    // on it follows both (its views stay current).
    let kims =
        points_ledger::log::record::partition_for(&points_ledger::domain::AccountKey::new("shop", "points", "kim"), 2);
    let other = (0..).map(|i| format!("m{i}")).find(|m| {
        points_ledger::log::record::partition_for(&points_ledger::domain::AccountKey::new("shop", "points", m), 2)
            != kims
    });
    let err = a.ledger().await.earn(earn("a4", &other.unwrap(), 1)).await.unwrap_err();
    assert!(err.message().contains("newer writer"), "{}", err.message());

    // The new owner knows everything acknowledged before, and nothing void.
    let r = earn_until_ok(&b, "b1", "kim", 10).await;
    assert_eq!(r.balance.unwrap().available, 111);
    let replay = b.ledger().await.earn(earn("a1", "kim", 100)).await.unwrap().into_inner();
    assert!(replay.replayed, "a1 was acknowledged by the first writer and is known to the second");
    // a2 was never acknowledged: the new owner decides it afresh.
    let r = earn_until_ok(&b, "a2", "kim", 7).await;
    assert!(!r.replayed);
    let end = r.position;

    // Every reader agrees: both instances' projectors, and a replay from zero.
    assert_eq!(balance(&b, "kim", end).await, 118);
    assert_eq!(balance(&a, "kim", end).await, 118);
    let events = a.events.clone();
    let (dir_a, _) = a.stop().await;
    let (dir_b, _) = b.stop().await;
    let views_a = audit::open_views_read_only(dir_a.path()).unwrap();
    let views_b = audit::open_views_read_only(dir_b.path()).unwrap();
    for p in 0..2 {
        assert_eq!(store::read_cursor(&views_a, p).unwrap(), store::read_cursor(&views_b, p).unwrap());
    }
    let views = store::VIEW_DIGEST_CFS;
    assert_eq!(views_a.digest_of(views).unwrap(), views_b.digest_of(views).unwrap());
    let (_, difference) = audit::verify(events.as_ref(), &views_b).unwrap();
    assert_eq!(difference, None);
}

enum Outage {
    /// SIGSTOP: connections stay open and nothing answers, the harshest kind
    /// of slow; then SIGCONT.
    Hang,
    /// SIGTERM, then a new broker process on the same port and storage.
    Restart,
}

/// The real broker hangs or stops: the command gets UNAVAILABLE in bounded
/// time, nothing half-written; when the broker is back the service recovers
/// by itself and the client's retry (same request id) lands exactly once.
async fn real_broker_outage(outage: Outage) {
    let Some(_) = common::broker::available() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker_dir = dir.path().join("tansu");
    let mut broker = Tansu::start(&broker_dir);
    let log = kafka(&broker.bootstrap(), "outage", 2);
    let h = Harness::start_in(tempfile::tempdir().unwrap(), ManualClock::new(T0), |c| {
        c.partitions = 2;
        c.log = LogConfig::Kafka(log.clone());
    })
    .await;
    configure(&h, programme()).await;
    let o1 = earn_until_ok(&h, "o1", "lee", 100).await;
    // The views have folded o1 before the outage: tansu 0.6.0 no longer
    // serves records written before its restart (see below).
    assert_eq!(balance(&h, "lee", o1.position).await, 100);

    match outage {
        Outage::Hang => broker.pause(),
        Outage::Restart => broker.stop(),
    }
    let err = tokio::time::timeout(Duration::from_secs(60), async {
        h.ledger().await.earn(earn("o2", "lee", 5)).await.unwrap_err()
    })
    .await
    .expect("a command must not hang while the broker does");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let broker = match outage {
        Outage::Hang => {
            broker.resume();
            broker
        }
        Outage::Restart => Tansu::start_on(&broker_dir, broker.port()),
    };

    let r = try_earn_until_ok(&h, "o2", "lee", 5)
        .await
        .unwrap_or_else(|last| panic!("o2 never succeeded ({last}); broker log:\n{}", broker.log_tail()));
    assert_eq!(r.balance.unwrap().available, 105, "o2 landed exactly once");
    // The projector's consumer reconnects on its own backoff (librdkafka's,
    // up to 10 s), maybe after the writer's: ask again while the view is
    // behind, as a client would, for at most 60 s.
    let mut tries = 0;
    let seen = loop {
        let reply = h
            .ledger()
            .await
            .get_account(pb::GetAccountRequest {
                account: account("lee"),
                min_position: r.position,
                as_of: None,
                ..Default::default()
            })
            .await;
        match reply {
            Ok(a) => break a.into_inner().available,
            Err(e) if e.code() == Code::Unavailable && tries < 12 => tries += 1,
            Err(e) => panic!("the view never reached o2: {e:?}"),
        }
    };
    assert_eq!(seen, 105);
    let again = earn_until_ok(&h, "o2", "lee", 5).await;
    assert!(again.replayed && again.balance.unwrap().available == 105, "a retry is the original answer");
    broker.assert_alive();
    let events = h.events.clone();
    let (data, _) = h.stop().await;
    let views = audit::open_views_read_only(data.path()).unwrap();
    match outage {
        Outage::Hang => assert_eq!(audit::verify(events.as_ref(), &views).unwrap().1, None),
        // tansu 0.6.0 keeps the records written before its restart in its
        // sqlite file but no longer serves them: a fetch from offset 0
        // answers from the first offset written after the restart. The
        // readers refuse that gap ("records are missing from the log")
        // rather than skip it, so a replay from zero cannot be compared
        // here; the hang case above compares it.
        Outage::Restart => {
            let err = audit::verify(events.as_ref(), &views).map(|(_, d)| d).unwrap_err().to_string();
            assert!(err.contains("records are missing"), "{err}");
        }
    }
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_real_broker_gives_unavailable_and_the_service_recovers() {
    real_broker_outage(Outage::Hang).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_real_broker_gives_unavailable_and_the_service_recovers() {
    real_broker_outage(Outage::Restart).await;
}

/// Appends that outlast their deadline while the broker hangs, on several
/// partitions at once, leave the broker serving, and once it is back every
/// partition takes appends again. (librdkafka never times a message out
/// itself: a timed-out message makes its idempotent producer bump its own
/// epoch, and tansu 0.6.0 panics on a produce that carries an epoch it did
/// not hand out, then answers nothing. Seen when a frozen instance thawed;
/// this test does not reproduce that race on cue, it guards the shape.)
#[test]
fn appends_timing_out_in_a_broker_hang_leave_the_broker_serving() {
    use points_ledger::log::LogRecord;
    use std::sync::Arc;
    let Some(_) = common::broker::available() else { return };
    const PARTITIONS: u32 = 4;
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(dir.path());
    let mut k = kafka(&broker.bootstrap(), "hang", PARTITIONS);
    k.append_timeout = Duration::from_millis(300);
    k.request_timeout = Duration::from_millis(300);
    let log = Arc::new(KafkaLog::open(k).unwrap());
    let record = |p: u32, i: usize| LogRecord::new(format!("k{p}").into_bytes(), format!("r{i}").into_bytes());
    let append_within = |p: u32, i: usize, within: Duration| {
        let started = std::time::Instant::now();
        while let Err(e) = log.append(p, &[record(p, i)]) {
            broker.assert_alive();
            assert!(started.elapsed() < within, "partition {p} takes no appends: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    for p in 0..PARTITIONS {
        append_within(p, 0, Duration::from_secs(30));
    }
    broker.pause();
    let appenders: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 1..=15 {
                    let _ = log.append(p, &[record(p, i)]);
                    std::thread::sleep(Duration::from_millis(50 + 20 * u64::from(p)));
                }
            })
        })
        .collect();
    // Back soon after the first appends' deadline, while later ones wait.
    std::thread::sleep(Duration::from_millis(450));
    broker.resume();
    for a in appenders {
        a.join().unwrap();
    }
    for p in 0..PARTITIONS {
        append_within(p, 99, Duration::from_secs(30));
    }
    broker.assert_alive();
}

/// Every record's CloudEvents headers (type, id, source, time, content
/// type), as an outside consumer reads them from partition `p`.
fn headers_of(bootstrap: &str, topic: &str, p: i32) -> Vec<std::collections::BTreeMap<String, String>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "outside-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let (_, end) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (out.len() as i64) < end && std::time::Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else { continue };
        let m = m.unwrap();
        let h = m.headers().map(|h| {
            h.iter().map(|x| (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).into())).collect()
        });
        out.push(h.unwrap_or_default());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_consumer_tells_claims_from_account_records_by_their_cloud_events_headers() {
    let Some(_) = common::broker::available() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(&dir.path().join("tansu"));
    let log = kafka(&broker.bootstrap(), "outside", 1);
    let h = Harness::start_in(tempfile::tempdir().unwrap(), ManualClock::new(T0), |c| {
        c.partitions = 1;
        c.log = LogConfig::Kafka(log.clone());
    })
    .await;
    configure(&h, programme()).await;
    earn_until_ok(&h, "e1", "kim", 100).await;
    h.stop().await;
    let records = headers_of(&broker.bootstrap(), "outside", 0);
    let types: Vec<&str> = records.iter().map(|r| r.get("ce_type").map(String::as_str).unwrap_or("")).collect();
    assert_eq!(types, ["points.writer.claim", "points.account.record"], "{records:?}");
    let earned = &records[1];
    assert_eq!(earned["ce_id"], "shop/points/kim/e1");
    assert_eq!(earned["ce_subject"], "shop/points/kim");
    assert_eq!(earned["ce_specversion"], "1.0");
    assert_eq!(earned["ce_source"], "points-ledger/outside");
    assert_eq!(earned["ce_time"], "2026-03-10T00:00:00.000Z");
    assert_eq!(earned["content-type"], "application/protobuf; messageType=points.log.v1.AccountRecord");
}
