//! A seeded workload drives the real writers and projectors (embedded log,
//! RocksDB) and compares every answer with a small independent model of each
//! account's available, reserved and debt. Then: the ledger invariants hold
//! in every view, and rebuilding the views from offset zero gives
//! byte-identical views. Under `POINTS_LEDGER_TEST_LOG=kafka` the same runs
//! over Kafka on a real broker (tansu), one fresh topic per case.

use std::collections::BTreeMap;
use std::sync::Arc;

use points_ledger::clock::{Clock, ManualClock};
use points_ledger::domain::{AccountKey, Activity, Command, CommandBody, Event, ReleaseCause};
use points_ledger::log::arbiter::{Admitted, Arbiter, Home};
use points_ledger::log::kafka::KafkaConfig;
use points_ledger::projection::{rebuild, Until};
use points_ledger::proto as pb;
use points_ledger::server::{open_logs, Config, LogConfig, Service};
use points_ledger::store::{self, Cf, Db};
use points_ledger::writer::WriteError;
use proptest::prelude::*;

const MEMBERS: u8 = 3;
const T0: i64 = 1_773_100_800_000;

#[derive(Clone, Debug)]
enum Op {
    Earn {
        m: u8,
        points: i64,
        expires_in_hours: Option<u8>,
    },
    Spend {
        m: u8,
        points: i64,
    },
    Reserve {
        m: u8,
        points: i64,
        timeout_minutes: u8,
    },
    Capture {
        m: u8,
        which: u8,
        points: Option<i64>,
    },
    Release {
        m: u8,
        which: u8,
    },
    Refund {
        m: u8,
        which: u8,
        points: i64,
    },
    Reverse {
        m: u8,
        which: u8,
        points: i64,
    },
    Adjust {
        m: u8,
        points: i64,
    },
    ExpireAll {
        m: u8,
    },
    Advance {
        minutes: u16,
    },
    Retry {
        back: u8,
    },
    /// `login` (+1, three a day) or `reported` (−12) under the earning rules.
    Activity {
        m: u8,
        penalty: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let m = 0..MEMBERS;
    let pts = 1i64..400;
    prop_oneof![
        4 => (m.clone(), pts.clone(), prop::option::of(1u8..72)).prop_map(|(m, points, e)| Op::Earn { m, points, expires_in_hours: e }),
        3 => (m.clone(), pts.clone()).prop_map(|(m, points)| Op::Spend { m, points }),
        2 => (m.clone(), pts.clone(), 1u8..120).prop_map(|(m, points, t)| Op::Reserve { m, points, timeout_minutes: t }),
        2 => (m.clone(), any::<u8>(), prop::option::of(pts.clone())).prop_map(|(m, which, points)| Op::Capture { m, which, points }),
        1 => (m.clone(), any::<u8>()).prop_map(|(m, which)| Op::Release { m, which }),
        2 => (m.clone(), any::<u8>(), pts.clone()).prop_map(|(m, which, points)| Op::Refund { m, which, points }),
        1 => (m.clone(), any::<u8>(), pts.clone()).prop_map(|(m, which, points)| Op::Reverse { m, which, points }),
        1 => (m.clone(), -200i64..200).prop_map(|(m, points)| Op::Adjust { m, points: if points == 0 { 1 } else { points } }),
        1 => m.clone().prop_map(|m| Op::ExpireAll { m }),
        2 => (1u16..3000).prop_map(|minutes| Op::Advance { minutes }),
        1 => any::<u8>().prop_map(|back| Op::Retry { back }),
        2 => (m.clone(), any::<bool>()).prop_map(|(m, penalty)| Op::Activity { m, penalty }),
    ]
}

/// The independent model of one account.
#[derive(Default, Debug)]
struct Model {
    available: i64,
    reserved: i64,
    debt: i64,
    /// Earned and not reversed, less spent and not refunded, less expired,
    /// plus adjustments: what conservation says the member is worth.
    net: i64,
    /// Open reservations: id → held.
    holds: BTreeMap<String, i64>,
    /// Spends and captures: id → still refundable.
    spends: BTreeMap<String, i64>,
    /// Earns: id → still reversible.
    earns: BTreeMap<String, i64>,
    /// Logins on (day, count).
    logins: (i64, u32),
}

impl Model {
    /// Expiries and timeouts are the one thing the model takes from the
    /// events: when lots run out depends on which lots paid.
    fn settle_due(&mut self, events: &[Event]) {
        for e in events {
            match e {
                Event::PointsExpired { points, .. } => {
                    self.available -= points;
                    self.net -= points;
                }
                Event::ReservationReleased { reservation_id, points, cause: ReleaseCause::TimedOut, .. } => {
                    self.holds.remove(reservation_id);
                    self.reserved -= points;
                    self.credit(*points);
                }
                _ => {}
            }
        }
    }

    /// Points that come in or come back repay debt first.
    fn credit(&mut self, points: i64) {
        let repaid = points.min(self.debt);
        self.debt -= repaid;
        self.available += points - repaid;
    }
}

fn pick(map: &BTreeMap<String, i64>, which: u8) -> Option<String> {
    (!map.is_empty()).then(|| map.keys().nth(which as usize % map.len()).unwrap().clone())
}

fn key(m: u8) -> AccountKey {
    AccountKey::new("shop", "points", &format!("m{m}"))
}

use crate::common::broker;

static CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn run(ops: Vec<Op>, cache_bytes: usize, kafka: Option<&str>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let mut config = Config::new(dir.path());
        config.partitions = 2;
        config.account_cache_bytes = cache_bytes;
        config.clock = clock.clone() as Arc<dyn Clock>;
        config.writer.tick_interval_ms = 3_600_000; // ticks only when the test asks
        if let Some(bootstrap) = kafka {
            let topic = format!("model-{}", CASE.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
            config.log = LogConfig::Kafka(KafkaConfig::new(bootstrap, &topic, 2));
        }
        let logs = tokio::task::block_in_place(|| open_logs(&config)).unwrap();
        let events_log = logs.events.clone();
        let service = Service::start(&config, logs).unwrap();
        service.ready().await;
        let ledger = service.ledger.clone();
        let p = pb::Programme {
            tenant_id: "shop".into(),
            programme_id: "points".into(),
            points_per_cash_unit: 100,
            validity_days: 2,
            clawback_policy: pb::ClawbackPolicy::AllowDebt as i32,
            earning_rules: vec![
                pb::EarningRule {
                    rule_id: "login".into(),
                    action: "login".into(),
                    points: 1,
                    daily_count_max: 3,
                    ..Default::default()
                },
                pb::EarningRule {
                    rule_id: "reported".into(),
                    action: "reported".into(),
                    points: -12,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        ledger
            .programmes
            .configure("cfg", "ops", "", points_ledger::api::validate::programme(&p).unwrap(), 1, T0)
            .unwrap();

        let mut models: BTreeMap<u8, Model> = (0..MEMBERS).map(|m| (m, Model::default())).collect();
        let mut history: Vec<(Command, points_ledger::log::record::Reply)> = Vec::new();
        let mut cursors = [0u64; 2];
        let mut arbiters: [Arbiter; 2] = Default::default();
        for (n, op) in ops.into_iter().enumerate() {
            let id = format!("r{n}");
            let (m, body) = match &op {
                Op::Advance { minutes } => {
                    clock.advance(i64::from(*minutes) * 60_000);
                    ledger.writers.tick().await;
                    // What the scheduler settled by itself, the model learns from the log.
                    for (p, from) in cursors.iter_mut().enumerate() {
                        let end = events_log.end_offset(p as u32).unwrap();
                        let mut reader = events_log.reader(p as u32, *from).unwrap();
                        let mut entries = Vec::new();
                        loop {
                            let batch = points_ledger::log::read_towards(reader.as_mut(), end, 100_000).unwrap();
                            if batch.is_empty() {
                                break;
                            }
                            entries.extend(batch);
                        }
                        *from = reader.position();
                        for e in entries {
                            let home = Home { partition: p as u32, partitions: 2 };
                            let Admitted::Record(r) = arbiters[p].admit_bytes(&e.payload, home) else { continue };
                            if r.system {
                                let m: u8 = r.account.member_id[1..].parse().unwrap();
                                models.get_mut(&m).unwrap().settle_due(&r.events);
                            }
                        }
                    }
                    continue;
                }
                Op::Retry { back } => {
                    if history.is_empty() {
                        continue;
                    }
                    let (cmd, first) = history[history.len() - 1 - (*back as usize % history.len())].clone();
                    if first.events.is_empty() {
                        // It changed nothing and wrote no record: a retry is decided again.
                        continue;
                    }
                    let again = ledger.writers.submit(cmd).await.expect("a retry of an accepted command");
                    prop_assert!(again.replayed);
                    prop_assert_eq!(again.position, first.position);
                    continue;
                }
                Op::Earn { m, points, expires_in_hours } => (
                    *m,
                    CommandBody::Earn {
                        points: *points,
                        reason: "purchase".into(),
                        order_ref: None,
                        growth: 0,
                        expires_at: expires_in_hours.map(|h| clock.now() + i64::from(h) * 3_600_000),
                    },
                ),
                Op::Spend { m, points } => {
                    (*m, CommandBody::Spend { points: *points, order_ref: None, order_cash_amount: None })
                }
                Op::Reserve { m, points, timeout_minutes } => (
                    *m,
                    CommandBody::Reserve {
                        points: *points,
                        order_ref: "o".into(),
                        timeout_seconds: i64::from(*timeout_minutes) * 60,
                        order_cash_amount: None,
                    },
                ),
                Op::Capture { m, which, points } => {
                    let Some(r) = pick(&models[m].holds, *which) else { continue };
                    (*m, CommandBody::Capture { reservation_id: r, points: *points })
                }
                Op::Release { m, which } => {
                    let Some(r) = pick(&models[m].holds, *which) else { continue };
                    (*m, CommandBody::Release { reservation_id: r })
                }
                Op::Refund { m, which, points } => {
                    let Some(s) = pick(&models[m].spends, *which) else { continue };
                    (*m, CommandBody::Refund { spend_id: s, points: *points })
                }
                Op::Reverse { m, which, points } => {
                    let Some(e) = pick(&models[m].earns, *which) else { continue };
                    (*m, CommandBody::ReverseEarn { earn_id: e, points: *points, growth: 0 })
                }
                Op::Adjust { m, points } => {
                    (*m, CommandBody::Adjust { points: *points, operator: "ops".into(), reason: "fix".into() })
                }
                Op::ExpireAll { m } => (
                    *m,
                    CommandBody::Expire { all_points: true, reason: "recycle".into(), operator: "risk-ops".into() },
                ),
                Op::Activity { m, penalty } => (
                    *m,
                    CommandBody::RecordActivity(Activity {
                        action: if *penalty { "reported" } else { "login" }.into(),
                        ..Default::default()
                    }),
                ),
            };
            let cmd =
                Command { request_id: id.clone(), account: key(m), body: body.clone(), context: Default::default() };
            let outcome = ledger.writers.submit(cmd.clone()).await;
            let model = models.get_mut(&m).unwrap();
            match outcome {
                Err(WriteError::Rejected(r)) => {
                    // A rejection must be one the model can explain (before due
                    // expiries, which a rejection does not write).
                    let ok = match &body {
                        CommandBody::Spend { points, .. } | CommandBody::Reserve { points, .. } => {
                            *points > model.available
                        }
                        CommandBody::Adjust { points, .. } => -points > model.available,
                        // Beyond the hold, or the hold timed out meanwhile.
                        CommandBody::Capture { .. } | CommandBody::Release { .. } => true,
                        CommandBody::Refund { spend_id, points } => *points > model.spends[spend_id],
                        CommandBody::ReverseEarn { earn_id, points, .. } => *points > model.earns[earn_id],
                        _ => false,
                    };
                    prop_assert!(ok, "unexpected rejection {:?} of {:?} with model {:?}", r, body, model);
                }
                Err(other) => prop_assert!(false, "{other:?}"),
                Ok(reply) => {
                    prop_assert!(!reply.replayed);
                    if !matches!(body, CommandBody::Expire { .. }) {
                        model.settle_due(&reply.events);
                    }
                    model.net += match &body {
                        CommandBody::Earn { points, .. } | CommandBody::Refund { points, .. } => *points,
                        CommandBody::Adjust { points, .. } => *points,
                        CommandBody::Spend { points, .. } | CommandBody::ReverseEarn { points, .. } => -points,
                        CommandBody::Capture { reservation_id, points } => {
                            -points.unwrap_or(model.holds[reservation_id])
                        }
                        CommandBody::Expire { .. } => -reply
                            .events
                            .iter()
                            .map(|e| if let Event::PointsExpired { points, .. } = e { *points } else { 0 })
                            .sum::<i64>(),
                        CommandBody::RecordActivity(a) if a.action == "reported" => -12,
                        CommandBody::RecordActivity(_) => {
                            let day = clock.now().div_euclid(86_400_000);
                            let (d, n) = model.logins;
                            let n = if d == day { n } else { 0 };
                            model.logins = (day, n + 1);
                            i64::from(n < 3)
                        }
                        _ => 0,
                    };
                    match &body {
                        CommandBody::Earn { points, .. } => {
                            model.credit(*points);
                            model.earns.insert(id.clone(), *points);
                        }
                        CommandBody::Spend { points, .. } => {
                            prop_assert!(*points <= model.available);
                            model.available -= points;
                            model.spends.insert(id.clone(), *points);
                        }
                        CommandBody::Reserve { points, .. } => {
                            prop_assert!(*points <= model.available);
                            model.available -= points;
                            model.reserved += points;
                            model.holds.insert(id.clone(), *points);
                        }
                        CommandBody::Capture { reservation_id, points } => {
                            let held = model.holds.remove(reservation_id).unwrap();
                            let captured = points.unwrap_or(held);
                            prop_assert!(captured <= held);
                            model.reserved -= held;
                            model.credit(held - captured);
                            model.spends.insert(id.clone(), captured);
                        }
                        CommandBody::Release { reservation_id } => {
                            let held = model.holds.remove(reservation_id).unwrap();
                            model.reserved -= held;
                            model.credit(held);
                        }
                        CommandBody::Refund { spend_id, points } => {
                            *model.spends.get_mut(spend_id).unwrap() -= points;
                            model.credit(*points);
                        }
                        CommandBody::ReverseEarn { earn_id, points, .. } => {
                            *model.earns.get_mut(earn_id).unwrap() -= points;
                            let taken = (*points).min(model.available);
                            model.available -= taken;
                            model.debt += points - taken;
                        }
                        CommandBody::RecordActivity(a) if a.action == "reported" => {
                            let taken = 12.min(model.available);
                            model.available -= taken;
                            model.debt += 12 - taken;
                        }
                        CommandBody::RecordActivity(_) if reply.granted > 0 => {
                            model.credit(reply.granted);
                            model.earns.insert(id.clone(), reply.granted);
                        }
                        CommandBody::Adjust { points, .. } if *points > 0 => model.credit(*points),
                        CommandBody::Adjust { points, .. } => model.available += points,
                        CommandBody::Expire { .. } => {
                            // Released holds repay debt first; the rest expires.
                            model.debt -= model.reserved.min(model.debt);
                            model.available = 0;
                            model.reserved = 0;
                            model.holds.clear();
                        }
                        _ => {}
                    }
                    let b = reply.balance;
                    // Money is conserved, and nothing reversed or refunded
                    // is spendable: what the member can spend never exceeds
                    // what they are worth.
                    prop_assert_eq!(b.available + b.reserved - b.debt, model.net, "conservation after {:?}", body);
                    prop_assert!(b.available <= model.net.max(0), "{} spendable, worth {}", b.available, model.net);
                    prop_assert_eq!(
                        (b.available, b.reserved, b.debt),
                        (model.available, model.reserved, model.debt),
                        "after {:?}",
                        body
                    );
                    history.push((cmd, reply));
                }
            }
        }

        // Views catch up with the log; then stop.
        let ends: Vec<u64> = (0..2).map(|p| events_log.end_offset(p).unwrap()).collect();
        let mut positions = ledger.positions.clone();
        tokio::time::timeout(std::time::Duration::from_secs(20), positions.wait_for(|v| v == &ends))
            .await
            .unwrap()
            .unwrap();
        drop(ledger);
        tokio::task::spawn_blocking(move || service.stop()).await.unwrap();

        let live = Db::open(&dir.path().join("views"), store::VIEW_CFS).unwrap();
        for m in 0..MEMBERS {
            let (a, _) = points_ledger::store::accounts::load(&live, Cf::Accounts, &key(m)).unwrap();
            prop_assert_eq!(a.check_invariants_fully(), Ok(()));
            let model = &models[&m];
            prop_assert_eq!((a.available(), a.reserved(), a.debt), (model.available, model.reserved, model.debt));
        }
        let rebuilt_dir = tempfile::tempdir().unwrap();
        let (rebuilt, _) = rebuild(events_log.as_ref(), rebuilt_dir.path(), Until::default(), |_| {}).unwrap();
        let views = store::VIEW_DIGEST_CFS;
        prop_assert_eq!(rebuilt.digest_of(views).unwrap(), live.digest_of(views).unwrap());
        Ok(())
    })
}

fn op_sequences() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..80)
}

/// What the writers may keep between batches: the default, or so little
/// that they let members go after most batches (decoded ones to a row,
/// rows to the store) and read them back.
fn cache_budgets() -> impl Strategy<Value = usize> {
    prop_oneof![Just(points_ledger::writer::WRITER_CACHE_BYTES), Just(2 << 10), Just(1 << 10)]
}

#[test]
fn the_ledger_agrees_with_the_model_and_replays_to_identical_views() {
    let dir = tempfile::tempdir().unwrap();
    // On Kafka each case is slower (topic creation, read-back): fewer cases.
    let broker = broker::kafka_suite().then(|| broker::Tansu::start(&dir.path().join("tansu")));
    let cases = if broker.is_some() { 12 } else { 48 };
    let config = ProptestConfig { cases, max_shrink_iters: 200, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let bootstrap = broker.as_ref().map(|b| b.bootstrap());
    let result = runner.run(&(op_sequences(), cache_budgets()), |(ops, cache)| run(ops, cache, bootstrap.as_deref()));
    drop(broker);
    if let Err(e) = result {
        panic!("{e}");
    }
}
