//! Access control: who is calling, and what they may do.
//!
//! A caller is known by a bearer token (`authorization: Bearer TOKEN`) or,
//! on a mutual-TLS connection, by its verified client certificate
//! ([`ClientIdentity`], which `server::tls` puts in each request's
//! extensions as a [`TlsPeer`]). What each may do comes from one of two
//! files. The clients file (`--clients-file`) names each client and its
//! scopes, one client per line:
//!
//! ```text
//! # name     credential        tenants   programmes        operations
//! ops        token:s3cret      *         *                 read,admin,finance
//! store-7    cert:store7-app   mall      store-7,store-7b  earn,spend,read
//! ```
//!
//! The operations are `earn` (earning, activities, reversals, expiry of due
//! lots), `spend` (spend, reserve, capture, release, refund), `read`
//! (accounts, statements, the feed, programmes), `admin` (rules, manual
//! adjustments, freezes, alerts, webhooks, held points) and `finance` (the
//! books); `*` grants every one. The older tokens file (`--auth-tokens-file`)
//! has one grant per line, without names or programmes:
//!
//! ```text
//! TOKEN        TENANT[,TENANT...]|*  [admin]
//! cert:NAME    TENANT[,TENANT...]|*  [admin]
//! ```
//!
//! where a line without `admin` grants earn, spend and read, and one with it
//! every operation. A certificate is matched by its subject CN, or one of
//! its DNS or URI subject alternative names (tried in that order: the first
//! name with a line decides). Blank lines and lines starting with `#` are
//! ignored. Either file is read again on SIGHUP and when it changes; a file
//! that does not parse leaves the rules as they were.
//!
//! The decisions, safest first:
//! - a bearer token, when sent, decides alone (an unknown one is refused even
//!   on a mutual-TLS connection whose certificate has rights);
//! - else a verified client certificate: its line in the file; with a
//!   client CA but no file, earn, spend and read in every tenant and never
//!   admin (admin rights are only ever granted by a line of the file);
//! - with neither a file nor a client CA, access control is off and every
//!   caller may do everything (`serve` refuses that beyond loopback unless
//!   told `--insecure-no-auth`).
//!
//! A refusal is `PERMISSION_DENIED` naming what is missing: the tenant
//! (`TENANT_NOT_ALLOWED`), the programme (`PROGRAMME_NOT_ALLOWED`) or the
//! operation (`ADMIN_REQUIRED` for admin, else `OPERATION_NOT_ALLOWED`).
//!
//! This module must never accept an identity that did not come from the
//! TLS handshake: a client cannot name its own certificate in a header.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Status};

use super::errors::status;

/// The prefix of a line's credential that names a client certificate.
pub const CERT_PREFIX: &str = "cert:";
/// The prefix of a clients-file credential that is a bearer token.
pub const TOKEN_PREFIX: &str = "token:";

/// What a client may do: one of the operations a grant lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Earning, activities, reversals, expiring due lots.
    Earn,
    /// Spending, reservations and their capture or release, refunds.
    Spend,
    /// Accounts, statements, the feed, programmes.
    Read,
    /// Programme rules, manual adjustments, freezes, alerts, webhooks,
    /// held points.
    Admin,
    /// The books (daily books, reports).
    Finance,
}

impl Access {
    pub const ALL: [Access; 5] = [Access::Earn, Access::Spend, Access::Read, Access::Admin, Access::Finance];

    /// Its name in the clients file and in refusals.
    pub fn name(self) -> &'static str {
        match self {
            Access::Earn => "earn",
            Access::Spend => "spend",
            Access::Read => "read",
            Access::Admin => "admin",
            Access::Finance => "finance",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    fn parse(name: &str) -> Option<Access> {
        Access::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A set of operations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Operations(u8);

impl Operations {
    fn of(ops: &[Access]) -> Operations {
        Operations(ops.iter().fold(0, |b, a| b | a.bit()))
    }

    fn has(self, a: Access) -> bool {
        self.0 & a.bit() != 0
    }
}

/// What a tokens-file line without `admin` grants.
const MEMBER_OPERATIONS: [Access; 3] = [Access::Earn, Access::Spend, Access::Read];

#[derive(Clone, Debug)]
struct Grant {
    /// Who the client is, for the audit log (its name in the clients file;
    /// for a tokens-file line, a digest of the token or the certificate).
    name: Arc<str>,
    /// None: every tenant.
    tenants: Option<Vec<String>>,
    /// None: every programme of its tenants.
    programmes: Option<Vec<String>>,
    operations: Operations,
}

impl Grant {
    /// What a verified client certificate may do without a file.
    fn member_everywhere(name: &str) -> Grant {
        Grant {
            name: format!("{CERT_PREFIX}{name}").into(),
            tenants: None,
            programmes: None,
            operations: Operations::of(&MEMBER_OPERATIONS),
        }
    }
}

/// The rules in force: the file's grants.
#[derive(Clone, Debug, Default)]
struct Rules {
    /// Grants by bearer token; None: no file.
    tokens: Option<HashMap<String, Grant>>,
    /// Grants by client certificate name.
    certs: HashMap<String, Grant>,
}

/// Access control, shared by every clone: [`Auth::replace`] changes the
/// rules for all of them at once (a reload).
#[derive(Clone, Debug, Default)]
pub struct Auth {
    rules: Arc<RwLock<Arc<Rules>>>,
    /// The listener requires and verifies client certificates (mutual TLS).
    client_certificates: bool,
}

/// Who a call came from, once access control has let it through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// Its name in the clients file (or what stands for one; `anonymous`
    /// when access control is off).
    pub name: Arc<str>,
}

/// What a mutual-TLS handshake proved about the client: the names its
/// certificate gives, the subject CN first, then its DNS and URI subject
/// alternative names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    pub names: Vec<String>,
}

impl std::fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.names.first() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "(a certificate without names)"),
        }
    }
}

/// The connection a call came over, when it is TLS: in every request's
/// extensions (tonic's `Connected::connect_info`, set by `server::tls`).
#[derive(Clone, Debug)]
pub struct TlsPeer {
    pub remote_addr: Option<SocketAddr>,
    /// The verified client certificate's identity (mutual TLS only).
    pub client: Option<Arc<ClientIdentity>>,
}

/// Who is calling: the call's metadata (a bearer token) and the client
/// certificate its connection proved, if any.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub metadata: &'a MetadataMap,
    pub client: Option<&'a ClientIdentity>,
}

impl<'a> Caller<'a> {
    pub fn of<T>(req: &'a Request<T>) -> Caller<'a> {
        Caller { metadata: req.metadata(), client: req.extensions().get::<TlsPeer>().and_then(|p| p.client.as_deref()) }
    }
}

/// What a check is about.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// One programme of one tenant.
    Programme(&'a str, &'a str),
    /// Something that spans tenants (the cluster's layout): only a grant
    /// for every tenant and programme (`*`) covers it.
    Everything,
}

/// The client name a tokens-file token stands under: a digest, never the
/// token itself.
fn token_name(token: &str) -> Arc<str> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.as_bytes());
    format!("token:{}", crate::hex(&digest[..6])).into()
}

/// `*` or a comma-separated list.
fn list(field: &str) -> Option<Vec<String>> {
    (field != "*").then(|| field.split(',').map(str::to_string).collect())
}

impl Rules {
    fn add(&mut self, line: usize, credential: &str, grant: Grant) -> anyhow::Result<()> {
        let tokens = self.tokens.get_or_insert_with(HashMap::new);
        let (map, key) = match credential.strip_prefix(CERT_PREFIX) {
            Some("") => anyhow::bail!("line {line}: `{CERT_PREFIX}` needs a name"),
            Some(name) => (&mut self.certs, name),
            None => (tokens, credential.strip_prefix(TOKEN_PREFIX).unwrap_or(credential)),
        };
        if key.is_empty() {
            anyhow::bail!("line {line}: an empty credential");
        }
        if map.insert(key.to_string(), grant).is_some() {
            anyhow::bail!("line {line}: `{credential}` has a line already");
        }
        Ok(())
    }
}

/// The lines that are not blank or comments, numbered from 1.
fn lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(n, l)| (n, l.split_whitespace().collect()))
}

impl Auth {
    pub fn open() -> Auth {
        Auth::default()
    }

    fn of_rules(rules: Rules) -> Auth {
        Auth { rules: Arc::new(RwLock::new(Arc::new(rules))), client_certificates: false }
    }

    /// A tokens file (`TOKEN|cert:NAME TENANTS|* [admin]` per line).
    pub fn parse(text: &str) -> anyhow::Result<Auth> {
        let mut rules = Rules { tokens: Some(HashMap::new()), ..Rules::default() };
        for (n, parts) in lines(text) {
            let (who, tenants, admin) = match parts.as_slice() {
                [t, ten] => (*t, *ten, false),
                [t, ten, "admin"] => (*t, *ten, true),
                _ => anyhow::bail!("tokens file line {n}: expected `TOKEN|cert:NAME TENANTS|* [admin]`"),
            };
            let name = match who.strip_prefix(CERT_PREFIX) {
                Some(cert) => format!("{CERT_PREFIX}{cert}").into(),
                None => token_name(who),
            };
            let operations = if admin { Operations::of(&Access::ALL) } else { Operations::of(&MEMBER_OPERATIONS) };
            let grant = Grant { name, tenants: list(tenants), programmes: None, operations };
            rules.add(n, who, grant).map_err(|e| anyhow::anyhow!("tokens file {e}"))?;
        }
        Ok(Auth::of_rules(rules))
    }

    /// A clients file (`NAME CREDENTIAL TENANTS PROGRAMMES OPERATIONS` per
    /// line, see the module's documentation).
    pub fn parse_clients(text: &str) -> anyhow::Result<Auth> {
        let mut rules = Rules { tokens: Some(HashMap::new()), ..Rules::default() };
        let mut names = std::collections::HashSet::new();
        for (n, parts) in lines(text) {
            let [name, credential, tenants, programmes, operations] = parts.as_slice() else {
                anyhow::bail!(
                    "clients file line {n}: expected `NAME token:TOKEN|cert:NAME TENANTS|* PROGRAMMES|* OPERATIONS|*`"
                );
            };
            if !credential.starts_with(TOKEN_PREFIX) && !credential.starts_with(CERT_PREFIX) {
                anyhow::bail!(
                    "clients file line {n}: the credential must start with `{TOKEN_PREFIX}` or `{CERT_PREFIX}`"
                );
            }
            if !names.insert(name.to_string()) {
                anyhow::bail!("clients file line {n}: the client `{name}` has a line already");
            }
            let ops = match *operations {
                "*" => Access::ALL.to_vec(),
                some => some
                    .split(',')
                    .map(|o| {
                        Access::parse(o).ok_or_else(|| {
                            anyhow::anyhow!(
                                "clients file line {n}: `{o}` is not an operation (earn, spend, read, admin, finance)"
                            )
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            };
            let grant = Grant {
                name: (*name).into(),
                tenants: list(tenants),
                programmes: list(programmes),
                operations: Operations::of(&ops),
            };
            rules.add(n, credential, grant).map_err(|e| anyhow::anyhow!("clients file {e}"))?;
        }
        Ok(Auth::of_rules(rules))
    }

    /// The listener verifies client certificates (`--tls-client-ca`): a
    /// verified certificate identifies its caller. The rules stay shared.
    pub fn with_client_certificates(mut self) -> Auth {
        self.client_certificates = true;
        self
    }

    /// Puts the rules of `other` in force for this and every clone (a
    /// reloaded file); calls already checked are not affected.
    pub fn replace(&self, other: &Auth) {
        let rules = other.rules.read().expect("auth lock").clone();
        *self.rules.write().expect("auth lock") = rules;
    }

    fn rules(&self) -> Arc<Rules> {
        self.rules.read().expect("auth lock").clone()
    }

    /// Whether every caller may do everything (no file, no client CA).
    pub fn is_open(&self) -> bool {
        !self.client_certificates && self.rules().tokens.is_none()
    }

    /// Whether the file names certificates although no client CA verifies
    /// any (those lines can never match).
    pub fn has_cert_lines(&self) -> bool {
        !self.rules().certs.is_empty()
    }

    /// Lets the call through when its client may do `access` in the
    /// programme; who the client is.
    pub fn check(&self, caller: &Caller<'_>, tenant: &str, programme: &str, access: Access) -> Result<Client, Status> {
        self.check_scope(caller, Scope::Programme(tenant, programme), access)
    }

    /// A check for something that spans tenants: needs a grant for `*`.
    pub fn check_every_tenant(&self, caller: &Caller<'_>, access: Access) -> Result<Client, Status> {
        self.check_scope(caller, Scope::Everything, access)
    }

    /// Whether the caller may do `access` in the programme (for what only
    /// some see, e.g. a programme's risk thresholds, or one programme among
    /// many listed).
    pub fn allows(&self, caller: &Caller<'_>, tenant: &str, programme: &str, access: Access) -> bool {
        self.check(caller, tenant, programme, access).is_ok()
    }

    /// Who the caller is (refused when unknown), whatever it may do.
    pub fn client(&self, caller: &Caller<'_>) -> Result<Client, Status> {
        if self.is_open() {
            return Ok(Client { name: "anonymous".into() });
        }
        Ok(Client { name: self.grant_of(caller)?.name })
    }

    fn check_scope(&self, caller: &Caller<'_>, scope: Scope<'_>, access: Access) -> Result<Client, Status> {
        if self.is_open() {
            return Ok(Client { name: "anonymous".into() });
        }
        let grant = self.grant_of(caller)?;
        let denied = |reason, message: String| Err(status(Code::PermissionDenied, reason, message, None));
        let client = &grant.name;
        match scope {
            Scope::Everything if grant.tenants.is_some() || grant.programmes.is_some() => {
                return denied(
                    "TENANT_NOT_ALLOWED",
                    format!("this needs a client allowed every tenant and programme (`*`); {client} is not"),
                );
            }
            Scope::Everything => {}
            Scope::Programme(tenant, programme) => {
                if !grant.tenants.as_ref().is_none_or(|t| t.iter().any(|x| x == tenant)) {
                    return denied(
                        "TENANT_NOT_ALLOWED",
                        format!("the client {client} may not act for tenant {tenant}"),
                    );
                }
                if !grant.programmes.as_ref().is_none_or(|p| p.iter().any(|x| x == programme)) {
                    return denied(
                        "PROGRAMME_NOT_ALLOWED",
                        format!("the client {client} may not act in programme {tenant}/{programme}"),
                    );
                }
            }
        }
        if !grant.operations.has(access) {
            let reason = if access == Access::Admin { "ADMIN_REQUIRED" } else { "OPERATION_NOT_ALLOWED" };
            return denied(
                reason,
                format!("this needs the `{}` operation, which the client {client} lacks", access.name()),
            );
        }
        Ok(Client { name: grant.name })
    }

    /// The caller's rights: its bearer token's, else its certificate's.
    fn grant_of(&self, caller: &Caller<'_>) -> Result<Grant, Status> {
        let unauthenticated = |message: String| status(Code::Unauthenticated, "UNAUTHENTICATED", message, None);
        let rules = self.rules();
        if let Some(value) = caller.metadata.get("authorization") {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| unauthenticated("`authorization` must be `Bearer TOKEN`".into()))?;
            let tokens = rules.tokens.as_ref().ok_or_else(|| {
                unauthenticated("this service has no clients file: identify with the client certificate only".into())
            })?;
            return tokens.get(token.trim()).cloned().ok_or_else(|| unauthenticated("unknown token".into()));
        }
        let Some(client) = caller.client.filter(|_| self.client_certificates) else {
            return Err(unauthenticated("missing `authorization: Bearer TOKEN`".into()));
        };
        if rules.tokens.is_none() {
            return Ok(Grant::member_everywhere(&client.to_string()));
        }
        client.names.iter().find_map(|n| rules.certs.get(n)).cloned().ok_or_else(|| {
            unauthenticated(format!(
                "the client certificate {client} has no `{CERT_PREFIX}` line in the clients file, and no bearer token was sent"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(names: &[&str]) -> ClientIdentity {
        ClientIdentity { names: names.iter().map(|n| n.to_string()).collect() }
    }

    fn caller<'a>(metadata: &'a MetadataMap, client: Option<&'a ClientIdentity>) -> Caller<'a> {
        Caller { metadata, client }
    }

    #[test]
    fn a_cert_line_grants_its_rights_to_the_certificate_it_names() {
        let auth = Auth::parse("cert:ops * admin\ncert:shop-app shop\n").unwrap().with_client_certificates();
        let none = MetadataMap::new();
        assert!(auth.check(&caller(&none, Some(&identity(&["ops"]))), "shop", "points", Access::Admin).is_ok());
        let app = identity(&["shop-app"]);
        assert!(auth.check(&caller(&none, Some(&app)), "shop", "points", Access::Read).is_ok());
        let denied = auth.check(&caller(&none, Some(&app)), "shop", "points", Access::Admin).unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
    }

    #[test]
    fn a_subject_alternative_name_matches_when_the_common_name_has_no_line() {
        let auth = Auth::parse("cert:spiffe://shop/app shop\n").unwrap().with_client_certificates();
        let none = MetadataMap::new();
        let id = identity(&["app-7", "app.shop.internal", "spiffe://shop/app"]);
        assert!(auth.check(&caller(&none, Some(&id)), "shop", "points", Access::Read).is_ok());
    }

    #[test]
    fn a_certificate_counts_only_when_the_listener_verifies_client_certificates() {
        let auth = Auth::parse("cert:ops * admin\n").unwrap();
        let none = MetadataMap::new();
        let err = auth.check(&caller(&none, Some(&identity(&["ops"]))), "shop", "points", Access::Read).unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }

    #[test]
    fn without_a_tokens_file_a_verified_client_is_a_member_everywhere_and_never_admin() {
        let auth = Auth::open().with_client_certificates();
        let none = MetadataMap::new();
        let id = identity(&["anyone"]);
        assert!(auth.check(&caller(&none, Some(&id)), "shop", "points", Access::Read).is_ok());
        assert_eq!(
            auth.check(&caller(&none, Some(&id)), "shop", "points", Access::Admin).unwrap_err().code(),
            Code::PermissionDenied
        );
        assert_eq!(
            auth.check(&caller(&none, None), "shop", "points", Access::Read).unwrap_err().code(),
            Code::Unauthenticated
        );
    }

    #[test]
    fn a_bearer_token_decides_even_on_a_connection_with_a_certificate() {
        let auth = Auth::parse("good shop\ncert:ops * admin\n").unwrap().with_client_certificates();
        let mut bad = MetadataMap::new();
        bad.insert("authorization", "Bearer nope".parse().unwrap());
        let ops = identity(&["ops"]);
        assert_eq!(
            auth.check(&caller(&bad, Some(&ops)), "shop", "points", Access::Read).unwrap_err().code(),
            Code::Unauthenticated
        );
    }

    #[test]
    fn the_cluster_scope_needs_a_grant_for_every_tenant() {
        let auth = Auth::parse("shop-admin shop admin\nroot * admin\n").unwrap();
        let mut m = MetadataMap::new();
        m.insert("authorization", "Bearer shop-admin".parse().unwrap());
        assert_eq!(
            auth.check_every_tenant(&caller(&m, None), Access::Admin).unwrap_err().code(),
            Code::PermissionDenied
        );
        m.insert("authorization", "Bearer root".parse().unwrap());
        assert!(auth.check_every_tenant(&caller(&m, None), Access::Admin).is_ok());
    }

    #[test]
    fn a_name_given_twice_is_refused() {
        assert!(Auth::parse("t shop\nt other\n").is_err());
        assert!(Auth::parse("cert: shop\n").is_err());
    }

    fn bearer(token: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", format!("Bearer {token}").parse().unwrap());
        m
    }

    const CLIENTS: &str = "\
# name     credential      tenants  programmes  operations
ops        token:ops-t     *        *           *
store-7    token:s7        mall     store-7     earn,spend,read
auditor    cert:audit-app  mall     *           read,finance
";

    #[test]
    fn a_store_client_acts_only_in_its_programmes_and_operations() {
        let auth = Auth::parse_clients(CLIENTS).unwrap();
        let m = bearer("s7");
        let c = caller(&m, None);
        assert_eq!(auth.check(&c, "mall", "store-7", Access::Earn).unwrap().name.as_ref(), "store-7");
        let other = auth.check(&c, "mall", "store-8", Access::Read).unwrap_err();
        assert!(other.message().contains("programme mall/store-8"), "{other:?}");
        let tenant = auth.check(&c, "shop", "store-7", Access::Read).unwrap_err();
        assert_eq!(tenant.code(), Code::PermissionDenied);
        let op = auth.check(&c, "mall", "store-7", Access::Finance).unwrap_err();
        assert!(op.message().contains("`finance`"), "{op:?}");
    }

    #[test]
    fn a_clients_file_names_its_clients_and_refuses_unknown_operations() {
        assert!(Auth::parse_clients("a token:x * * earn,mint\n").is_err());
        assert!(Auth::parse_clients("a x * * earn\n").is_err());
        assert!(Auth::parse_clients("a token:x * * earn\na token:y * * earn\n").is_err());
        let auth = Auth::parse_clients(CLIENTS).unwrap().with_client_certificates();
        let none = MetadataMap::new();
        let id = identity(&["audit-app"]);
        assert_eq!(auth.client(&caller(&none, Some(&id))).unwrap().name.as_ref(), "auditor");
    }

    #[test]
    fn a_replaced_file_takes_effect_in_every_clone() {
        let auth = Auth::parse_clients(CLIENTS).unwrap();
        let shared = auth.clone();
        let m = bearer("s7");
        assert!(shared.check(&caller(&m, None), "mall", "store-7", Access::Spend).is_ok());
        auth.replace(&Auth::parse_clients("store-7 token:s7 mall store-7 read\n").unwrap());
        let err = shared.check(&caller(&m, None), "mall", "store-7", Access::Spend).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }

    #[test]
    fn a_tokens_file_line_stands_under_a_digest_of_its_token() {
        let auth = Auth::parse("secret-token shop\n").unwrap();
        let m = bearer("secret-token");
        let name = auth.client(&caller(&m, None)).unwrap().name;
        assert!(name.starts_with("token:") && !name.contains("secret"), "{name}");
    }
}
