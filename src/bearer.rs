//! The shared bearer token: where it comes from, the server flags that
//! require it (checked by [`crate::access`]), and the interceptor clients
//! send it with.

use std::{path::PathBuf, sync::Arc};

use subtle::ConstantTimeEq;
use tonic::{Request, Status, metadata::MetadataValue, service::Interceptor};

use crate::access::AccessGuard;

/// The shared token. Its `Debug` form never shows it, so it cannot leak
/// into logs.
#[derive(Clone, PartialEq)]
pub struct BearerToken(Arc<str>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// A token that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read --auth-token-file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("give the token once: --auth-token-file or TRIBUTARY_AUTH_TOKEN, not both")]
    Both,
    #[error("a read-only token needs a full one beside it: give --auth-token-file too")]
    ReadWithoutFull,
    #[error(
        "the bearer token {0} must be non-empty printable ASCII without spaces (it travels in an HTTP header)"
    )]
    Malformed(&'static str),
}

impl BearerToken {
    /// Checks `raw` (one trailing newline, as editors leave it, is dropped).
    pub(crate) fn parse(raw: &str, origin: &'static str) -> Result<Self, TokenError> {
        let token = raw.strip_suffix('\n').unwrap_or(raw);
        let token = token.strip_suffix('\r').unwrap_or(token);
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Malformed(origin));
        }
        Ok(Self(token.into()))
    }

    /// Reads the token in the file at `path`.
    pub(crate) fn from_file(path: &PathBuf) -> Result<Self, TokenError> {
        let raw = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&raw, "in --auth-token-file")
    }

    /// A fresh random token (256 bits, hex), for a process's own clients.
    pub(crate) fn random() -> Self {
        use rand::RngExt as _;
        let mut rng = rand::rng();
        let hex: String = (0..4)
            .map(|_| format!("{:016x}", rng.random::<u64>()))
            .collect();
        Self(hex.into())
    }

    /// The token itself, for tests that must present it.
    #[cfg(test)]
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Reads the token from `file` or takes `value`; `None` when neither.
    fn load(file: Option<&PathBuf>, value: Option<&String>) -> Result<Option<Self>, TokenError> {
        match (file, value) {
            (Some(_), Some(_)) => Err(TokenError::Both),
            (Some(path), None) => Self::from_file(path).map(Some),
            (None, Some(value)) => Self::parse(value, "in TRIBUTARY_AUTH_TOKEN").map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Compares in time that does not depend on where the two differ, so
    /// that response times do not reveal the token byte by byte. (A length
    /// difference shows; the length is not the secret.)
    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

/// Bearer-token flags of a server.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RequireTokenArgs {
    /// File holding the full bearer token that callers must send as
    /// `authorization: Bearer <token>` to reach any data: Ingest, Query
    /// (gRPC and REST), Coordinator, Fleet status and the dashboard's
    /// stream (browsers sign in at /login). Calls without it get
    /// UNAUTHENTICATED (HTTP 401). Health, reflection and /metrics stay
    /// open. The file is re-read every second and on SIGHUP, so a rotation
    /// needs no restart. Without a token, everything is open to anyone who
    /// can connect.
    #[arg(long, env = "TRIBUTARY_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// The token itself, instead of --auth-token-file. Prefer the file or
    /// the environment variable: a value on the command line shows in
    /// process listings.
    #[arg(long, env = "TRIBUTARY_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// File holding a read-only token, beside the full one: it may call
    /// Query, Fleet status and the dashboard, but not Ingest or the
    /// Coordinator (PERMISSION_DENIED, HTTP 403). Re-read like the full one.
    #[arg(long, env = "TRIBUTARY_AUTH_READ_TOKEN_FILE")]
    pub auth_read_token_file: Option<PathBuf>,
    /// The read-only token itself, instead of --auth-read-token-file.
    #[arg(long, env = "TRIBUTARY_AUTH_READ_TOKEN", hide_env_values = true)]
    pub auth_read_token: Option<String>,
}

impl RequireTokenArgs {
    /// The tokens to require, read now; an open guard when none is given.
    /// Call [`AccessGuard::watch`] to follow rotations of the files.
    pub fn guard(&self) -> Result<AccessGuard, TokenError> {
        AccessGuard::from_sources(
            (self.auth_token_file.as_ref(), self.auth_token.as_ref()),
            (
                self.auth_read_token_file.as_ref(),
                self.auth_read_token.as_ref(),
            ),
        )
    }
}

/// Bearer-token flags of a client.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SendTokenArgs {
    /// File holding the shared bearer token to send to the Ingest service,
    /// for servers started with --auth-token-file.
    #[arg(long, env = "TRIBUTARY_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// The token itself, instead of --auth-token-file. Prefer the file or
    /// the environment variable: a value on the command line shows in
    /// process listings.
    #[arg(long, env = "TRIBUTARY_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
}

impl SendTokenArgs {
    /// The token to send, if any.
    pub fn load(&self) -> Result<Option<BearerToken>, TokenError> {
        BearerToken::load(self.auth_token_file.as_ref(), self.auth_token.as_ref())
    }
}

/// Client side: adds `authorization: Bearer <token>` to every call, when a
/// token is set.
#[derive(Debug, Clone)]
pub struct AttachBearer {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl AttachBearer {
    pub fn new(token: Option<BearerToken>) -> Self {
        let header = token.map(|token| {
            let mut value: MetadataValue<_> = format!("Bearer {}", token.0)
                .parse()
                .expect("a parsed token is printable ASCII, a valid header value");
            // Keeps the header out of HPACK's dynamic table and of debug logs.
            value.set_sensitive(true);
            value
        });
        Self { header }
    }
}

impl Interceptor for AttachBearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_never_shows_in_debug_output() {
        let token = BearerToken::parse("hunter2", "test").unwrap();
        assert!(!format!("{token:?}").contains("hunter2"));
        assert!(!format!("{:?}", AttachBearer::new(Some(token))).contains("hunter2"));
    }

    #[test]
    fn unusable_tokens_are_refused_with_their_origin() {
        for bad in ["", "\n", "two words", "tab\there", "ünïcode"] {
            let e = BearerToken::parse(bad, "in --auth-token-file").unwrap_err();
            assert!(e.to_string().contains("--auth-token-file"), "{e}");
        }
        let both = BearerToken::load(Some(&PathBuf::from("x")), Some(&"y".to_owned()));
        assert!(matches!(both, Err(TokenError::Both)));
    }
}
