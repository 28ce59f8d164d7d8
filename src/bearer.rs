//! The shared bearer token that guards the Ingest service: where it comes
//! from, the interceptor layer servers check it in, and the one clients
//! send it with.
//!
//! The token covers the whole Ingest service, Pull included: a Pull
//! subscriber reads every record and its acks remove them from the queue,
//! which is at least as sensitive as publishing. Health and reflection stay
//! open so that load-balancer health checks and `grpcurl list` work.

use std::{path::PathBuf, sync::Arc};

use subtle::ConstantTimeEq;
use tonic::{Request, Status, metadata::MetadataValue, service::Interceptor};

/// The shared token. Its `Debug` form never shows it, so it cannot leak
/// into logs.
#[derive(Clone)]
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
    #[error(
        "the bearer token {0} must be non-empty printable ASCII without spaces (it travels in an HTTP header)"
    )]
    Malformed(&'static str),
}

impl BearerToken {
    /// Checks `raw` (one trailing newline, as editors leave it, is dropped).
    fn parse(raw: &str, origin: &'static str) -> Result<Self, TokenError> {
        let token = raw.strip_suffix('\n').unwrap_or(raw);
        let token = token.strip_suffix('\r').unwrap_or(token);
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Malformed(origin));
        }
        Ok(Self(token.into()))
    }

    /// Reads the token from `file` or takes `value`; `None` when neither.
    fn load(file: Option<&PathBuf>, value: Option<&String>) -> Result<Option<Self>, TokenError> {
        match (file, value) {
            (Some(_), Some(_)) => Err(TokenError::Both),
            (Some(path), None) => {
                let raw = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
                    path: path.clone(),
                    source,
                })?;
                Self::parse(&raw, "in --auth-token-file").map(Some)
            }
            (None, Some(value)) => Self::parse(value, "in TRIBUTARY_AUTH_TOKEN").map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Compares in time that does not depend on where the two differ, so
    /// that response times do not reveal the token byte by byte. (A length
    /// difference shows; the length is not the secret.)
    fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

/// Bearer-token flags of a server.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RequireTokenArgs {
    /// File holding the shared bearer token that Ingest callers (producers
    /// and parser workers) must send as `authorization: Bearer <token>`;
    /// calls without it get UNAUTHENTICATED. Health and reflection stay
    /// open. Without a token, Ingest is open to anyone who can connect.
    #[arg(long, env = "TRIBUTARY_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// The token itself, instead of --auth-token-file. Prefer the file or
    /// the environment variable: a value on the command line shows in
    /// process listings.
    #[arg(long, env = "TRIBUTARY_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
}

impl RequireTokenArgs {
    /// The token to require, if any.
    pub fn load(&self) -> Result<Option<BearerToken>, TokenError> {
        BearerToken::load(self.auth_token_file.as_ref(), self.auth_token.as_ref())
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

/// Server side: refuses calls without the right token, when one is set.
/// As an interceptor it is a tower layer (`tonic::service::InterceptorLayer`)
/// that keeps the wrapped service's name, so it guards exactly the service
/// it wraps, wherever that service is hosted.
#[derive(Debug, Clone)]
pub struct RequireBearer {
    token: Option<BearerToken>,
}

impl RequireBearer {
    /// Requires `token`; `None` lets every call through.
    pub fn new(token: Option<BearerToken>) -> Self {
        Self { token }
    }
}

impl RequireBearer {
    /// Checks the `authorization` entry of `metadata`. The REST face calls
    /// this too: its transcoder invokes the handlers directly, so the
    /// interceptor around the gRPC service never sees REST requests.
    pub fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let Some(header) = metadata.get("authorization") else {
            tracing::debug!("call without a bearer token refused");
            return Err(Status::unauthenticated(
                "this server requires a bearer token: send `authorization: Bearer <token>`",
            ));
        };
        // The scheme is case-insensitive (RFC 9110); the token is not.
        let presented = header.as_bytes();
        let ok = presented.len() > 7
            && presented[..7].eq_ignore_ascii_case(b"bearer ")
            && token.matches(&presented[7..]);
        if !ok {
            tracing::debug!("call with a wrong bearer token refused");
            return Err(Status::unauthenticated("the bearer token is not valid"));
        }
        Ok(())
    }
}

impl Interceptor for RequireBearer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.metadata())?;
        Ok(request)
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

    fn check(token: Option<&str>, header: Option<&str>) -> Result<(), tonic::Code> {
        let token = token.map(|t| BearerToken::parse(t, "test").unwrap());
        let mut request = Request::new(());
        if let Some(header) = header {
            request
                .metadata_mut()
                .insert("authorization", header.parse().unwrap());
        }
        RequireBearer::new(token)
            .call(request)
            .map(drop)
            .map_err(|s| s.code())
    }

    #[test]
    fn the_right_token_passes_and_any_other_is_unauthenticated() {
        let unauthenticated = Err(tonic::Code::Unauthenticated);
        assert_eq!(check(Some("s3cret"), Some("Bearer s3cret")), Ok(()));
        assert_eq!(check(Some("s3cret"), Some("bearer s3cret")), Ok(()));
        assert_eq!(check(Some("s3cret"), Some("Bearer s3cre")), unauthenticated);
        assert_eq!(
            check(Some("s3cret"), Some("Bearer s3cretX")),
            unauthenticated
        );
        assert_eq!(check(Some("s3cret"), Some("Basic s3cret")), unauthenticated);
        assert_eq!(check(Some("s3cret"), Some("s3cret")), unauthenticated);
        assert_eq!(check(Some("s3cret"), None), unauthenticated);
        assert_eq!(check(None, None), Ok(()));
    }

    #[test]
    fn what_a_client_attaches_is_what_the_server_accepts() {
        let token = BearerToken::parse("tok-123\n", "test").unwrap();
        let request = AttachBearer::new(Some(token.clone()))
            .call(Request::new(()))
            .unwrap();
        assert!(RequireBearer::new(Some(token)).call(request).is_ok());
    }

    #[test]
    fn a_token_never_shows_in_debug_output() {
        let token = BearerToken::parse("hunter2", "test").unwrap();
        assert!(!format!("{token:?}").contains("hunter2"));
        assert!(!format!("{:?}", RequireBearer::new(Some(token))).contains("hunter2"));
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
