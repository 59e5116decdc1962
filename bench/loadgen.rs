//! `points-ledger bench`: a load generator that drives a real gRPC server
//! (its own on the embedded log in a temporary directory, or `--target`).
//! It is a gRPC client, so it speaks tonic directly.
//!
//! Rejections the mix provokes on purpose (spending more than an account
//! holds, refunding a spend twice) are counted apart from errors.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tonic::transport::Channel;
use tonic::Code;

use points_ledger::proto as pb;
use points_ledger::proto::points_ledger_client::PointsLedgerClient;
use points_ledger::proto::programme_admin_client::ProgrammeAdminClient;

/// Latency samples kept per worker at most (beyond it, every other one).
const LATENCY_SAMPLES_PER_WORKER_MAX: usize = 2_000_000;
/// Successful spends a worker remembers for later refunds, at most.
const REFUNDABLE_SPENDS_MAX: usize = 1024;
/// HTTP/2 connections the bench opens to its target at most.
const CONNECTIONS_MAX: usize = 8;

#[derive(Clone, Debug)]
pub struct Options {
    /// `http://HOST:PORT`; None starts a server in a temporary directory.
    pub target: Option<String>,
    pub accounts: u64,
    /// Skew: `(accounts %, traffic %)`, e.g. (20, 80) sends 80 % of the
    /// commands to the first 20 % of the accounts. None: uniform.
    pub hot: Option<(u32, u32)>,
    pub concurrency: usize,
    pub duration_seconds: u64,
    /// Weights by operation: earn, spend, reserve, refund, query.
    pub mix: BTreeMap<String, u32>,
    pub json: Option<std::path::PathBuf>,
    pub seed: u64,
    /// The log of the server the bench starts itself (without `target`).
    pub log: points_ledger::server::LogConfig,
    pub partitions: u32,
    /// Commands per `SubmitBatch` call; 1 sends unary calls.
    pub batch: usize,
    /// Also measure the floors underneath in the same run: gRPC empty calls
    /// on the same server, and the raw log (RocksDB sync WriteBatch for the
    /// embedded log, the plain rdkafka producer for Kafka).
    pub floors: bool,
}

/// How long each floor is measured.
const FLOOR_SECONDS: u64 = 5;
/// The no-database bound runs this long at most.
const FLOOR_NO_DATABASE_SECONDS_MAX: u64 = 10;
/// Records per WriteBatch in the RocksDB floor (the writer's group commit
/// appends batches of about this size under load).
const FLOOR_ROCKSDB_BATCH_RECORDS: usize = 256;
/// Bytes per record in the log floors (a typical encoded earn record).
const FLOOR_RECORD_BYTES: usize = 200;

/// gRPC calls/s of `grpc.health.v1.Health/Check` (no body to speak of, no
/// storage) at `concurrency` over the same connections as the load.
async fn grpc_empty_call_floor(connections: &[Channel], concurrency: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(FLOOR_SECONDS);
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let mut health =
                tonic_health::pb::health_client::HealthClient::new(connections[i % connections.len()].clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await?;
                    n += 1;
                }
                Ok::<u64, tonic::Status>(n)
            })
        })
        .collect();
    let mut calls = 0;
    for t in tasks {
        calls += t.await??;
    }
    Ok(calls as f64 / started.elapsed().as_secs_f64())
}

/// A store floor's signature: directory, duration, rows per batch, bytes per row.
type StoreFloor = fn(&std::path::Path, Duration, usize, usize) -> Result<(u64, Duration), rocksdb::Error>;

/// Rows/s that RocksDB alone takes in WriteBatches of
/// `FLOOR_ROCKSDB_BATCH_RECORDS`, in a temporary directory on the same disk
/// as the bench's own server: `store::sync_write_batch_floor` (the log's
/// synced appends) or `store::random_key_write_floor` (what each row a
/// command writes into a state database costs at least).
fn rocksdb_floor(floor: StoreFloor) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let (rows, took) =
        floor(dir.path(), Duration::from_secs(FLOOR_SECONDS), FLOOR_ROCKSDB_BATCH_RECORDS, FLOOR_RECORD_BYTES)?;
    Ok(rows as f64 / took.as_secs_f64())
}

pub fn parse_mix(s: &str) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut mix = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').with_context(|| format!("mix entry '{part}' is not op=weight"))?;
        if !["earn", "spend", "reserve", "refund", "query", "activity"].contains(&k) {
            anyhow::bail!("unknown mix operation '{k}' (earn, spend, reserve, refund, query, activity)");
        }
        mix.insert(k.to_string(), v.parse().with_context(|| format!("weight of '{k}'"))?);
    }
    if mix.values().sum::<u32>() == 0 {
        anyhow::bail!("the mix needs a positive weight");
    }
    Ok(mix)
}

/// Parses `--hot A/T`: T % of the traffic goes to A % of the accounts.
pub fn parse_hot(s: &str) -> anyhow::Result<(u32, u32)> {
    let (a, t) = s.split_once('/').with_context(|| format!("hot '{s}' is not ACCOUNTS%/TRAFFIC%, e.g. 20/80"))?;
    let a: u32 = a.trim_end_matches('%').parse().with_context(|| format!("accounts share in '{s}'"))?;
    let t: u32 = t.trim_end_matches('%').parse().with_context(|| format!("traffic share in '{s}'"))?;
    if !(1..=99).contains(&a) || !(1..=99).contains(&t) {
        anyhow::bail!("hot shares must be between 1 and 99 percent (got {a}/{t})");
    }
    Ok((a, t))
}

#[derive(Default)]
struct WorkerResult {
    latencies_us: Vec<u32>,
    ok: u64,
    expected_rejections: u64,
    errors: BTreeMap<String, u64>,
}

/// A small deterministic generator (xorshift64*), one per worker.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// An operation drawn from the mix by weight.
fn pick_op<'a>(rng: &mut Rng, ops: &[(&'a str, u32)], total: u32) -> &'a str {
    let mut pick = (rng.next() % u64::from(total)) as u32;
    for (op, w) in ops {
        if pick < *w {
            return op;
        }
        pick -= w;
    }
    "earn"
}

/// The member of the next command: uniform over `accounts`, or skewed by `hot`.
fn pick_member(rng: &mut Rng, opts: &Options) -> u64 {
    let n = opts.accounts.max(1);
    let Some((accounts_pct, traffic_pct)) = opts.hot else { return rng.next() % n };
    let hot = (n * u64::from(accounts_pct) / 100).clamp(1, n);
    if rng.next() % 100 < u64::from(traffic_pct) || hot == n {
        rng.next() % hot
    } else {
        hot + rng.next() % (n - hot)
    }
}

fn account(i: u64) -> Option<pb::AccountKey> {
    Some(pb::AccountKey { tenant_id: "bench".into(), programme_id: "points".into(), member_id: format!("m{i}") })
}

/// A payment of 123.45 yuan on instalments: the bench programme's rules
/// make it 1 point per 10 yuan, doubled, inside a campaign that doubles it.
fn activity(request_id: String, member: u64) -> pb::RecordActivityRequest {
    pb::RecordActivityRequest {
        request_id,
        account: account(member),
        action: "pay".into(),
        amount_minor: 12_345,
        member_type: "personal".into(),
        product_tags: vec!["instalment".into()],
        order_ref: "bench".into(),
        ..Default::default()
    }
}

/// A worker's random source (seeded by the run's seed and its id) and the
/// mix as (operation, weight) with the weights' total.
fn draws(opts: &Options, id: usize) -> (Rng, Vec<(&str, u32)>, u32) {
    let rng = Rng((opts.seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
    let ops: Vec<(&str, u32)> = opts.mix.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let total = ops.iter().map(|(_, w)| w).sum();
    (rng, ops, total)
}

/// Sends `SubmitBatch` calls of `opts.batch` commands drawn from the mix
/// (refunds and queries are drawn as earns: a batch is written blind).
/// Latencies are per call; counts are per command.
async fn batch_worker(
    mut client: PointsLedgerClient<Channel>,
    opts: Arc<Options>,
    run: u64,
    id: usize,
    deadline: Instant,
    done: Arc<AtomicU64>,
) -> WorkerResult {
    use pb::batch_command::Command as C;
    let (mut rng, ops, total) = draws(&opts, id);
    let mut res = WorkerResult::default();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let mut commands = Vec::with_capacity(opts.batch);
        for _ in 0..opts.batch {
            n += 1;
            let op = pick_op(&mut rng, &ops, total);
            let member = pick_member(&mut rng, &opts);
            let request_id = format!("{run:x}-w{id}-{n}");
            commands.push(pb::BatchCommand {
                command: Some(match op {
                    "spend" => C::Spend(pb::SpendRequest {
                        request_id,
                        account: account(member),
                        points: 30,
                        ..Default::default()
                    }),
                    "reserve" => C::Reserve(pb::ReserveRequest {
                        request_id,
                        account: account(member),
                        points: 20,
                        order_ref: "bench".into(),
                        timeout_seconds: 30,
                        ..Default::default()
                    }),
                    "activity" => C::Activity(activity(request_id, member)),
                    _ => C::Earn(pb::EarnRequest {
                        request_id,
                        account: account(member),
                        points: 100,
                        reason: "purchase".into(),
                        ..Default::default()
                    }),
                }),
            });
        }
        let count = commands.len() as u64;
        let started = Instant::now();
        let outcome = client.submit_batch(pb::SubmitBatchRequest { commands }).await;
        let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        if res.latencies_us.len() < LATENCY_SAMPLES_PER_WORKER_MAX {
            res.latencies_us.push(us);
        }
        match outcome {
            Ok(r) => {
                for result in r.into_inner().results {
                    match result.result {
                        Some(pb::batch_result::Result::Reply(_)) => res.ok += 1,
                        Some(pb::batch_result::Result::Error(e))
                            if e.code == Code::FailedPrecondition as i32 || e.code == Code::NotFound as i32 =>
                        {
                            res.expected_rejections += 1
                        }
                        Some(pb::batch_result::Result::Error(e)) => {
                            *res.errors.entry(format!("{:?}", Code::from(e.code))).or_insert(0) += 1
                        }
                        None => *res.errors.entry("Empty".into()).or_insert(0) += 1,
                    }
                }
            }
            Err(s) => *res.errors.entry(format!("{:?}", s.code())).or_insert(0) += count,
        }
        done.fetch_add(count, Ordering::Relaxed);
    }
    res
}

/// Sends one unary call of kind `op` for `member` with request id `rid`;
/// a successful spend is remembered in `spends` for a later refund.
async fn one_call(
    client: &mut PointsLedgerClient<Channel>,
    op: &str,
    member: u64,
    rid: String,
    spends: &mut Vec<(u64, String)>,
) -> Result<(), tonic::Status> {
    match op {
        "earn" => {
            let r = pb::EarnRequest {
                request_id: rid,
                account: account(member),
                points: 100,
                reason: "purchase".into(),
                ..Default::default()
            };
            client.earn(r).await.map(|_| ())
        }
        "spend" => {
            let r = pb::SpendRequest {
                request_id: rid.clone(),
                account: account(member),
                points: 30,
                ..Default::default()
            };
            let answer = client.spend(r).await;
            if answer.is_ok() && spends.len() < REFUNDABLE_SPENDS_MAX {
                spends.push((member, rid));
            }
            answer.map(|_| ())
        }
        "reserve" => {
            let r = pb::ReserveRequest {
                request_id: rid,
                account: account(member),
                points: 20,
                order_ref: "bench".into(),
                timeout_seconds: 30,
                ..Default::default()
            };
            client.reserve(r).await.map(|_| ())
        }
        "activity" => client.record_activity(activity(rid, member)).await.map(|_| ()),
        "refund" => {
            let (m, spend) = spends.pop().expect("refunds only with a spend to refund");
            let r = pb::RefundRequest {
                request_id: rid,
                account: account(m),
                spend_request_id: spend,
                points: 30,
                ..Default::default()
            };
            client.refund(r).await.map(|_| ())
        }
        _ => {
            let r = pb::GetAccountRequest { account: account(member), ..Default::default() };
            client.get_account(r).await.map(|_| ())
        }
    }
}

async fn worker(
    mut client: PointsLedgerClient<Channel>,
    opts: Arc<Options>,
    run: u64,
    id: usize,
    deadline: Instant,
    done: Arc<AtomicU64>,
) -> WorkerResult {
    let (mut rng, ops, total) = draws(&opts, id);
    let mut res = WorkerResult::default();
    let mut spends: Vec<(u64, String)> = Vec::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let op = pick_op(&mut rng, &ops, total);
        // Nothing to refund yet: earn instead.
        let op = if op == "refund" && spends.is_empty() { "earn" } else { op };
        let member = pick_member(&mut rng, &opts);
        let rid = format!("{run:x}-w{id}-{n}");
        let started = Instant::now();
        let outcome = one_call(&mut client, op, member, rid, &mut spends).await;
        let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        if res.latencies_us.len() < LATENCY_SAMPLES_PER_WORKER_MAX || n.is_multiple_of(2) {
            res.latencies_us.push(us);
        }
        match outcome {
            Ok(()) => res.ok += 1,
            Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => res.expected_rejections += 1,
            Err(s) => *res.errors.entry(format!("{:?}", s.code())).or_insert(0) += 1,
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    res
}

fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// A server the bench started itself: its directory, its stop signal, its task.
type OwnServer = (tempfile::TempDir, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>);

/// The server to drive: `--target`, or one of its own in a temporary
/// directory on the configured log.
async fn start_target(opts: &Options, discard_database_writes: bool) -> anyhow::Result<(String, Option<OwnServer>)> {
    if let Some(t) = &opts.target {
        return Ok((t.clone(), None));
    }
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut config = points_ledger::server::Config::new(dir.path());
    config.log = opts.log.clone();
    config.partitions = opts.partitions;
    config.discard_database_writes = discard_database_writes;
    let task = tokio::spawn(points_ledger::server::run(listener, config, async {
        let _ = rx.await;
    }));
    Ok((url, Some((dir, tx, task))))
}

/// The programme every command of the bench goes to.
async fn configure_programme(channel: Channel) -> anyhow::Result<()> {
    ProgrammeAdminClient::new(channel)
        .configure_programme(pb::ConfigureProgrammeRequest {
            request_id: "bench-programme".into(),
            operator: "bench".into(),
            programme: Some(pb::Programme {
                tenant_id: "bench".into(),
                programme_id: "points".into(),
                points_per_cash_unit: 100,
                validity_days: 365,
                time_zone: "Asia/Shanghai".into(),
                earning_rules: vec![pb::EarningRule {
                    rule_id: "pay".into(),
                    action: "pay".into(),
                    amount_rates: [("*".to_string(), pb::AmountRate { amount_minor: 1_000, points: 1, growth: 1 })]
                        .into(),
                    tag_multipliers_percent: [("instalment".to_string(), 200)].into(),
                    ..Default::default()
                }],
                campaigns: vec![pb::Campaign {
                    campaign_id: "always".into(),
                    starts_at: Some(points_ledger::api::convert::timestamp(0)),
                    ends_at: Some(points_ledger::api::convert::timestamp(253_402_300_799_000)),
                    actions: vec!["pay".into()],
                    multiplier_percent: 200,
                }],
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

/// The floors, in the same run: gRPC empty calls on the same server, and
/// the raw log underneath (on the bench's own server: its disk, or the
/// broker it uses).
async fn measure_floors(
    opts: &Options,
    connections: &[Channel],
    own: bool,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut floors = serde_json::Map::new();
    eprintln!("measuring floors ({FLOOR_SECONDS} s each)...");
    floors.insert(
        "grpc_empty_calls_per_second".into(),
        grpc_empty_call_floor(connections, opts.concurrency).await?.into(),
    );
    match (&opts.log, own) {
        (points_ledger::server::LogConfig::Kafka(k), _) => {
            let k = k.clone();
            let (records, took) = tokio::task::spawn_blocking(move || {
                super::floors::raw_producer_floor(&k, Duration::from_secs(FLOOR_SECONDS), FLOOR_RECORD_BYTES)
            })
            .await??;
            let raw = records as f64 / took.as_secs_f64();
            floors.insert("kafka_raw_producer_records_per_second".into(), raw.into());
        }
        (points_ledger::server::LogConfig::Embedded, true) => {
            let raw = tokio::task::spawn_blocking(|| rocksdb_floor(super::floors::sync_write_batch_floor)).await??;
            floors.insert("rocksdb_sync_write_batch_records_per_second".into(), raw.into());
            let rows = tokio::task::spawn_blocking(|| rocksdb_floor(super::floors::random_key_write_floor)).await??;
            floors.insert("rocksdb_random_key_rows_per_second".into(), rows.into());
            floors.insert("no_database_commands_per_second".into(), no_database_floor(opts).await?.into());
        }
        // The target's disk is not ours to measure.
        (points_ledger::server::LogConfig::Embedded, false) => {}
    }
    floors.insert("record_bytes".into(), FLOOR_RECORD_BYTES.into());
    floors.insert("rocksdb_batch_records".into(), FLOOR_ROCKSDB_BATCH_RECORDS.into());
    eprintln!("floors: {}", serde_json::Value::Object(floors.clone()));
    Ok(floors)
}

/// The same load against a server of the bench's own whose writers,
/// projectors and books write nothing to their databases (the log is still
/// appended and synced): what storage still costs, as a ratio.
async fn no_database_floor(opts: &Options) -> anyhow::Result<f64> {
    let seconds = opts.duration_seconds.min(FLOOR_NO_DATABASE_SECONDS_MAX);
    eprintln!("measuring the no-database bound ({seconds} s)...");
    let (target, own) = start_target(opts, true).await?;
    let channel = Channel::from_shared(target.clone())?.connect().await?;
    points_ledger::server::wait_serving(channel.clone(), Duration::from_secs(60)).await?;
    configure_programme(channel.clone()).await?;
    let mut connections = vec![channel];
    for _ in 1..opts.concurrency.clamp(1, CONNECTIONS_MAX) {
        connections.push(Channel::from_shared(target.clone())?.connect().await?);
    }
    let floor_opts = Arc::new(Options { duration_seconds: seconds, json: None, ..opts.clone() });
    let (all, elapsed) = drive(floor_opts, &connections).await?;
    if let Some((dir, tx, task)) = own {
        let _ = tx.send(());
        task.await??;
        drop(dir);
    }
    let total = all.ok + all.expected_rejections + all.errors.values().sum::<u64>();
    Ok(total as f64 / elapsed)
}

/// Runs the workers until the deadline, printing progress every second, and
/// gathers what they saw. Returns it with the time it took.
async fn drive(opts: Arc<Options>, connections: &[Channel]) -> anyhow::Result<(WorkerResult, f64)> {
    let done = Arc::new(AtomicU64::new(0));
    // Part of every request id, so runs against the same server never reuse
    // one (a reused id with other content is answered ALREADY_EXISTS).
    let run = chrono::Utc::now().timestamp_millis() as u64;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(opts.duration_seconds);
    let workers: Vec<_> = (0..opts.concurrency)
        .map(|i| {
            let client = PointsLedgerClient::new(connections[i % connections.len()].clone())
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            if opts.batch > 1 {
                tokio::spawn(batch_worker(client, opts.clone(), run, i, deadline, done.clone()))
            } else {
                tokio::spawn(worker(client, opts.clone(), run, i, deadline, done.clone()))
            }
        })
        .collect();
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprintln!("[{:>4.0}s] {} commands, {} /s", started.elapsed().as_secs_f64(), now, now - last);
                last = now;
            }
        })
    };
    let mut all = WorkerResult::default();
    for w in workers {
        let r = w.await?;
        all.latencies_us.extend(r.latencies_us);
        all.ok += r.ok;
        all.expected_rejections += r.expected_rejections;
        for (k, v) in r.errors {
            *all.errors.entry(k).or_insert(0) += v;
        }
    }
    progress.abort();
    all.latencies_us.sort_unstable();
    Ok((all, started.elapsed().as_secs_f64()))
}

/// The run's figures, as printed and written with `--json`.
fn figures(
    opts: &Options,
    target: &str,
    own: bool,
    floors: serde_json::Map<String, serde_json::Value>,
    all: &WorkerResult,
    elapsed: f64,
) -> serde_json::Value {
    let total = all.ok + all.expected_rejections + all.errors.values().sum::<u64>();
    serde_json::json!({
        "target": match (own, &opts.log) {
            (false, _) => target.to_string(),
            (true, points_ledger::server::LogConfig::Embedded) => "own server (embedded log, temp dir)".to_string(),
            (true, points_ledger::server::LogConfig::Kafka(k)) => format!("own server (kafka {} topic {})", k.brokers, k.topic),
        },
        "floors": floors,
        "accounts": opts.accounts,
        "hot": opts.hot.map(|(a, t)| format!("{t}% of commands to {a}% of accounts")),
        "concurrency": opts.concurrency,
        "batch": opts.batch,
        "latency_unit": if opts.batch > 1 { "SubmitBatch call" } else { "command" },
        "duration_seconds": elapsed,
        "mix": opts.mix,
        "commands": total,
        "commands_per_second": total as f64 / elapsed,
        "p50_ms": percentile_ms(&all.latencies_us, 0.50),
        "p99_ms": percentile_ms(&all.latencies_us, 0.99),
        "p999_ms": percentile_ms(&all.latencies_us, 0.999),
        "ok": all.ok,
        "expected_rejections": all.expected_rejections,
        "errors": all.errors,
    })
}

/// The whole bench: start (or reach) the server, configure the programme,
/// measure the floors if asked, drive the load, report.
pub async fn run(opts: Options) -> anyhow::Result<serde_json::Value> {
    let (target, own) = start_target(&opts, false).await?;
    // A cluster's instances: connections spread over them.
    let targets: Vec<&str> = target.split(',').collect();
    let mut first = Vec::new();
    for t in &targets {
        let c = Channel::from_shared(t.to_string())?.connect().await.with_context(|| format!("connecting to {t}"))?;
        points_ledger::server::wait_serving(c.clone(), Duration::from_secs(60)).await?;
        first.push(c);
    }
    configure_programme(first[0].clone()).await?;
    if targets.len() > 1 {
        // Every instance reads the programme from the control stream.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Several HTTP/2 connections, so one connection's window is not the limit.
    let mut connections = first;
    for i in connections.len()..opts.concurrency.clamp(1, CONNECTIONS_MAX).max(targets.len()) {
        connections.push(Channel::from_shared(targets[i % targets.len()].to_string())?.connect().await?);
    }
    let floors =
        if opts.floors { measure_floors(&opts, &connections, own.is_some()).await? } else { serde_json::Map::new() };
    let opts = Arc::new(opts);
    let (all, elapsed) = drive(opts.clone(), &connections).await?;
    let figures = figures(&opts, &target, own.is_some(), floors, &all, elapsed);
    println!("{}", serde_json::to_string_pretty(&figures)?);
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)?;
    }
    if let Some((dir, tx, task)) = own {
        let _ = tx.send(());
        task.await??;
        drop(dir);
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(accounts: u64, hot: Option<(u32, u32)>) -> Options {
        Options {
            target: None,
            accounts,
            hot,
            concurrency: 1,
            duration_seconds: 1,
            mix: parse_mix("earn=1").unwrap(),
            json: None,
            seed: 3,
            log: points_ledger::server::LogConfig::Embedded,
            partitions: 1,
            batch: 1,
            floors: false,
        }
    }

    #[test]
    fn hot_traffic_goes_to_the_hot_accounts_in_the_asked_share() {
        let opts = options(1_000, Some((20, 80)));
        let (mut rng, _, _) = draws(&opts, 0);
        let draws = 100_000;
        let picks: Vec<u64> = (0..draws).map(|_| pick_member(&mut rng, &opts)).collect();
        assert!(picks.iter().all(|&m| m < 1_000));
        let hot = picks.iter().filter(|&&m| m < 200).count();
        assert!((78_000..82_000).contains(&hot), "{hot} of {draws} went to the hot 20 %");
        // Every account is still drawn, hot or not.
        let distinct: std::collections::BTreeSet<u64> = picks.into_iter().collect();
        assert_eq!(distinct.len(), 1_000);
    }

    #[test]
    fn mixes_and_hot_shares_parse() {
        assert!(parse_mix("fly=1").is_err());
        assert_eq!(parse_hot("20/80").unwrap(), (20, 80));
        assert!(parse_hot("0/80").is_err());
        assert!(parse_hot("20").is_err());
    }

    #[test]
    fn uniform_traffic_spreads_evenly() {
        let opts = options(1_000, None);
        let (mut rng, _, _) = draws(&opts, 1);
        let low = (0..100_000).filter(|_| pick_member(&mut rng, &opts) < 200).count();
        assert!((18_500..21_500).contains(&low), "{low}");
    }
}
