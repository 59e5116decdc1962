//! Criterion benches of the hot paths: decide + apply, record encode/decode,
//! the projection fold into RocksDB, and the check a record read from the
//! log passes before it is applied. Run: `cargo bench --bench ledger`.

// The allocator the service runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use points_ledger::domain::{decide, Account, AccountKey, Command, CommandBody, Programme};
use points_ledger::log::arbiter::{Arbiter, Home};
use points_ledger::log::codec;
use points_ledger::log::record::AccountRecord;
use points_ledger::log::LogEntry;
use points_ledger::projection::{fold, ViewCache};
use points_ledger::store::{self, Db};

/// Accounts the live fold keeps decoded (about what a writer kept of 100,000 members).
const LIVE_CACHE_ACCOUNTS: usize = 25_000;

const T0: i64 = 1_773_100_800_000;

fn earn(i: u64) -> CommandBody {
    CommandBody::Earn {
        points: 10 + (i % 50) as i64,
        reason: "purchase".into(),
        order_ref: None,
        growth: 1,
        expires_at: None,
    }
}

/// A realistic mix on one account: earns, then spends across lots.
fn commands(n: u64) -> Vec<Command> {
    let account = AccountKey::new("shop", "points", "m1");
    (0..n)
        .map(|i| Command {
            request_id: format!("r{i}"),
            account: account.clone(),
            body: if i % 4 == 3 {
                CommandBody::Spend { points: 20, order_ref: None, order_cash_amount: None }
            } else {
                earn(i)
            },
            context: Default::default(),
        })
        .collect()
}

fn record(i: u64, account: &AccountKey, events: Vec<points_ledger::domain::Event>) -> AccountRecord {
    AccountRecord {
        epoch: 0,
        request_id: format!("r{i}"),
        account: account.clone(),
        programme_version: 1,
        at: T0 + i as i64,
        fingerprint: i,
        system: false,
        events,
        context: Default::default(),
        cap_mode: Default::default(),
    }
}

fn bench_decide_apply(c: &mut Criterion) {
    let programme = Programme::example("shop", "points");
    let cmds = commands(1000);
    let mut g = c.benchmark_group("domain");
    g.throughput(Throughput::Elements(cmds.len() as u64));
    g.bench_function("decide+apply 1000 commands on one account", |b| {
        b.iter(|| {
            let mut a = Account::default();
            for (i, cmd) in cmds.iter().enumerate() {
                if let Ok(events) = decide(Some(&programme), &a, cmd, T0 + i as i64) {
                    events.iter().for_each(|e| a.apply(e));
                }
            }
            black_box(a.available())
        })
    });
    g.finish();
}

fn bench_codec(c: &mut Criterion) {
    let account = AccountKey::new("shop", "points", "m1");
    let rec = record(
        7,
        &account,
        vec![points_ledger::domain::Event::PointsSpent {
            spend_id: "s1".into(),
            order_ref: Some("o-1".into()),
            points: 120,
            lots: vec![
                points_ledger::domain::LotAmount::new("e1", 100),
                points_ledger::domain::LotAmount::new("e2", 20),
            ],
            order_cash_minor: 0,
        }],
    );
    let bytes = codec::encode_account_record(&rec);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode record", |b| b.iter(|| black_box(codec::encode_account_record(black_box(&rec)))));
    g.bench_function("decode record", |b| {
        b.iter(|| black_box(codec::decode_account_record(black_box(&bytes)).unwrap()))
    });
    // An account's row (as the writers keep and store a small one), after
    // a few commands and after a hundred.
    for n in [4, 100] {
        let a = after(n);
        let row = store::snapshot::encode_account(&a);
        g.bench_function(format!("encode account after {n} commands"), |b| {
            b.iter(|| black_box(store::snapshot::encode_account(black_box(&a))))
        });
        g.bench_function(format!("decode account after {n} commands"), |b| {
            b.iter(|| black_box(store::snapshot::decode_account(black_box(&row)).unwrap()))
        });
    }
    g.finish();
}

/// An account after `n` of [`commands`].
fn after(n: u64) -> Account {
    let programme = Programme::example("shop", "points");
    let mut a = Account::default();
    for (i, cmd) in commands(n).iter().enumerate() {
        if let Ok(events) = decide(Some(&programme), &a, cmd, T0 + i as i64) {
            events.iter().for_each(|e| a.apply(e));
        }
    }
    a
}

/// A log of `records` commands over `accounts` members (three earns to one
/// spend), each decided against the state the earlier ones left.
fn log_of(records: u64, accounts: u64) -> Vec<LogEntry> {
    let programme = Programme::example("shop", "points");
    let mut state: std::collections::HashMap<u64, Account> = Default::default();
    (0..records)
        .map(|i| {
            let m = (i.wrapping_mul(2_654_435_761)) % accounts;
            let account = AccountKey::new("shop", "points", &format!("m{m}"));
            let a = state.entry(m).or_default();
            let body = if i % 4 == 3 && a.available() >= 20 {
                CommandBody::Spend { points: 20, order_ref: None, order_cash_amount: None }
            } else {
                earn(i)
            };
            let cmd =
                Command { request_id: format!("r{i}"), account: account.clone(), body, context: Default::default() };
            let events = decide(Some(&programme), a, &cmd, T0 + i as i64).unwrap();
            events.iter().for_each(|e| a.apply(e));
            LogEntry { offset: i, payload: codec::encode_account_record(&record(i, &account, events)) }
        })
        .collect()
}

/// The writers' fold in steady state: successive batches of one long log
/// folded into the same views database (a fresh one, untimed, whenever the
/// log runs out), with the writers' cache of decoded accounts (a
/// partition's default: the log's 20,000 members fit, as a partition's
/// active members do in service).
fn bench_projection(c: &mut Criterion) {
    let log = log_of(400_000, 20_000);
    let mut g = c.benchmark_group("projection");
    g.sample_size(20);
    for batch in [256usize, 4096] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("fold + write, batches of {batch} records"), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut at = log.len();
                let mut state = None;
                for _ in 0..iters {
                    if at + batch > log.len() {
                        let dir = tempfile::tempdir().unwrap();
                        let db = Db::open(dir.path(), store::VIEW_CFS).unwrap();
                        state = Some((dir, db, ViewCache::live(LIVE_CACHE_ACCOUNTS), Arbiter::default()));
                        at = 0;
                    }
                    let (_, db, cache, arbiter) = state.as_mut().unwrap();
                    let started = Instant::now();
                    let changes =
                        fold(db, Home { partition: 0, partitions: 1 }, arbiter, &log[at..at + batch], cache).unwrap();
                    db.write(changes).unwrap();
                    timed += started.elapsed();
                    at += batch;
                }
                timed
            })
        });
    }
    g.finish();
}

/// What the check every reader makes before `apply` (`domain::admissible`)
/// adds to folding a record: the projection's log decoded, folded into its
/// accounts in memory with `apply` alone, and with the check first.
fn bench_admissible(c: &mut Criterion) {
    let records: Vec<AccountRecord> =
        log_of(100_000, 5_000).iter().map(|e| codec::decode_account_record(&e.payload).unwrap()).collect();
    let mut g = c.benchmark_group("admissible");
    g.sample_size(20);
    g.throughput(Throughput::Elements(records.len() as u64));
    for check in [false, true] {
        let name = if check { "check + apply, 100,000 records" } else { "apply, 100,000 records" };
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut accounts: std::collections::HashMap<&AccountKey, Account> = Default::default();
                for r in &records {
                    let a = accounts.entry(&r.account).or_default();
                    if check {
                        points_ledger::domain::admissible(a, &r.events).unwrap();
                    }
                    r.events.iter().for_each(|e| a.apply(e));
                }
                black_box(accounts.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_decide_apply, bench_codec, bench_projection, bench_admissible);
criterion_main!(benches);
