//! TLS fixtures: certificates made by the project's own `dev-certs` code,
//! written where a server reads them; the in-process service serving TLS;
//! TLS clients with or without a client certificate; bearer tokens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use points_ledger::proto as pb;
use points_ledger::server::tls::{Tls, TlsFiles};
use points_ledger::tools::dev_certs::{Ca, Issued, Validity};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{auth, Harness};

/// Valid for a day from an hour ago.
pub fn today() -> Validity {
    Validity::days_from_now(1)
}

pub fn ca(name: &str) -> Ca {
    Ca::new(name, today()).unwrap()
}

/// A server certificate for 127.0.0.1 and localhost.
pub fn server_cert(ca: &Ca) -> Issued {
    ca.server(&[], today()).unwrap()
}

/// A client certificate whose subject CN is `name`.
pub fn client_cert(ca: &Ca, name: &str) -> Issued {
    ca.client(name, today()).unwrap()
}

/// Where a server's TLS files are: a certificate, its key and (with
/// mutual TLS) a client CA, rewritten in place to test reloads.
pub struct ServerFiles {
    pub dir: tempfile::TempDir,
}

impl ServerFiles {
    pub fn new(server: &Issued, client_ca: Option<&Ca>) -> ServerFiles {
        let files = ServerFiles { dir: tempfile::tempdir().unwrap() };
        files.put_server(server);
        if let Some(ca) = client_ca {
            std::fs::write(files.path("client-ca.pem"), &ca.issued.cert_pem).unwrap();
        }
        files
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the server's certificate and key on disk.
    pub fn put_server(&self, server: &Issued) {
        std::fs::write(self.path("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(self.path("server-key.pem"), &server.key_pem).unwrap();
    }

    pub fn tls_files(&self) -> TlsFiles {
        let client_ca = self.path("client-ca.pem");
        TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server-key.pem"),
            client_ca: client_ca.exists().then_some(client_ca),
            ca: None,
        }
    }

    pub fn load(&self) -> Arc<Tls> {
        Arc::new(Tls::load(self.tls_files()).unwrap())
    }
}

/// The service serving TLS with `tls`, and the tokens file `tokens` if any.
pub async fn start_tls(tls: Arc<Tls>, tokens: Option<&str>) -> Harness {
    Harness::start_with(move |c| {
        c.tls = Some(tls);
        if let Some(t) = tokens {
            c.auth = auth(t);
        }
    })
    .await
}

/// TLS to `addr`, trusting `ca`, presenting `client` if given.
pub fn endpoint(addr: SocketAddr, ca: &Ca, client: Option<&Issued>) -> Endpoint {
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.issued.cert_pem));
    if let Some(c) = client {
        config = config.identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .tls_config(config)
        .unwrap()
}

/// Connects and asks gRPC health: Ok when the server served the call.
/// A refused handshake fails either here or at the first call (TLS 1.3
/// refuses a client certificate after the client thinks it is done).
pub async fn health(endpoint: Endpoint) -> Result<Channel, String> {
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    health_on(&channel).await?;
    Ok(channel)
}

/// One gRPC health call on an open channel.
pub async fn health_on(channel: &Channel) -> Result<(), String> {
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    h.check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .map(|_| ())
        .map_err(|s| format!("call: {s:?}"))
}

/// `req` with `authorization: Bearer token`.
pub fn bearer<T>(token: &str, req: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(req);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// The walk-through's programme, with risk thresholds.
pub fn programme_with_risk() -> pb::Programme {
    pb::Programme {
        risk: Some(pb::RiskRules { dense_spend_count: 5, dense_spend_minutes: 10, ..Default::default() }),
        ..super::programme()
    }
}

pub fn configure_request(p: pb::Programme) -> pb::ConfigureProgrammeRequest {
    pb::ConfigureProgrammeRequest { request_id: "cfg-1".into(), programme: Some(p), operator: "ops".into() }
}

/// Writes `issued` as `name.pem` and `name-key.pem` under `dir`.
pub fn write_pair(dir: &Path, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    (cert, key)
}

/// A `points-ledger serve` child process, started with `args` (and a data
/// directory of its own); stopped by its pid when dropped, if still running.
pub struct Served {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    _data: tempfile::TempDir,
}

impl Served {
    /// Starts the binary and waits for its `listening on` line.
    pub fn start(args: &[&std::ffi::OsStr]) -> Served {
        use std::io::BufRead;
        let data = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_points-ledger"))
            .args(["serve", "--admin-listen", "127.0.0.1:0"])
            .args(args)
            .arg("--data-dir")
            .arg(data.path())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start points-ledger");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("listening on"), "unexpected first line: {line:?}");
        let addr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
        Served { child, addr, _data: data }
    }

    /// Waits until it answers plain-text gRPC health on 127.0.0.1 (its
    /// signal handlers are in place from then on).
    pub async fn wait_plain_text(&self) {
        let url = format!("http://127.0.0.1:{}", self.addr.port());
        for _ in 0..200 {
            if let Ok(c) = Endpoint::from_shared(url.clone()).unwrap().connect().await {
                if health_on(&c).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the server at {url} did not answer");
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sends a signal to the child this value owns, by its pid.
        unsafe { libc_kill(self.child.id() as i32, signal) };
    }

    /// SIGTERM, then whether it stopped cleanly.
    pub fn stop(mut self) -> bool {
        self.signal(SIGTERM);
        self.child.wait().unwrap().success()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub const SIGHUP: i32 = 1;
pub const SIGTERM: i32 = 15;

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
