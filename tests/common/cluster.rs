//! A cluster for tests: several `points-ledger serve --log kafka` child
//! processes on one topic of a real broker (tansu), each on 127.0.0.1:0
//! with its own data directory, and a load that retries every command with
//! the same request id (on any instance) until it has a definite answer.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use points_ledger::proto as pb;
use points_ledger::proto::cluster_client::ClusterClient;
use points_ledger::proto::points_ledger_client::PointsLedgerClient;
use tonic::transport::Channel;

use super::broker::Tansu;

pub const TOPIC: &str = "cluster";

pub struct Instance {
    pub child: Option<Child>,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub dir: PathBuf,
}

impl Instance {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([sig, &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill {sig} {}", self.pid());
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for the process to end (SIGKILL after 60 s).
    pub fn terminate(&mut self) {
        if let Some(c) = self.child.take() {
            super::broker::terminate(c, Duration::from_secs(60));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped process does not die of SIGKILL before it runs again.
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.kill();
    }
}

pub fn log_flags(broker: &Tansu, partitions: u32) -> Vec<String> {
    ["--log", "kafka", "--kafka-allow-low-replication", "--kafka-topic", TOPIC, "--kafka-brokers", &broker.bootstrap()]
        .iter()
        .map(|s| s.to_string())
        .chain(["--partitions".to_string(), partitions.to_string()])
        .collect()
}

/// Starts an instance in `dir` and returns once it listens.
pub fn spawn(dir: &Path, broker: &Tansu, partitions: u32, extra: &[&str]) -> Instance {
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_points-ledger"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(log_flags(broker, partitions))
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start points-ledger");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("listening on"), "unexpected first line: {line}");
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    Instance { child: Some(child), addr, dir: dir.to_path_buf() }
}

pub async fn channel(url: &str) -> Channel {
    channel_waiting(url, Duration::from_secs(20)).await
}

/// A channel whose calls wait up to `timeout` for their answer.
pub async fn channel_waiting(url: &str, timeout: Duration) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .connect_lazy()
}

pub async fn describe(url: &str) -> Option<pb::DescribeClusterResponse> {
    let mut c = ClusterClient::new(channel(url).await);
    c.describe_cluster(pb::DescribeClusterRequest {}).await.ok().map(|r| r.into_inner())
}

/// Partition → instance address, as one instance's answer says.
pub fn owners(d: &pb::DescribeClusterResponse) -> BTreeMap<u32, String> {
    d.instances.iter().flat_map(|i| i.partitions.iter().map(move |&p| (p, i.address.clone()))).collect()
}

/// Waits (bounded) until every instance in `urls` answers the same
/// ownership, every partition has exactly one owner among `addrs`, each of
/// those owns at least one, and each instance writes what it owns. Returns
/// the ownership, or None at the deadline.
pub async fn settled(
    urls: &[String],
    addrs: &[String],
    partitions: u32,
    within: Duration,
) -> Option<BTreeMap<u32, String>> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(o) = settled_now(urls, addrs, partitions).await {
            return Some(o);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn settled_now(urls: &[String], addrs: &[String], partitions: u32) -> Option<BTreeMap<u32, String>> {
    let mut agreed: Option<BTreeMap<u32, String>> = None;
    for url in urls {
        let d = describe(url).await?;
        let o = owners(&d);
        if o.len() != partitions as usize || !o.values().all(|a| addrs.contains(a)) {
            return None;
        }
        if addrs.iter().any(|a| !o.values().any(|v| v == a)) {
            return None;
        }
        let me = d.instances.iter().find(|i| i.this_instance)?;
        if me.writing != me.partitions || me.state != "SERVING" {
            return None;
        }
        if agreed.as_ref().is_some_and(|a| *a != o) {
            return None;
        }
        agreed = Some(o);
    }
    agreed
}

/// What a load saw: per member the request ids acknowledged and the
/// highest position among them; the answers that were not definite.
#[derive(Default)]
pub struct Seen {
    pub acked: BTreeMap<usize, BTreeSet<String>>,
    pub last_position: BTreeMap<usize, pb::LogPosition>,
    /// Commands that never got a definite answer before the deadline.
    pub undecided: Vec<String>,
    /// Retries (UNAVAILABLE or a lost connection), by reason.
    pub retries: BTreeMap<String, usize>,
    /// Definite errors (there should be none for plain earns).
    pub errors: Vec<String>,
    /// Per acknowledged request id: points granted, how the cap was counted,
    /// and the programme day (`YYYY-MM-DD`).
    pub granted: BTreeMap<String, (i64, i32, String)>,
}

pub struct Load {
    pub seen: Arc<Mutex<Seen>>,
    pub stop: Arc<AtomicBool>,
    pub acked: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Longest a command is retried before the load gives up on it.
const COMMAND_DEADLINE: Duration = Duration::from_secs(90);
/// Longest a whole load runs: after it every command not yet decided is
/// given up at once (a cluster that stopped serving fails the test in
/// minutes, it does not hang it for hours).
const LOAD_DEADLINE: Duration = Duration::from_secs(300);

impl Load {
    /// `workers` tasks, each earning 1 point per command for members
    /// `0..members`, sending each command to the instances in turn and
    /// retrying it (same request id, next instance) until a definite answer;
    /// at most `per_worker` commands each, until `stop`.
    pub fn start(urls: Vec<String>, workers: usize, members: usize, per_worker: usize, tag: &str) -> Load {
        Load::earning(urls, workers, members, per_worker, tag, 1)
    }

    /// [`Load::start`] with `points` per earn.
    pub fn earning(
        urls: Vec<String>,
        workers: usize,
        members: usize,
        per_worker: usize,
        tag: &str,
        points: i64,
    ) -> Load {
        let seen: Arc<Mutex<Seen>> = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let urls = Arc::new(Mutex::new(urls));
        let load_ends = Instant::now() + LOAD_DEADLINE;
        let tasks = (0..workers)
            .map(|w| {
                let (seen, stop, acked, urls) = (seen.clone(), stop.clone(), acked.clone(), urls.clone());
                let tag = tag.to_string();
                tokio::spawn(async move {
                    for i in 0..per_worker {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let member = (w * 7 + i) % members;
                        let id = format!("{tag}-w{w}-{i}");
                        let targets = urls.lock().unwrap().clone();
                        let ends = load_ends.min(Instant::now() + COMMAND_DEADLINE);
                        send_until_decided(&targets, w + i, (member, points), &id, ends, &seen, &acked).await;
                    }
                })
            })
            .collect();
        Load { seen, stop, acked, tasks }
    }

    pub async fn wait_acked(&self, n: usize, within: Duration) {
        let started = Instant::now();
        while self.acked.load(Ordering::Relaxed) < n && started.elapsed() < within {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops sending new commands and waits for every one sent to be decided.
    pub async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.seen).ok().unwrap().into_inner().unwrap()
    }

    /// Waits for every worker to send all of its commands.
    pub async fn join(self) -> Seen {
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.seen).ok().unwrap().into_inner().unwrap()
    }
}

async fn send_until_decided(
    urls: &[String],
    first: usize,
    (member, points): (usize, i64),
    id: &str,
    ends: Instant,
    seen: &Mutex<Seen>,
    acked: &AtomicUsize,
) {
    let mut attempt = first;
    while Instant::now() < ends {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        let mut c = PointsLedgerClient::new(channel(url).await);
        match c.earn(super::earn(id, &format!("m{member}"), points)).await {
            Ok(r) => {
                let r = r.into_inner();
                let mut s = seen.lock().unwrap();
                s.acked.entry(member).or_default().insert(id.to_string());
                let date = r.events.iter().find_map(|e| match &e.event {
                    Some(pb::ledger_event::Event::PointsEarned(p)) => Some(p.date.clone()),
                    _ => None,
                });
                s.granted.insert(id.to_string(), (r.granted_points, r.cap_mode, date.unwrap_or_default()));
                let p = r.position.unwrap_or_default();
                let last = s.last_position.entry(member).or_insert(p);
                if p.offset > last.offset {
                    *last = p;
                }
                acked.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::Unknown
                        | tonic::Code::Cancelled
                        | tonic::Code::DeadlineExceeded
                ) || transport_failed(&e) =>
            {
                let reason = super::reason_of(&e);
                let key = if reason.is_empty() { format!("{:?}", e.code()) } else { reason };
                *seen.lock().unwrap().retries.entry(key).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                seen.lock().unwrap().errors.push(format!("{id}: {e}"));
                return;
            }
        }
    }
    seen.lock().unwrap().undecided.push(id.to_string());
}

/// Whether the call failed in the connection rather than in the service
/// (as when an instance stopping sends its HTTP/2 `GOAWAY` while the call
/// is on its way): its outcome is unknown, and a caller sends it again.
fn transport_failed(e: &tonic::Status) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some())
}

/// Every member's balance, as the instance at `url` answers once its view
/// has reached the member's last acknowledged position.
pub async fn balances(url: &str, seen: &Seen) -> BTreeMap<usize, i64> {
    let mut c = PointsLedgerClient::new(channel_waiting(url, Duration::from_secs(5)).await);
    let mut out = BTreeMap::new();
    let ends = Instant::now() + Duration::from_secs(120);
    for (&member, p) in &seen.last_position {
        let mut got = None;
        while Instant::now() < ends {
            let r = c
                .get_account(pb::GetAccountRequest {
                    account: super::account(&format!("m{member}")),
                    min_position: Some(*p),
                    ..Default::default()
                })
                .await;
            if let Ok(a) = r {
                got = Some(a.into_inner().available);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out.insert(member, got.unwrap_or_else(|| panic!("{url} did not answer the balance of m{member}")));
    }
    out
}

/// Runs `points-ledger verify` on an instance's data directory (killed,
/// and failed, after 180 s).
pub fn verify(dir: &Path, broker: &Tansu, partitions: u32) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["--kill-after=5", "180"])
        .arg(env!("CARGO_BIN_EXE_points-ledger"))
        .arg("verify")
        .args(log_flags(broker, partitions))
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

/// The end of an instance's own log (its stderr), for failure messages.
pub fn log_tail(dir: &Path, lines: usize) -> String {
    super::broker::file_tail(&dir.with_extension("log"), lines)
}
