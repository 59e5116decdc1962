//! A real Kafka-protocol broker for tests: `tansu` (an Apache-Kafka-compatible
//! broker, AGPL, run only as a separate process), started in a scratch
//! directory on a free 127.0.0.1 port and stopped by its own pid.
//! `scripts/test` installs it (`cargo install tansu ...`) when it is missing.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
}

/// Where the tansu binary is: $TANSU, else on PATH, else ~/.cargo/bin/tansu.
fn find_tansu() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TANSU") {
        return Some(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let c = d.join("tansu");
            if c.is_file() {
                return Some(c);
            }
        }
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    Some(home.join(".cargo/bin/tansu")).filter(|c| c.is_file())
}

const INSTALL: &str = "run scripts/test (it installs it) or \
    `cargo install tansu --locked --version 0.6.0 --features dynostore,libsql`";

/// The tansu binary for a test that needs a real broker. Without one, a
/// plain `cargo test` skips the test (it says so); `scripts/test` sets
/// POINTS_LEDGER_TEST_REQUIRE_BROKER=1, so there a missing broker fails.
pub fn available() -> Option<PathBuf> {
    let found = find_tansu();
    if found.is_none() {
        assert!(
            std::env::var_os("POINTS_LEDGER_TEST_REQUIRE_BROKER").is_none() && !kafka_suite(),
            "this test needs the tansu broker, which is not installed: {INSTALL}"
        );
        eprintln!("skipping: this test needs the tansu broker, which is not installed ({INSTALL})");
    }
    found
}

/// The tansu binary (the caller made sure there is one, or is in the Kafka
/// run of the suite, which needs it).
pub fn tansu_binary() -> PathBuf {
    find_tansu().unwrap_or_else(|| panic!("the Kafka tests need the tansu broker; {INSTALL}"))
}

/// The last `lines` lines of a log file (empty if it cannot be read), for
/// failure messages.
pub fn file_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Tansu {
    /// Starts a broker whose data lives in `dir` (kept across restarts).
    pub fn start(dir: &Path) -> Tansu {
        Tansu::start_on(dir, free_port())
    }

    /// Starts on a given port (to bring the same broker back after a stop).
    pub fn start_on(dir: &Path, port: u16) -> Tansu {
        std::fs::create_dir_all(dir).unwrap();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("tansu.log")).unwrap();
        let child = Command::new(tansu_binary())
            .current_dir(dir)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            // POINTS_LEDGER_TEST_TANSU_STORAGE=memory://tansu/ to try another engine.
            .args([
                "--storage-engine",
                &std::env::var("POINTS_LEDGER_TEST_TANSU_STORAGE").unwrap_or_else(|_| "sqlite://tansu.db".into()),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting tansu");
        let t = Tansu { child: Some(child), port, dir: dir.to_path_buf() };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "tansu did not listen on {port} within 60 s; see {}",
                dir.join("tansu.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        t
    }

    /// The end of the broker's own log, for failure messages.
    pub fn log_tail(&self) -> String {
        file_tail(&self.dir.join("tansu.log"), 30)
    }

    /// What the broker said when it panicked, if it did (a tansu whose
    /// storage task panicked answers nothing more until it is restarted).
    pub fn panic_message(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let at = lines.iter().position(|l| l.contains("panicked at"))?;
        Some(lines[at..(at + 2).min(lines.len())].join("\n"))
    }

    /// Fails the test if the broker panicked.
    pub fn assert_alive(&self) {
        if let Some(p) = self.panic_message() {
            panic!("the broker (tansu) panicked, so the test cannot go on:\n{p}");
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused broker run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("running");
        let status = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill {sig} {}", child.id());
    }

    /// Stops the broker by its pid: SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, Duration::from_secs(10));
        }
    }
}

/// SIGTERM, and wait for the process to end; SIGKILL after `within`.
pub fn terminate(mut child: Child, within: Duration) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let started = Instant::now();
    while started.elapsed() < within {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether this run of the suite goes over Kafka (`POINTS_LEDGER_TEST_LOG=kafka`).
pub fn kafka_suite() -> bool {
    std::env::var("POINTS_LEDGER_TEST_LOG").map(|v| v == "kafka").unwrap_or(false)
}
