//! A cluster on Kafka (ARCHITECTURE.md, "A cluster on Kafka"): several
//! `points-ledger serve` processes on one topic of a real broker (tansu)
//! share its partitions through a consumer group; any instance takes any
//! command (forwarding it once to the owner); when an instance dies, stops
//! or freezes, the others take its partitions over, and no acknowledged
//! command is lost or applied twice. Bounded in commands and time; every
//! test stops its processes itself.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::broker::{self, Tansu};
use common::cluster::{self, Instance, Load, Seen};
use points_ledger::proto as pb;
use points_ledger::proto::points_ledger_client::PointsLedgerClient;
use points_ledger::proto::programme_admin_client::ProgrammeAdminClient;

const PARTITIONS: u32 = 6;
const MEMBERS: usize = 24;
/// How long the cluster may take to settle (tansu's group coordinator holds
/// a rejoining follower 3 s per round).
const SETTLE: Duration = Duration::from_secs(90);

struct Cluster {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    broker: Tansu,
    instances: Vec<Instance>,
}

impl Cluster {
    async fn start(n: usize) -> Option<Cluster> {
        broker::available()?;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let broker = Tansu::start(&root.join("tansu"));
        let mut c = Cluster { _dir: dir, root, broker, instances: Vec::new() };
        for _ in 0..n {
            c.add();
        }
        c.settle().await;
        Some(c)
    }

    fn add(&mut self) -> usize {
        let i = self.instances.len();
        let dir = self.root.join(format!("instance-{i}"));
        self.instances.push(cluster::spawn(&dir, &self.broker, PARTITIONS, &[]));
        i
    }

    fn running(&self) -> Vec<&Instance> {
        self.instances.iter().filter(|i| i.child.is_some()).collect()
    }

    fn urls(&self) -> Vec<String> {
        self.running().iter().map(|i| i.url()).collect()
    }

    fn addrs(&self) -> Vec<String> {
        self.running().iter().map(|i| i.addr.clone()).collect()
    }

    /// Waits until the running instances agree on who owns what.
    async fn settle(&self) -> BTreeMap<u32, String> {
        self.settle_among(&self.urls(), &self.addrs()).await
    }

    async fn settle_among(&self, urls: &[String], addrs: &[String]) -> BTreeMap<u32, String> {
        match cluster::settled(urls, addrs, PARTITIONS, SETTLE).await {
            Some(o) => o,
            None => {
                self.broker.assert_alive();
                let mut views = String::new();
                for u in urls {
                    views += &format!("{u}: {:?}\n", cluster::describe(u).await);
                }
                panic!("the cluster did not settle within {} s:\n{views}", SETTLE.as_secs())
            }
        }
    }

    async fn configure(&self) {
        self.configure_with(common::programme()).await
    }

    /// Configures a programme through one instance and waits until every
    /// instance has read it from the control stream.
    async fn configure_with(&self, programme: pb::Programme) {
        let mut admin = ProgrammeAdminClient::new(cluster::channel(&self.urls()[0]).await);
        admin
            .configure_programme(pb::ConfigureProgrammeRequest {
                request_id: "cfg".into(),
                programme: Some(programme),
                operator: "ops".into(),
            })
            .await
            .unwrap();
        for url in self.urls() {
            let mut admin = ProgrammeAdminClient::new(cluster::channel(&url).await);
            let get = pb::GetProgrammeRequest {
                tenant_id: "shop".into(),
                programme_id: "points".into(),
                ..Default::default()
            };
            let started = Instant::now();
            while admin.get_programme(get.clone()).await.is_err() {
                assert!(started.elapsed() < SETTLE, "{url} did not learn the programme");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Every acknowledged command is in every survivor's balances exactly
    /// once; then the survivors stop and `verify` passes on each.
    async fn check(&mut self, seen: &Seen) {
        self.broker.assert_alive();
        assert!(seen.errors.is_empty(), "definite errors: {:?}", seen.errors);
        assert!(seen.undecided.is_empty(), "commands never decided: {:?}", seen.undecided);
        let expected: BTreeMap<usize, i64> =
            seen.acked.iter().map(|(m, ids)| (*m, ids.iter().map(|id| seen.granted[id].0).sum())).collect();
        for url in self.urls() {
            assert_eq!(cluster::balances(&url, seen).await, expected, "balances as {url} answers them");
        }
        for i in self.instances.iter_mut() {
            i.terminate();
        }
        for i in &self.instances {
            let (ok, out) = cluster::verify(&i.dir, &self.broker, PARTITIONS);
            assert!(ok, "verify failed on {}:\n{out}", i.dir.display());
        }
    }
}

impl Drop for Cluster {
    /// A failed test shows the end of each instance's and the broker's log
    /// (POINTS_LEDGER_TEST_KEEP=1 keeps the whole directory).
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in &self.instances {
                eprintln!("---- {} ({}):\n{}", i.dir.display(), i.addr, cluster::log_tail(&i.dir, 80));
            }
            eprintln!("---- tansu:\n{}", self.broker.log_tail());
        }
        if std::env::var_os("POINTS_LEDGER_TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

/// The partitions `addr` owns.
fn owned_by(owners: &BTreeMap<u32, String>, addr: &str) -> Vec<u32> {
    owners.iter().filter(|(_, a)| *a == addr).map(|(p, _)| *p).collect()
}

async fn earn_at(url: &str, id: &str, member: &str) -> Result<pb::CommandReply, tonic::Status> {
    let mut c = PointsLedgerClient::new(cluster::channel(url).await);
    c.earn(common::earn(id, member, 1)).await.map(|r| r.into_inner())
}

/// A member whose account lives in partition `p` (named `<prefix><n>`; the
/// load's members are `m<n>`).
fn member_in(p: u32, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|m| {
            let key = points_ledger::domain::AccountKey {
                tenant_id: "shop".into(),
                programme_id: "points".into(),
                member_id: m.clone(),
            };
            points_ledger::log::record::partition_for(&key, PARTITIONS) == p
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_partitions_and_any_instance_takes_any_command() {
    let Some(mut c) = Cluster::start(3).await else { return };
    let owners = c.settle().await;
    for a in c.addrs() {
        assert!(!owned_by(&owners, &a).is_empty(), "{a} owns no partition: {owners:?}");
    }
    c.configure().await;
    // Every instance takes commands for every partition.
    let urls = c.urls();
    for p in 0..PARTITIONS {
        let member = member_in(p, "probe");
        for (k, url) in urls.iter().enumerate() {
            let r = earn_at(url, &format!("p{p}-via{k}"), &member).await.unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(r.position.unwrap().partition, p);
        }
    }
    // A retry through another instance gets the owner's answer: replayed.
    let member = member_in(0, "probe");
    let first = earn_at(&urls[0], "retry-me", &member).await.unwrap();
    for url in &urls {
        let again = earn_at(url, "retry-me", &member).await.unwrap();
        assert!(again.replayed, "{url} did not answer the retry as replayed");
        assert_eq!(again.position, first.position);
    }
    // A forwarded command is never forwarded again.
    let not_owner = c.running().into_iter().find(|i| owners[&0] != i.addr).unwrap().url();
    let mut client = PointsLedgerClient::new(cluster::channel(&not_owner).await);
    let mut req = tonic::Request::new(common::earn("forwarded-once", &member, 1));
    req.metadata_mut().insert("x-points-ledger-forwarded", "a-test".parse().unwrap());
    let e = client.earn(req).await.unwrap_err();
    assert_eq!((e.code(), common::reason_of(&e).as_str()), (tonic::Code::Unavailable, "PARTITION_MOVING"));
    // Steady load through all instances: no errors, no retries.
    let load = Load::start(urls.clone(), 6, MEMBERS, 40, "steady");
    let seen = load.join().await;
    assert!(seen.retries.is_empty(), "retries in steady state: {:?}", seen.retries);
    // Every instance describes the same cluster.
    let described: Vec<_> = {
        let mut v = Vec::new();
        for u in &urls {
            v.push(cluster::owners(&cluster::describe(u).await.unwrap()));
        }
        v
    };
    assert!(described.windows(2).all(|w| w[0] == w[1]), "instances disagree: {described:?}");
    c.check(&seen).await;
}

/// Load through every instance; `disrupt` stops one owner; the load goes on
/// until every worker's commands are decided.
async fn survives(disrupt: &str) {
    let Some(mut c) = Cluster::start(3).await else { return };
    let before = c.settle().await;
    c.configure().await;
    let load = Load::start(c.urls(), 6, MEMBERS, 400, disrupt);
    load.wait_acked(300, Duration::from_secs(60)).await;
    let victim = 1;
    let victim_addr = c.instances[victim].addr.clone();
    let moved = owned_by(&before, &victim_addr);
    let started = Instant::now();
    match disrupt {
        "kill" => c.instances[victim].kill(),
        "term" => {
            c.instances[victim].signal("-TERM");
        }
        _ => unreachable!(),
    }
    let survivors: Vec<String> = c.urls().into_iter().filter(|u| !u.contains(&victim_addr)).collect();
    let survivor_addrs: Vec<String> = c.addrs().into_iter().filter(|a| *a != victim_addr).collect();
    let first = survivors[0].clone();
    // Serving again: a command for each moved partition succeeds through a survivor.
    for &p in &moved {
        let member = member_in(p, "probe");
        let mut n = 0;
        while earn_at(&first, &format!("{disrupt}-probe-{p}-{n}"), &member).await.is_err() {
            assert!(started.elapsed() < SETTLE, "partition {p} not served again within {} s", SETTLE.as_secs());
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!("{disrupt}: partitions {moved:?} served again after {:.2} s", started.elapsed().as_secs_f64());
    if disrupt == "term" {
        c.instances[victim].terminate();
    }
    let seen = load.join().await;
    eprintln!(
        "{disrupt}: {} acknowledged, retries {:?}",
        seen.acked.values().map(|s| s.len()).sum::<usize>(),
        seen.retries
    );
    c.settle_among(&survivors, &survivor_addrs).await;
    c.check(&seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_s_partitions_move_to_the_survivors_and_nothing_is_lost_or_doubled() {
    survives("kill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_instance_hands_its_partitions_over_and_nothing_is_lost_or_doubled() {
    survives("term").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_owner_is_fenced_and_acknowledges_nothing_after_it_thaws() {
    let Some(mut c) = Cluster::start(3).await else { return };
    let before = c.settle().await;
    c.configure().await;
    let zombie = 1;
    let zombie_addr = c.instances[zombie].addr.clone();
    let zombie_url = c.instances[zombie].url();
    let frozen = owned_by(&before, &zombie_addr);
    let load = Load::start(c.urls(), 6, MEMBERS, 300, "stop");
    load.wait_acked(200, Duration::from_secs(60)).await;
    c.instances[zombie].signal("-STOP");
    // Commands sent straight to the frozen owner, for its own partitions:
    // they wait in its socket while it is frozen. Marked forwarded, so only
    // its own writer may answer them (it may not pass them on).
    let stuck: Vec<_> = frozen
        .iter()
        .map(|&p| {
            let (url, member) = (zombie_url.clone(), member_in(p, "stuck"));
            tokio::spawn(async move {
                let mut c = PointsLedgerClient::new(cluster::channel_waiting(&url, SETTLE * 2).await);
                let mut req = tonic::Request::new(common::earn(&format!("stuck-{p}"), &member, 1));
                req.metadata_mut().insert("x-points-ledger-forwarded", "a-test".parse().unwrap());
                c.earn(req).await
            })
        })
        .collect();
    let survivors: Vec<String> = c.urls().into_iter().filter(|u| *u != zombie_url).collect();
    let survivor_addrs: Vec<String> = c.addrs().into_iter().filter(|a| *a != zombie_addr).collect();
    // The survivors take the frozen owner's partitions over (its session times out).
    c.settle_among(&survivors, &survivor_addrs).await;
    c.instances[zombie].signal("-CONT");
    for (p, s) in frozen.iter().zip(stuck) {
        match s.await.unwrap() {
            Ok(r) => panic!("the thawed zombie acknowledged stuck-{p} in partition {p}: {r:?}"),
            Err(e) => assert_eq!(e.code(), tonic::Code::Unavailable, "stuck-{p}: {e}"),
        }
    }
    // Retried elsewhere, each stuck command is decided exactly once.
    let seen = load.join().await;
    for &p in &frozen {
        let member = member_in(p, "stuck");
        let id = format!("stuck-{p}");
        let r = loop {
            match earn_at(&survivors[0], &id, &member).await {
                Ok(r) => break r,
                Err(e) => assert_eq!(e.code(), tonic::Code::Unavailable, "{id}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut client = PointsLedgerClient::new(cluster::channel(&survivors[0]).await);
        let account = client
            .get_account(pb::GetAccountRequest {
                account: common::account(&member),
                min_position: r.position,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(account.available, 1, "{id} is in {member}'s balance exactly once");
    }
    c.check(&seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_takes_partitions_over_under_load_and_nothing_is_lost_or_doubled() {
    let Some(mut c) = Cluster::start(2).await else { return };
    c.configure().await;
    let load = Load::start(c.urls(), 6, MEMBERS, 400, "join");
    load.wait_acked(300, Duration::from_secs(60)).await;
    let newcomer = c.add();
    let owners = c.settle().await;
    assert!(!owned_by(&owners, &c.instances[newcomer].addr).is_empty(), "the newcomer took nothing: {owners:?}");
    let seen = load.join().await;
    c.check(&seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_programme_wide_cap_holds_with_three_instances_granting_and_across_a_failover() {
    const CAP: i64 = 2_000;
    let Some(mut c) = Cluster::start(3).await else { return };
    let capped = pb::Programme {
        programme_daily_issuance_cap: CAP,
        cap_policy: pb::CapPolicy::Truncate as i32,
        ..common::programme()
    };
    c.configure_with(capped).await;
    // 6 workers x 120 earns x 5 points asks for 3,600 points.
    let load = Load::earning(c.urls(), 6, MEMBERS, 120, "cap", 5);
    load.wait_acked(150, Duration::from_secs(60)).await;
    c.instances[1].kill();
    let seen = load.join().await;
    let mut by_day: BTreeMap<String, i64> = BTreeMap::new();
    for (granted, mode, day) in seen.granted.values() {
        assert_eq!(*mode, pb::CapMode::Share as i32, "a cluster counts the cap in shares");
        *by_day.entry(day.clone()).or_default() += granted;
    }
    for (day, granted) in &by_day {
        assert!(*granted <= CAP, "{granted} points granted on {day}, over the cap of {CAP}");
    }
    eprintln!("cap {CAP}: granted per day {by_day:?}");
    // The shares taken stay within the cap too.
    let mut admin = ProgrammeAdminClient::new(cluster::channel(&c.urls()[0]).await);
    for day in by_day.keys() {
        let issuance = admin
            .get_issuance(pb::GetIssuanceRequest {
                tenant_id: "shop".into(),
                programme_id: "points".into(),
                from_date: day.clone(),
                to_date: day.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let taken = issuance.days[0].shares_taken;
        assert!(taken <= CAP && taken >= by_day[day], "shares taken {taken} on {day} (granted {})", by_day[day]);
    }
    c.check(&seen).await;
}
