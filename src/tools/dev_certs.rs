//! `dev-certs`: a development CA, a server certificate and a client
//! certificate (rcgen, ECDSA P-256), as PEM files with fixed names, so the
//! TLS walk-through needs nothing else. For trying TLS out and for tests:
//! the CA's key sits beside its certificate, unprotected. Production
//! certificates come from the deployment's own CA.
//!
//! The library side also makes what tests need: a second CA, and
//! certificates valid in any window (an expired one).
//!
//! Only this module knows rcgen.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// The files `dev-certs` writes into its directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server-key.pem";
pub const CLIENT_CERT_FILE: &str = "client.pem";
pub const CLIENT_KEY_FILE: &str = "client-key.pem";

/// The client certificate's name (subject CN) unless told otherwise.
pub const CLIENT_NAME_DEFAULT: &str = "dev-client";
/// The server certificate's subject CN (its names are its SANs).
pub const SERVER_NAME: &str = "points-ledger";
/// Names every server certificate carries, beside the `--host`s.
pub const SERVER_HOSTS_DEFAULT: [&str; 2] = ["localhost", "127.0.0.1"];
/// How long certificates are valid unless told otherwise.
pub const VALIDITY_DAYS_DEFAULT: u32 = 365;
/// Longest validity `dev-certs` gives.
pub const VALIDITY_DAYS_MAX: u32 = 3_650;
const DAY_SECONDS: u64 = 86_400;

/// When a certificate is valid, in seconds since the Unix epoch.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before_unix_s: u64,
    pub not_after_unix_s: u64,
}

impl Validity {
    /// From an hour ago (clocks differ a little) for `days`.
    pub fn days_from_now(days: u32) -> Validity {
        let now = now_unix_s();
        Validity { not_before_unix_s: now.saturating_sub(3_600), not_after_unix_s: now + u64::from(days) * DAY_SECONDS }
    }

    /// Valid for a day that ended an hour ago: an expired certificate.
    pub fn expired() -> Validity {
        let now = now_unix_s();
        Validity { not_before_unix_s: now - 2 * DAY_SECONDS, not_after_unix_s: now - 3_600 }
    }

    fn apply(self, params: &mut CertificateParams) {
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + Duration::from_secs(self.not_before_unix_s);
        params.not_after = epoch + Duration::from_secs(self.not_after_unix_s);
    }
}

fn now_unix_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority that signs the others.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub issued: Issued,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str, validity: Validity) -> anyhow::Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.remove(DnType::CommonName);
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity.apply(&mut params);
        let cert = params.self_signed(&key)?;
        let issued = Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        Ok(Ca { issuer: Issuer::new(params, key), issued })
    }

    /// A server certificate for `localhost`, `127.0.0.1` and `hosts` (DNS
    /// names or IP addresses). It may also be presented as a client
    /// certificate: an instance does so when it forwards to another.
    pub fn server(&self, hosts: &[String], validity: Validity) -> anyhow::Result<Issued> {
        let mut names: Vec<String> = SERVER_HOSTS_DEFAULT.iter().map(|h| h.to_string()).collect();
        for h in hosts {
            if !names.contains(h) {
                names.push(h.clone());
            }
        }
        let mut params = CertificateParams::new(names).context("a --host is neither a DNS name nor an IP address")?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, SERVER_NAME, validity)
    }

    /// A client certificate whose subject CN is `name` (the name a
    /// tokens-file line `cert:NAME` grants).
    pub fn client(&self, name: &str, validity: Validity) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, name, validity)
    }

    /// A client certificate that also names `sans` (DNS names or URIs).
    pub fn client_with_sans(&self, name: &str, sans: &[&str], validity: Validity) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for s in sans {
            params.subject_alt_names.push(if s.contains("://") {
                SanType::URI((*s).try_into()?)
            } else {
                SanType::DnsName((*s).try_into()?)
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, name, validity)
    }

    fn sign(&self, mut params: CertificateParams, name: &str, validity: Validity) -> anyhow::Result<Issued> {
        params.distinguished_name.remove(DnType::CommonName);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// What `dev-certs` makes.
pub struct Options {
    pub out: PathBuf,
    /// Names the server certificate carries beside localhost and 127.0.0.1.
    pub hosts: Vec<String>,
    pub client_name: String,
    pub validity_days: u32,
    /// Overwrite files that exist (else refuse: a CA's key is not replaced
    /// by accident).
    pub force: bool,
}

/// Writes the CA, server and client certificates and keys into
/// `opts.out` (created if need be); returns the files written.
pub fn run(opts: &Options) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(
        (1..=VALIDITY_DAYS_MAX).contains(&opts.validity_days),
        "--validity-days must be 1..={VALIDITY_DAYS_MAX}"
    );
    let files = [CA_CERT_FILE, CA_KEY_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE];
    let paths: Vec<PathBuf> = files.iter().map(|f| opts.out.join(f)).collect();
    if !opts.force {
        if let Some(p) = paths.iter().find(|p| p.exists()) {
            anyhow::bail!("{} exists already (--force to replace every file)", p.display());
        }
    }
    let validity = Validity::days_from_now(opts.validity_days);
    let ca = Ca::new("points-ledger development CA", validity)?;
    let server = ca.server(&opts.hosts, validity)?;
    let client = ca.client(&opts.client_name, validity)?;
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let contents =
        [&ca.issued.cert_pem, &ca.issued.key_pem, &server.cert_pem, &server.key_pem, &client.cert_pem, &client.key_pem];
    for (i, (path, text)) in paths.iter().zip(contents).enumerate() {
        write(path, text, i % 2 == 1)?;
    }
    Ok(paths)
}

/// Writes a file; keys readable by their owner only.
fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    use std::io::Write;
    let mut f = options.open(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
