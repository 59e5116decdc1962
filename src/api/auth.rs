//! Access control: who is calling, and what they may do.
//!
//! A caller is known by a bearer token (`authorization: Bearer TOKEN`) or,
//! on a mutual-TLS connection, by its verified client certificate
//! ([`ClientIdentity`], which `server::tls` puts in each request's
//! extensions as a [`TlsPeer`]). What each may do comes from the tokens
//! file, one grant per line:
//!
//! ```text
//! TOKEN        TENANT[,TENANT...]|*  [admin]
//! cert:NAME    TENANT[,TENANT...]|*  [admin]
//! ```
//!
//! `cert:NAME` grants a client certificate whose subject CN, or one of its
//! DNS or URI subject alternative names, is NAME (tried in that order: the
//! first name with a line decides). Blank lines and lines starting with `#`
//! are ignored.
//!
//! The decisions, safest first:
//! - a bearer token, when sent, decides alone (an unknown one is refused even
//!   on a mutual-TLS connection whose certificate has rights);
//! - else a verified client certificate: its line in the tokens file; with a
//!   client CA but no tokens file, member access to every tenant and never
//!   admin (admin rights are only ever granted by a line of the file);
//! - with neither a tokens file nor a client CA, access control is off and
//!   every caller may do everything (`serve` refuses that beyond loopback
//!   unless told `--insecure-no-auth`).
//!
//! This module must never accept an identity that did not come from the
//! TLS handshake: a client cannot name its own certificate in a header.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Status};

use super::errors::status;

/// The prefix of a tokens-file line that names a client certificate.
pub const CERT_PREFIX: &str = "cert:";

#[derive(Clone, Debug)]
struct Grant {
    /// None: every tenant.
    tenants: Option<Vec<String>>,
    admin: bool,
}

impl Grant {
    /// What a verified client certificate may do without a tokens file.
    fn member_everywhere() -> Grant {
        Grant { tenants: None, admin: false }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Auth {
    /// Grants by bearer token; None: no tokens file.
    tokens: Option<HashMap<String, Grant>>,
    /// Grants by client certificate name (`cert:` lines).
    certs: HashMap<String, Grant>,
    /// The listener requires and verifies client certificates (mutual TLS).
    client_certificates: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Commands and queries on members' accounts.
    Member,
    /// Programme rules, freezing, manual adjustments.
    Admin,
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

/// Which tenants a check is about.
#[derive(Clone, Copy)]
enum Scope<'a> {
    Tenant(&'a str),
    /// Something that spans tenants (the cluster's layout): only a grant
    /// for every tenant (`*`) covers it.
    EveryTenant,
}

impl Auth {
    pub fn open() -> Auth {
        Auth::default()
    }

    pub fn parse(text: &str) -> anyhow::Result<Auth> {
        let mut tokens = HashMap::new();
        let mut certs = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let (who, tenants, admin) = match parts.as_slice() {
                [t, ten] => (*t, *ten, false),
                [t, ten, "admin"] => (*t, *ten, true),
                _ => anyhow::bail!("tokens file line {}: expected `TOKEN|cert:NAME TENANTS|* [admin]`", n + 1),
            };
            let tenants = (tenants != "*").then(|| tenants.split(',').map(str::to_string).collect());
            let grant = Grant { tenants, admin };
            let (map, key) = match who.strip_prefix(CERT_PREFIX) {
                Some("") => anyhow::bail!("tokens file line {}: `{CERT_PREFIX}` needs a name", n + 1),
                Some(name) => (&mut certs, name),
                None => (&mut tokens, who),
            };
            if map.insert(key.to_string(), grant).is_some() {
                anyhow::bail!("tokens file line {}: `{who}` has a line already", n + 1);
            }
        }
        Ok(Auth { tokens: Some(tokens), certs, client_certificates: false })
    }

    /// The listener verifies client certificates (`--tls-client-ca`): a
    /// verified certificate identifies its caller.
    pub fn with_client_certificates(mut self) -> Auth {
        self.client_certificates = true;
        self
    }

    /// Whether every caller may do everything (no tokens file, no client CA).
    pub fn is_open(&self) -> bool {
        self.tokens.is_none() && !self.client_certificates
    }

    /// Whether the file names certificates although no client CA verifies
    /// any (those lines can never match).
    pub fn has_cert_lines(&self) -> bool {
        !self.certs.is_empty()
    }

    pub fn check(&self, caller: &Caller<'_>, tenant: &str, access: Access) -> Result<(), Status> {
        self.check_scope(caller, Scope::Tenant(tenant), access)
    }

    /// A check for something that spans tenants: needs a grant for `*`.
    pub fn check_every_tenant(&self, caller: &Caller<'_>, access: Access) -> Result<(), Status> {
        self.check_scope(caller, Scope::EveryTenant, access)
    }

    /// Whether the caller has admin rights over `tenant` (for what only
    /// admins see, e.g. a programme's risk thresholds).
    pub fn is_admin(&self, caller: &Caller<'_>, tenant: &str) -> bool {
        self.check(caller, tenant, Access::Admin).is_ok()
    }

    fn check_scope(&self, caller: &Caller<'_>, scope: Scope<'_>, access: Access) -> Result<(), Status> {
        if self.is_open() {
            return Ok(());
        }
        let grant = self.grant_of(caller)?;
        let tenant_ok = match (scope, &grant.tenants) {
            (_, None) => true,
            (Scope::Tenant(tenant), Some(t)) => t.iter().any(|x| x == tenant),
            (Scope::EveryTenant, Some(_)) => false,
        };
        if !tenant_ok {
            let message = match scope {
                Scope::Tenant(tenant) => format!("this client may not act for tenant {tenant}"),
                Scope::EveryTenant => "this needs a client allowed every tenant (`*`)".to_string(),
            };
            return Err(status(Code::PermissionDenied, "TENANT_NOT_ALLOWED", message, None));
        }
        if access == Access::Admin && !grant.admin {
            return Err(status(
                Code::PermissionDenied,
                "ADMIN_REQUIRED",
                "this operation needs an admin client (a tokens-file line with `admin`)",
                None,
            ));
        }
        Ok(())
    }

    /// The caller's rights: its bearer token's, else its certificate's.
    fn grant_of(&self, caller: &Caller<'_>) -> Result<Grant, Status> {
        let unauthenticated = |message: String| status(Code::Unauthenticated, "UNAUTHENTICATED", message, None);
        if let Some(value) = caller.metadata.get("authorization") {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| unauthenticated("`authorization` must be `Bearer TOKEN`".into()))?;
            let tokens = self.tokens.as_ref().ok_or_else(|| {
                unauthenticated("this service has no tokens file: identify with the client certificate only".into())
            })?;
            return tokens.get(token.trim()).cloned().ok_or_else(|| unauthenticated("unknown token".into()));
        }
        let Some(client) = caller.client.filter(|_| self.client_certificates) else {
            return Err(unauthenticated("missing `authorization: Bearer TOKEN`".into()));
        };
        if self.tokens.is_none() {
            return Ok(Grant::member_everywhere());
        }
        client.names.iter().find_map(|n| self.certs.get(n)).cloned().ok_or_else(|| {
            unauthenticated(format!(
                "the client certificate {client} has no `{CERT_PREFIX}` line in the tokens file, and no bearer token was sent"
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
        assert!(auth.check(&caller(&none, Some(&identity(&["ops"]))), "shop", Access::Admin).is_ok());
        let app = identity(&["shop-app"]);
        assert!(auth.check(&caller(&none, Some(&app)), "shop", Access::Member).is_ok());
        let denied = auth.check(&caller(&none, Some(&app)), "shop", Access::Admin).unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
    }

    #[test]
    fn a_subject_alternative_name_matches_when_the_common_name_has_no_line() {
        let auth = Auth::parse("cert:spiffe://shop/app shop\n").unwrap().with_client_certificates();
        let none = MetadataMap::new();
        let id = identity(&["app-7", "app.shop.internal", "spiffe://shop/app"]);
        assert!(auth.check(&caller(&none, Some(&id)), "shop", Access::Member).is_ok());
    }

    #[test]
    fn a_certificate_counts_only_when_the_listener_verifies_client_certificates() {
        let auth = Auth::parse("cert:ops * admin\n").unwrap();
        let none = MetadataMap::new();
        let err = auth.check(&caller(&none, Some(&identity(&["ops"]))), "shop", Access::Member).unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }

    #[test]
    fn without_a_tokens_file_a_verified_client_is_a_member_everywhere_and_never_admin() {
        let auth = Auth::open().with_client_certificates();
        let none = MetadataMap::new();
        let id = identity(&["anyone"]);
        assert!(auth.check(&caller(&none, Some(&id)), "shop", Access::Member).is_ok());
        assert_eq!(
            auth.check(&caller(&none, Some(&id)), "shop", Access::Admin).unwrap_err().code(),
            Code::PermissionDenied
        );
        assert_eq!(auth.check(&caller(&none, None), "shop", Access::Member).unwrap_err().code(), Code::Unauthenticated);
    }

    #[test]
    fn a_bearer_token_decides_even_on_a_connection_with_a_certificate() {
        let auth = Auth::parse("good shop\ncert:ops * admin\n").unwrap().with_client_certificates();
        let mut bad = MetadataMap::new();
        bad.insert("authorization", "Bearer nope".parse().unwrap());
        let ops = identity(&["ops"]);
        assert_eq!(
            auth.check(&caller(&bad, Some(&ops)), "shop", Access::Member).unwrap_err().code(),
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
}
