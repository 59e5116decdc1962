//! TLS on the gRPC listener (tokio-rustls with ring; no OpenSSL): the
//! certificate, its key and the client CA, read from files and read again
//! on a reload (SIGHUP), and the stream of handshaken connections tonic
//! serves.
//!
//! A reload builds a whole new rustls configuration and swaps it in: new
//! handshakes use it, connections already open keep the one they were made
//! with, and a reload that fails (a file missing, a PEM that does not parse,
//! a key that does not match its certificate) keeps the old one. Swapping
//! the configuration rather than only a certificate resolver also swaps the
//! client-CA verifier, which rustls fixes per configuration.
//!
//! Handshakes run off the accept loop, each on its own task with a deadline
//! ([`TLS_HANDSHAKE_TIMEOUT_MS`]) and at most [`TLS_HANDSHAKES_IN_FLIGHT_MAX`]
//! at once: a failed or silent handshake never stops the loop or holds a
//! slot for long. With a client CA a client certificate is required; its
//! names become the connection's [`ClientIdentity`], in every request's
//! extensions as a [`TlsPeer`].
//!
//! Only this module knows rustls and x509-parser.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::api::forward::ForwardTls;
use crate::api::{ClientIdentity, TlsPeer};

/// Longest a client may take to complete its handshake.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Handshakes in progress at once; the accept loop waits for a free one.
pub const TLS_HANDSHAKES_IN_FLIGHT_MAX: usize = 256;
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_CONNECTIONS_QUEUED_MAX: usize = 64;
/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 100;

/// Where the listener's certificate, key and CAs are read from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain (PEM), the server's own first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// With it, clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
    /// The CA the other instances' certificates are checked against when
    /// forwarding (default: `client_ca`).
    pub ca: Option<PathBuf>,
}

/// What one load of the files gave.
struct Loaded {
    config: Arc<ServerConfig>,
    forward: Option<ForwardTls>,
}

/// The listener's TLS settings, swappable at run time.
pub struct Tls {
    files: TlsFiles,
    /// The configuration new handshakes use.
    current: RwLock<Arc<ServerConfig>>,
    /// How this instance forwards to the others (None: no CA to check
    /// them against).
    forward: RwLock<Option<ForwardTls>>,
    /// Longest a client may take over its handshake
    /// ([`TLS_HANDSHAKE_TIMEOUT_MS`]; shorter in tests).
    handshake_timeout: Duration,
}

impl Tls {
    /// Reads the files; an error names the file that is wrong.
    pub fn load(files: TlsFiles) -> anyhow::Result<Tls> {
        let loaded = load(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new(loaded.config),
            forward: RwLock::new(loaded.forward),
            handshake_timeout: Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS),
        })
    }

    /// The same, with another handshake deadline (tests).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Tls {
        self.handshake_timeout = timeout;
        self
    }

    /// Reads the files again and swaps them in for new handshakes; on an
    /// error nothing changes.
    pub fn reload(&self) -> anyhow::Result<()> {
        let loaded = load(&self.files)?;
        *self.current.write().expect("tls config lock") = loaded.config;
        *self.forward.write().expect("tls forward lock") = loaded.forward;
        Ok(())
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// How to reach the other instances over TLS, as last loaded.
    pub fn forward_settings(&self) -> Option<ForwardTls> {
        self.forward.read().expect("tls forward lock").clone()
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().expect("tls config lock").clone())
    }
}

fn read(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

fn certificates(what: &str, path: &Path, pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the {what} {} is not PEM", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "the {what} {} holds no certificate", path.display());
    Ok(certs)
}

/// ring, as tonic's `tls-ring` uses: no cmake or assembler in the build
/// (aws-lc-rs needs both). rustls 0.23.48 deprecates ring's provider for
/// lacking post-quantum key exchange; the classical groups it offers
/// (X25519, P-256, P-384) are what grpc clients negotiate today.
#[allow(deprecated)]
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load(files: &TlsFiles) -> anyhow::Result<Loaded> {
    let provider = crypto_provider();
    let cert_pem = read("certificate", &files.cert)?;
    let key_pem = read("key", &files.key)?;
    let certs = certificates("certificate", &files.cert, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("the key {} is not a PEM private key", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let client_ca_pem = match &files.client_ca {
        Some(path) => Some(read("client CA", path)?),
        None => None,
    };
    let builder = match (&files.client_ca, &client_ca_pem) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates("client CA", path, pem)? {
                roots.add(ca).with_context(|| format!("the client CA {} is not a usable CA", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("the client CA {}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!("the certificate {} and the key {} do not go together", files.cert.display(), files.key.display())
    })?;
    // gRPC is HTTP/2 only; clients (grpc-go, so grpcurl) insist on ALPN.
    config.alpn_protocols = vec![b"h2".to_vec()];
    let ca_pem = match &files.ca {
        Some(path) => Some(read("CA", path)?),
        None => client_ca_pem,
    };
    let forward = ca_pem.map(|ca_pem| ForwardTls {
        ca_pem,
        identity: files.client_ca.is_some().then(|| (cert_pem.clone(), key_pem.clone())),
    });
    Ok(Loaded { config: Arc::new(config), forward })
}

/// The names a client certificate gives: subject CN first, then its DNS
/// and URI subject alternative names. None if it does not parse.
pub fn client_identity(der: &[u8]) -> Option<ClientIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names: Vec<String> =
        cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_string).collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(s) | GeneralName::URI(s) = n {
                names.push(s.to_string());
            }
        }
    }
    Some(ClientIdentity { names })
}

/// A handshaken TLS connection, carrying what it proved about its peer.
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: TlsPeer,
}

impl TlsConnection {
    fn new(stream: tokio_rustls::server::TlsStream<TcpStream>, remote_addr: SocketAddr) -> TlsConnection {
        let client = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|der| client_identity(der))
            .map(Arc::new);
        TlsConnection { stream, peer: TlsPeer { remote_addr: Some(remote_addr), client } }
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The connections of `listener` once their handshake succeeded, for
/// tonic's `serve_with_incoming_shutdown`. The accept loop runs until the
/// stream is dropped (the server stopped accepting), then closes the
/// listener.
pub fn incoming(listener: TcpListener, tls: Arc<Tls>) -> ReceiverStream<io::Result<TlsConnection>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_CONNECTIONS_QUEUED_MAX);
    tokio::spawn(accept_loop(listener, tls, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(listener: TcpListener, tls: Arc<Tls>, tx: mpsc::Sender<io::Result<TlsConnection>>) {
    let handshakes = Arc::new(Semaphore::new(TLS_HANDSHAKES_IN_FLIGHT_MAX));
    loop {
        let permit = tokio::select! {
            p = handshakes.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = tx.closed() => return,
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                    continue;
                }
            },
            _ = tx.closed() => return,
        };
        // Replies go out at once (see `server::serve`).
        let _ = tcp.set_nodelay(true);
        let (acceptor, deadline, tx) = (tls.acceptor(), tls.handshake_timeout, tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(TlsConnection::new(stream, remote))).await;
                }
                Ok(Err(e)) => tracing::info!(peer = %remote, error = %e, "TLS handshake failed"),
                Err(_) => tracing::info!(peer = %remote, "TLS handshake not done within {} ms", deadline.as_millis()),
            }
        });
    }
}
