//! A hostile or damaged log on a real Kafka-protocol broker (tansu, started
//! and stopped here): a producer of the test's own writes garbage, a record
//! for another partition's account and a record that would break its
//! account into the topic of a running service. The service keeps serving
//! those partitions, and after a restart health says SERVING and commands
//! succeed (issue 30, defect 4).

use crate::common;

use std::time::Duration;

use common::broker::Tansu;
use common::hostile::*;
use common::*;
use points_ledger::clock::ManualClock;
use points_ledger::log::kafka::KafkaConfig;
use points_ledger::server::{Config, LogConfig};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tonic::Code;

const TOPIC: &str = "hostile";
/// How long the test's producer waits for the broker to take its record.
const PRODUCE_TIMEOUT_MS: u64 = 30_000;
/// Times a command is sent again (same request id, as a client would)
/// while the service answers UNAVAILABLE, at most.
const RETRIES_MAX: usize = 60;
const RETRY_WAIT_MS: u64 = 500;

fn tune(bootstrap: &str) -> impl FnOnce(&mut Config) + '_ {
    move |c| {
        c.partitions = PARTITIONS;
        let mut k = KafkaConfig::new(bootstrap, TOPIC, PARTITIONS);
        k.append_timeout = Duration::from_millis(2000);
        k.request_timeout = Duration::from_millis(2000);
        c.log = LogConfig::Kafka(k);
    }
}

/// Produces `payload` into `partition` of the topic, as any client of the
/// broker could.
fn produce(bootstrap: &str, partition: u32, payload: &[u8]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", PRODUCE_TIMEOUT_MS.to_string())
        .create()
        .unwrap();
    producer
        .send(BaseRecord::to(TOPIC).partition(partition as i32).key("hostile").payload(payload))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_millis(PRODUCE_TIMEOUT_MS)).unwrap();
}

/// Earns until answered (the same request id each time, as a client
/// retries an UNAVAILABLE); the available balance after it.
async fn earn_answered(h: &Harness, id: &str, member: &str, points: i64) -> i64 {
    let mut last = String::new();
    for _ in 0..RETRIES_MAX {
        match h.ledger().await.earn(earn(id, member, points)).await {
            Ok(r) => return r.into_inner().balance.unwrap().available,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                last = e.message().to_string();
                tokio::time::sleep(Duration::from_millis(RETRY_WAIT_MS)).await;
            }
        }
    }
    panic!("{id} was never answered: {last}");
}

/// A service on the broker where ann, bob (ann's partition) and cy
/// (another) earned 100 each; then what `hostile` makes (given the log) is
/// produced into ann's partition. ann's next earn is answered, everyone's
/// balance is as before; after a restart health says SERVING and commands
/// are answered. Returns the record's offset.
async fn keeps_serving_after(hostile: impl FnOnce(&dyn points_ledger::log::EventLog) -> Vec<u8>) {
    let Some(_) = common::broker::available() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(&dir.path().join("tansu"));
    let bootstrap = broker.bootstrap();
    let h = Harness::start_in(tempfile::tempdir().unwrap(), ManualClock::new(T0), tune(&bootstrap)).await;
    configure(&h, programme()).await;
    let (bob, cy) = (member_where("ann", true), member_where("ann", false));
    for m in ["ann", &bob, &cy] {
        earn_answered(&h, &format!("before-{m}"), m, 100).await;
    }
    let payload = hostile(h.events.as_ref());
    tokio::task::block_in_place(|| produce(&bootstrap, partition_of("ann"), &payload));
    assert_eq!(earn_answered(&h, "after", "ann", 50).await, 150);
    assert_eq!(available(&h, &cy).await, 100, "nothing in ann's partition counts for cy");
    assert_eq!(earn_answered(&h, "after-bob", &bob, 1).await, 101);
    assert_eq!(earn_answered(&h, "after-cy", &cy, 1).await, 101);
    assert_eq!(health(&h, "").await, SERVING);

    let (data, clock) = h.stop().await;
    let started = Harness::start_in(data, clock, tune(&bootstrap));
    let h = tokio::time::timeout(Duration::from_secs(START_DEADLINE_SECS), started)
        .await
        .expect("the service starts again on the log");
    assert_eq!(health(&h, "").await, SERVING);
    assert_eq!(health(&h, "points.v1.PointsLedger").await, SERVING);
    assert_eq!(earn_answered(&h, "after-restart", "ann", 1).await, 151);
    h.stop().await;
    broker.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_produced_into_a_partition_leaves_it_serving() {
    keeps_serving_after(|_| garbage()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_produced_for_another_partitions_account_leaves_it_serving() {
    keeps_serving_after(|log| forged(&member_where("ann", false), epoch_of(log, partition_of("ann")), earned(1_000)))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_produced_that_would_break_its_account_leaves_it_serving() {
    keeps_serving_after(|log| forged("ann", epoch_of(log, partition_of("ann")), spend_from_nowhere(60))).await;
}
