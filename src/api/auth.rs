//! Optional bearer-token access control. Without a tokens file every caller
//! may do everything (the embedded default, for one trusted network). With
//! one, each call needs `authorization: Bearer TOKEN`; a token names the
//! tenants it may act for and whether it may administer them.
//!
//! Tokens file: one token per line, `TOKEN TENANT[,TENANT...]|* [admin]`;
//! blank lines and lines starting with `#` are ignored.

use std::collections::HashMap;

use tonic::{Code, Status};

use super::errors::status;

#[derive(Clone, Debug)]
struct Grant {
    /// None: every tenant.
    tenants: Option<Vec<String>>,
    admin: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Auth {
    /// None: access control is off.
    tokens: Option<HashMap<String, Grant>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Commands and queries on members' accounts.
    Member,
    /// Programme rules, freezing, manual adjustments.
    Admin,
}

impl Auth {
    pub fn open() -> Auth {
        Auth { tokens: None }
    }

    pub fn parse(text: &str) -> anyhow::Result<Auth> {
        let mut tokens = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let (token, tenants, admin) = match parts.as_slice() {
                [t, ten] => (*t, *ten, false),
                [t, ten, "admin"] => (*t, *ten, true),
                _ => anyhow::bail!("tokens file line {}: expected `TOKEN TENANTS|* [admin]`", n + 1),
            };
            let tenants = (tenants != "*").then(|| tenants.split(',').map(str::to_string).collect());
            tokens.insert(token.to_string(), Grant { tenants, admin });
        }
        Ok(Auth { tokens: Some(tokens) })
    }

    pub fn check(&self, metadata: &tonic::metadata::MetadataMap, tenant: &str, access: Access) -> Result<(), Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                status(Code::Unauthenticated, "UNAUTHENTICATED", "missing `authorization: Bearer TOKEN`", None)
            })?;
        let grant = tokens
            .get(token.trim())
            .ok_or_else(|| status(Code::Unauthenticated, "UNAUTHENTICATED", "unknown token", None))?;
        let tenant_ok = grant.tenants.as_ref().is_none_or(|t| t.iter().any(|x| x == tenant));
        if !tenant_ok {
            return Err(status(
                Code::PermissionDenied,
                "TENANT_NOT_ALLOWED",
                format!("this token may not act for tenant {tenant}"),
                None,
            ));
        }
        if access == Access::Admin && !grant.admin {
            return Err(status(Code::PermissionDenied, "ADMIN_REQUIRED", "this operation needs an admin token", None));
        }
        Ok(())
    }
}
