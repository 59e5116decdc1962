//! Crash safety: a child `points-ledger serve` is killed with SIGKILL in the
//! middle of a load. After a restart no acknowledged command is lost, none is
//! applied twice, and retries with the same request ids are answered
//! `replayed = true`, and the views equal a replay from offset zero. Under
//! `POINTS_LEDGER_TEST_LOG=kafka` the same runs on a real broker (tansu).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{account, earn, programme};
use points_ledger::proto as pb;
use points_ledger::proto::points_ledger_client::PointsLedgerClient;
use points_ledger::proto::programme_admin_client::ProgrammeAdminClient;

const MEMBERS: usize = 6;
const WORKERS: usize = 6;
/// Acknowledged commands before the kill.
const ACKED_BEFORE_KILL: usize = 300;
/// Commands one worker sends at most.
const COMMANDS_PER_WORKER_MAX: usize = 5_000;

/// `--log ...` arguments: the embedded log, or Kafka on the test's broker.
fn log_args(broker: &Option<common::broker::Tansu>) -> Vec<String> {
    match broker {
        None => vec!["--log".into(), "embedded".into(), "--partitions".into(), "2".into()],
        Some(b) => [
            "--log",
            "kafka",
            "--kafka-allow-low-replication",
            "--partitions",
            "2",
            "--kafka-topic",
            "crash",
            "--kafka-brokers",
            &b.bootstrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    }
}

/// A served child process, SIGKILLed if the test ends (or fails) with it
/// still running: an orphan would keep the suite's output pipe open.
struct Server(Child);

impl Server {
    fn id(&self) -> u32 {
        self.0.id()
    }

    fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// How long a retry of `UNAVAILABLE` goes on: on Kafka a restarted instance
/// may find its dead predecessor still in the group until the session
/// timeout passes and the partitions move (`PARTITION_MOVING`).
const UNAVAILABLE_RETRY_FOR: Duration = Duration::from_secs(120);

/// `Earn`, retried with the same request id while the answer is
/// `UNAVAILABLE` (what a caller does), up to [`UNAVAILABLE_RETRY_FOR`].
async fn earn_retrying(
    c: &mut PointsLedgerClient<tonic::transport::Channel>,
    id: &str,
    member: usize,
) -> pb::CommandReply {
    let started = std::time::Instant::now();
    loop {
        match c.earn(earn(id, &format!("m{member}"), 1)).await {
            Ok(r) => return r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable && started.elapsed() < UNAVAILABLE_RETRY_FOR => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{id}: {s:?}"),
        }
    }
}

fn spawn_server(dir: &std::path::Path, log: &[String]) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_points-ledger"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(log)
        .arg("--data-dir")
        .arg(dir)
        // POINTS_LEDGER_TEST_SERVER_LOG=debug (say) to see more of a failure.
        .env("RUST_LOG", std::env::var("POINTS_LEDGER_TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start points-ledger");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(line.contains("listening on"), "unexpected first line: {line}");
    (Server(child), format!("http://{addr}"))
}

async fn connect(url: &str) -> PointsLedgerClient<tonic::transport::Channel> {
    for _ in 0..100 {
        if let Ok(c) = tonic::transport::Channel::from_shared(url.to_string()).unwrap().connect().await {
            points_ledger::server::wait_serving(c.clone(), Duration::from_secs(60)).await.unwrap();
            return PointsLedgerClient::new(c);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {url} did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_nothing_acknowledged_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::broker::kafka_suite().then(|| common::broker::Tansu::start(&dir.path().join("tansu")));
    let log = log_args(&broker);
    let data = dir.path().join("data");
    let (mut child, url) = spawn_server(&data, &log);
    let mut admin = ProgrammeAdminClient::connect(url.clone()).await.unwrap();
    admin
        .configure_programme(pb::ConfigureProgrammeRequest {
            request_id: "cfg".into(),
            programme: Some(programme()),
            operator: "ops".into(),
        })
        .await
        .unwrap();

    // (member, request id) of every command sent, and of those acknowledged.
    let sent: Arc<Mutex<BTreeSet<(usize, String)>>> = Default::default();
    let acked: Arc<Mutex<BTreeSet<(usize, String)>>> = Default::default();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (sent, acked, url) = (sent.clone(), acked.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&url).await;
            for i in 0..COMMANDS_PER_WORKER_MAX {
                let member = (w + i) % MEMBERS;
                let id = format!("w{w}-{i}");
                sent.lock().unwrap().insert((member, id.clone()));
                match c.earn(earn(&id, &format!("m{member}"), 1)).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert((member, id));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Up to 30 s: CI machines may be slow.
    for _ in 0..3000 {
        if acked.lock().unwrap().len() >= ACKED_BEFORE_KILL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let sent = sent.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= ACKED_BEFORE_KILL, "only {} acknowledged", acked.len());

    let (mut child, url) = spawn_server(&data, &log);
    let mut c = connect(&url).await;
    // Before any retry: every acknowledged command is there.
    let mut last_position: BTreeMap<usize, pb::LogPosition> = BTreeMap::new();
    for (member, id) in &acked {
        let r = earn_retrying(&mut c, id, *member).await;
        assert!(r.replayed, "acknowledged {id} was lost");
        let p = r.position.unwrap();
        let e = last_position.entry(*member).or_insert(p);
        if p.offset > e.offset {
            *e = p;
        }
    }
    // Retry the rest: each lands once, whether or not it made it before.
    for (member, id) in sent.difference(&acked) {
        let r = earn_retrying(&mut c, id, *member).await;
        let p = r.position.unwrap();
        let e = last_position.entry(*member).or_insert(p);
        if p.offset > e.offset {
            *e = p;
        }
    }
    for member in 0..MEMBERS {
        let expected = sent.iter().filter(|(m, _)| *m == member).count() as i64;
        let a = c
            .get_account(pb::GetAccountRequest {
                account: account(&format!("m{member}")),
                min_position: last_position.get(&member).copied(),
                as_of: None,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(a.available, expected, "member m{member}: every distinct request exactly once");
        let entries = c
            .list_entries(pb::ListEntriesRequest {
                account: account(&format!("m{member}")),
                page_size: 500,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let ids: BTreeSet<_> = entries.entries.iter().map(|e| e.request_id.clone()).collect();
        assert_eq!(ids.len(), entries.entries.len(), "no request applied twice");
    }
    // A clean stop after the restart.
    unsafe { libc_kill(child.id() as i32, 15) };
    let status = child.wait().unwrap();
    assert!(status.success(), "clean shutdown on SIGTERM: {status:?}");
    // The views equal a replay from offset zero.
    let out = Command::new(env!("CARGO_BIN_EXE_points-ledger"))
        .arg("verify")
        .args(&log)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("byte-identical"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    drop(broker);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Rounds of the kill loop: each kills the server at a pseudo-random moment
/// of a load (between some append and the checkpoint after it, mostly).
const KILL_ROUNDS: usize = 20;

/// The commands of one round: (member, request id) sent and acknowledged.
type Round = (BTreeSet<(usize, String)>, BTreeSet<(usize, String)>);

/// Runs `WORKERS` workers against `url` until `after` passes, then SIGKILLs
/// the server; returns what was sent and what was acknowledged.
async fn load_then_kill(child: &mut Server, url: &str, round: usize, after: Duration) -> Round {
    // The clock starts once the server serves (on Kafka it claims first).
    drop(connect(url).await);
    let sent: Arc<Mutex<BTreeSet<(usize, String)>>> = Default::default();
    let acked: Arc<Mutex<BTreeSet<(usize, String)>>> = Default::default();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (sent, acked, url) = (sent.clone(), acked.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            // The server serves already; it may be killed before this connects.
            let Ok(mut c) = PointsLedgerClient::connect(url).await else { return };
            for i in 0..COMMANDS_PER_WORKER_MAX {
                let member = (w + i + round) % MEMBERS;
                let id = format!("r{round}-w{w}-{i}");
                sent.lock().unwrap().insert((member, id.clone()));
                match c.earn(earn(&id, &format!("m{member}"), 1)).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert((member, id));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(after).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let sent = sent.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    (sent, acked)
}

/// After a restart: every acknowledged command of `round` is answered
/// `replayed`, and the rest land once when retried.
async fn check_and_retry(url: &str, round: usize, (sent, acked): &Round) {
    let mut c = connect(url).await;
    for (member, id) in acked {
        let r = earn_retrying(&mut c, id, *member).await;
        assert!(r.replayed, "round {round}: acknowledged {id} was lost");
    }
    for (member, id) in sent.difference(acked) {
        earn_retrying(&mut c, id, *member).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_kills_at_random_points_lose_nothing_acknowledged_and_double_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::broker::kafka_suite().then(|| common::broker::Tansu::start(&dir.path().join("tansu")));
    let log = log_args(&broker);
    let data = dir.path().join("data");
    let (mut child, url) = spawn_server(&data, &log);
    ProgrammeAdminClient::connect(url.clone())
        .await
        .unwrap()
        .configure_programme(pb::ConfigureProgrammeRequest {
            request_id: "cfg".into(),
            programme: Some(programme()),
            operator: "ops".into(),
        })
        .await
        .unwrap();
    let mut url = url;
    let mut all_sent: BTreeSet<(usize, String)> = BTreeSet::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..KILL_ROUNDS {
        // xorshift: a kill 20..420 ms into the load, the same every run.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let after = Duration::from_millis(20 + x % 400);
        let done = load_then_kill(&mut child, &url, round, after).await;
        eprintln!("round {round}: killed after {after:?}, {} sent, {} acknowledged", done.0.len(), done.1.len());
        all_sent.extend(done.0.iter().cloned());
        (child, url) = spawn_server(&data, &log);
        check_and_retry(&url, round, &done).await;
    }
    let mut c = connect(&url).await;
    for member in 0..MEMBERS {
        let expected = all_sent.iter().filter(|(m, _)| *m == member).count() as i64;
        // A retry of any command reads the account as of its record: wait
        // for the views to have everything folded.
        let mut available = -1;
        for _ in 0..200 {
            let a = c
                .get_account(pb::GetAccountRequest { account: account(&format!("m{member}")), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            available = a.available;
            if available == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(available, expected, "member m{member}: every distinct request exactly once");
    }
    unsafe { libc_kill(child.id() as i32, 15) };
    assert!(child.wait().unwrap().success());
    let out = Command::new(env!("CARGO_BIN_EXE_points-ledger"))
        .arg("verify")
        .args(&log)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("byte-identical"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    drop(broker);
}
