//! Who may call what on a listener: the tokens a server accepts, the access
//! each route needs, and the tower layer that enforces it on every route of
//! the port, gRPC and HTTP alike.
//!
//! - **Two tokens.** The full token may do everything; the optional
//!   read-only token may call Query, Fleet status and the dashboard, but not
//!   Ingest or the Coordinator.
//! - **One rule, by path.** Health, reflection, `/metrics`, the dashboard's
//!   page and assets, `/openapi.json` and `/login` stay open. `Ingest` and
//!   `Coordinator`, and every REST verb other than GET and HEAD, need the
//!   full token. `Query`, `Fleet` and REST GETs need at least the read-only
//!   one. Anything else needs the full token: a new route is closed until it
//!   is classified here.
//! - **A layer, not per-service interceptors**, because the REST face calls
//!   the handlers in process and a browser's `EventSource` cannot send
//!   headers: one place sees every request, whatever face it came through.
//! - **Browsers** sign in once at `/login`, which sets an `HttpOnly`,
//!   `SameSite=Strict` cookie. The cookie counts only on GET and HEAD and
//!   grants at most read access, so a forged cross-site form can never
//!   publish through it.
//! - **Rotation.** Token files are re-read every second and on SIGHUP; a
//!   file that cannot be read or parsed keeps the previous token (and says
//!   so once).
//! - Refusals are counted in [`AUTH_REFUSED`] by reason; no token is ever
//!   logged or echoed.

use std::{
    path::PathBuf,
    pin::Pin,
    sync::{Arc, PoisonError, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Form, Router,
    response::{Html, IntoResponse, Redirect, Response as AxumResponse},
    routing::get,
};
use tokio_util::sync::CancellationToken;
use tonic::codegen::http::{self, HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::bearer::{BearerToken, TokenError};

/// Refused requests, by `reason` (`missing`, `invalid`, `read_only`).
pub const AUTH_REFUSED: &str = "tributary_auth_refused_total";

/// The cookie a browser signs in with.
pub const COOKIE: &str = "tributary_token";

/// How often token files are looked at for a rotation.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Query, Fleet status, the dashboard.
    Read,
    /// Everything, Ingest and Coordinator included.
    Full,
}

/// The access a request for `path` with `method` needs; `None` when the
/// route is open to anyone.
pub fn required(method: &Method, path: &str) -> Option<Access> {
    const OPEN: &[&str] = &[
        "/",
        "/metrics",
        "/openapi.json",
        "/login",
        "/logout",
        "/favicon.ico",
    ];
    const OPEN_PREFIXES: &[&str] = &["/grpc.health.v1.Health/", "/grpc.reflection.", "/assets/"];
    const READ_PREFIXES: &[&str] = &["/tributary.v1.Query/", "/tributary.v1.Fleet/"];
    if OPEN.contains(&path) || OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return None;
    }
    if READ_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return Some(Access::Read);
    }
    if path.starts_with("/v1/") && (method == Method::GET || method == Method::HEAD) {
        return Some(Access::Read);
    }
    Some(Access::Full)
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token at all.
    Missing,
    /// A token that is neither the full nor the read-only one.
    Invalid,
    /// The read-only token, on a route that needs the full one.
    ReadOnly,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::ReadOnly => "read_only",
        }
    }

    /// The gRPC status of the refusal. The message never contains a token.
    pub fn status(self) -> tonic::Status {
        match self {
            Self::Missing => tonic::Status::unauthenticated(
                "this server requires a bearer token: send `authorization: Bearer <token>`",
            ),
            Self::Invalid => tonic::Status::unauthenticated("the bearer token is not valid"),
            Self::ReadOnly => tonic::Status::permission_denied(
                "the read-only token may not call this; it needs the full token",
            ),
        }
    }
}

/// Where a token comes from: a file (re-read on rotation) or a fixed value.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Value(BearerToken),
}

impl Source {
    fn read(&self) -> Result<BearerToken, TokenError> {
        match self {
            Self::Value(token) => Ok(token.clone()),
            Self::File(path) => BearerToken::from_file(path),
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Tokens {
    full: Option<BearerToken>,
    read: Option<BearerToken>,
}

#[derive(Debug)]
struct Keys {
    full: Source,
    read: Option<Source>,
    /// A full token known only to this process, for its own clients (the
    /// parsers and producers `tributary up` runs): it never rotates, so a
    /// rotation of the file cannot lock the process out of itself.
    internal: Option<BearerToken>,
    current: RwLock<Tokens>,
}

impl Keys {
    fn tokens(&self) -> Tokens {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the sources; `Ok(true)` when a token changed. On an error
    /// the previous tokens stay.
    fn reload(&self) -> Result<bool, TokenError> {
        let fresh = Tokens {
            full: Some(self.full.read()?),
            read: self.read.as_ref().map(Source::read).transpose()?,
        };
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let changed = *current != fresh;
        *current = fresh;
        Ok(changed)
    }
}

/// The tokens a server accepts, shared by every clone; `open()` accepts
/// every caller.
#[derive(Debug, Clone, Default)]
pub struct AccessGuard {
    keys: Option<Arc<Keys>>,
}

impl AccessGuard {
    /// No token: every route is open.
    pub fn open() -> Self {
        Self::default()
    }

    /// Requires the token from `full` (a file, or a value) and accepts the
    /// read-only one from `read` on read routes. Reads the files now.
    pub fn from_sources(
        full: (Option<&PathBuf>, Option<&String>),
        read: (Option<&PathBuf>, Option<&String>),
    ) -> Result<Self, TokenError> {
        let source = |file: Option<&PathBuf>, value: Option<&String>, origin| match (file, value) {
            (Some(_), Some(_)) => Err(TokenError::Both),
            (Some(path), None) => Ok(Some(Source::File(path.clone()))),
            (None, Some(value)) => {
                BearerToken::parse(value, origin).map(|t| Some(Source::Value(t)))
            }
            (None, None) => Ok(None),
        };
        let full = source(full.0, full.1, "in TRIBUTARY_AUTH_TOKEN")?;
        let read = source(read.0, read.1, "in TRIBUTARY_AUTH_READ_TOKEN")?;
        let full = match (full, read.is_some()) {
            (Some(full), _) => full,
            (None, true) => return Err(TokenError::ReadWithoutFull),
            (None, false) => return Ok(Self::open()),
        };
        let keys = Keys {
            full,
            read,
            internal: None,
            current: RwLock::default(),
        };
        keys.reload()?;
        Ok(Self {
            keys: Some(Arc::new(keys)),
        })
    }

    /// Whether a token is required at all.
    pub fn is_enabled(&self) -> bool {
        self.keys.is_some()
    }

    /// Adds a random full token for this process's own clients and returns
    /// it; `None` (and no change) when no token is required.
    pub fn with_internal_token(self) -> (Self, Option<BearerToken>) {
        let Some(keys) = self.keys else {
            return (self, None);
        };
        let internal = BearerToken::random();
        let keys = Keys {
            full: keys.full.clone(),
            read: keys.read.clone(),
            internal: Some(internal.clone()),
            current: RwLock::new(keys.tokens()),
        };
        (
            Self {
                keys: Some(Arc::new(keys)),
            },
            Some(internal),
        )
    }

    /// The access `presented` (a bare token) grants, if any.
    fn grant(&self, presented: &[u8]) -> Option<Access> {
        let keys = self.keys.as_ref()?;
        let tokens = keys.tokens();
        let mut full = tokens.full.iter().chain(&keys.internal);
        if full.any(|t| t.matches(presented)) {
            Some(Access::Full)
        } else if tokens.read.as_ref().is_some_and(|t| t.matches(presented)) {
            Some(Access::Read)
        } else {
            None
        }
    }

    /// Checks a request's credentials against `needed`: the `authorization:
    /// Bearer` header, or on GET and HEAD the sign-in cookie (which grants at
    /// most read access).
    pub fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        needed: Access,
    ) -> Result<(), Refusal> {
        if self.keys.is_none() {
            return Ok(());
        }
        let granted = if let Some(header) = headers.get(header::AUTHORIZATION) {
            // The scheme is case-insensitive (RFC 9110); the token is not.
            let presented = header.as_bytes();
            let bearer = presented.len() > 7 && presented[..7].eq_ignore_ascii_case(b"bearer ");
            bearer
                .then(|| self.grant(&presented[7..]))
                .flatten()
                .ok_or(Refusal::Invalid)?
        } else if let Some(cookie) = (method == Method::GET || method == Method::HEAD)
            .then(|| cookie(headers))
            .flatten()
        {
            self.grant(cookie)
                .ok_or(Refusal::Invalid)?
                .min(Access::Read)
        } else {
            return Err(Refusal::Missing);
        };
        if granted < needed {
            return Err(Refusal::ReadOnly);
        }
        Ok(())
    }

    /// Re-reads the token files every second and on SIGHUP until
    /// `shutdown`, so a rotation needs no restart. A fixed token (no file)
    /// needs no watching.
    pub fn watch(&self, shutdown: CancellationToken) {
        let Some(keys) = self.keys.clone() else {
            return;
        };
        let files =
            matches!(keys.full, Source::File(_)) || matches!(keys.read, Some(Source::File(_)));
        if !files {
            return;
        }
        tokio::spawn(async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut failing = false;
            loop {
                let hup = async {
                    match hangup.as_mut() {
                        Some(signal) => drop(signal.recv().await),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RELOAD_EVERY) => {}
                    () = hup => tracing::info!("SIGHUP: re-reading the token files"),
                }
                match keys.reload() {
                    Ok(changed) => {
                        if changed || failing {
                            tracing::info!("token files re-read; the new tokens are in force");
                        }
                        failing = false;
                    }
                    Err(e) => {
                        // Said once per failure, not once a second.
                        if !failing {
                            tracing::warn!(error = %e, "cannot re-read a token file; the previous tokens stay in force");
                        }
                        failing = true;
                    }
                }
            }
        });
    }
}

/// The value of the sign-in cookie in a `cookie` header, if any.
fn cookie(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (name, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            (name == COOKIE.as_bytes()).then_some(&value[1..])
        })
}

/// Enforces an [`AccessGuard`] on every request of a server.
#[derive(Debug, Clone)]
pub struct AccessLayer {
    guard: AccessGuard,
}

impl AccessLayer {
    pub fn new(guard: AccessGuard) -> Self {
        Self { guard }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Enforce<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Enforce {
            inner,
            guard: self.guard.clone(),
        }
    }
}

/// The service [`AccessLayer`] makes.
#[derive(Debug, Clone)]
pub struct Enforce<S> {
    inner: S,
    guard: AccessGuard,
}

impl<S, B> tower::Service<http::Request<B>> for Enforce<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let refused = required(request.method(), request.uri().path()).and_then(|needed| {
            self.guard
                .check(request.method(), request.headers(), needed)
                .err()
        });
        match refused {
            None => Box::pin(self.inner.call(request)),
            Some(refusal) => {
                metrics::counter!(AUTH_REFUSED, "reason" => refusal.label()).increment(1);
                tracing::debug!(
                    path = request.uri().path(),
                    reason = refusal.label(),
                    "request refused"
                );
                let response = refusal_response(refusal, is_grpc(request.headers()));
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A gRPC status for gRPC callers; for HTTP callers the status the REST
/// face uses (401 or 403) with its `{code, message}` JSON body.
fn refusal_response(refusal: Refusal, grpc: bool) -> http::Response<tonic::body::Body> {
    let status = refusal.status();
    if grpc {
        return status.into_http();
    }
    let body = serde_json::json!({"code": status.code() as i32, "message": status.message()});
    let mut response = http::Response::new(tonic::body::Body::new(axum::body::Body::from(
        body.to_string(),
    )));
    *response.status_mut() = match refusal {
        Refusal::ReadOnly => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// `GET /login` (a form for the token), `POST /login` (sets the sign-in
/// cookie and goes back to the dashboard) and `GET /logout`. With no token
/// required they say so. `secure` marks the cookie `Secure` (on TLS
/// listeners).
pub fn login_routes(guard: AccessGuard, secure: bool) -> Router {
    let post_guard = guard.clone();
    Router::new()
        .route(
            "/login",
            get(move || {
                let enabled = guard.is_enabled();
                async move { login_page(enabled, None) }
            })
            .post(move |Form(form): Form<LoginForm>| {
                let guard = post_guard.clone();
                async move { sign_in(&guard, secure, &form.token) }
            }),
        )
        .route(
            "/logout",
            get(move || async move {
                let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
                ([(header::SET_COOKIE, clear)], Redirect::to("/login"))
            }),
        )
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

fn sign_in(guard: &AccessGuard, secure: bool, token: &str) -> AxumResponse {
    if guard.grant(token.as_bytes()).is_none() {
        let refusal = if token.is_empty() {
            Refusal::Missing
        } else {
            Refusal::Invalid
        };
        metrics::counter!(AUTH_REFUSED, "reason" => refusal.label()).increment(1);
        return (
            StatusCode::UNAUTHORIZED,
            login_page(guard.is_enabled(), Some("That token is not valid.")),
        )
            .into_response();
    }
    // A parsed token is printable ASCII without `;` troubles: it was
    // compared against ours, which are.
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

fn login_page(enabled: bool, error: Option<&str>) -> Html<String> {
    let body = if enabled {
        let error = error.map_or(String::new(), |e| format!("<p role=\"alert\">{e}</p>"));
        format!(
            "<h1>Sign in to the Tributary dashboard</h1>{error}\
             <form method=\"post\" action=\"/login\">\
             <label>Token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\" required></label> \
             <button type=\"submit\" id=\"sign-in\">Sign in</button></form>\
             <p>The full token or the read-only one. It is kept in a cookie for this site only.</p>"
        )
    } else {
        "<h1>No sign-in needed</h1><p>This server requires no token. <a href=\"/\">Dashboard</a></p>"
            .to_owned()
    };
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Tributary: sign in</title></head><body>{body}</body></html>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(dir: &std::path::Path, full: &str, read: Option<&str>) -> (AccessGuard, PathBuf) {
        let file = dir.join("token");
        std::fs::write(&file, format!("{full}\n")).unwrap();
        let read = read.map(str::to_owned);
        let guard = AccessGuard::from_sources((Some(&file), None), (None, read.as_ref())).unwrap();
        (guard, file)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn routes_are_classified() {
        let get = Method::GET;
        let post = Method::POST;
        for open in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "/metrics",
            "/",
            "/assets/app.js",
            "/login",
            "/openapi.json",
        ] {
            assert_eq!(required(&get, open), None, "{open}");
        }
        assert_eq!(
            required(&post, "/tributary.v1.Query/ListRecords"),
            Some(Access::Read)
        );
        assert_eq!(
            required(&post, "/tributary.v1.Fleet/GetFleetStatus"),
            Some(Access::Read)
        );
        assert_eq!(required(&get, "/v1/dashboard:watch"), Some(Access::Read));
        assert_eq!(required(&get, "/v1/records"), Some(Access::Read));
        assert_eq!(required(&post, "/v1/records"), Some(Access::Full));
        assert_eq!(
            required(&post, "/tributary.v1.Ingest/Publish"),
            Some(Access::Full)
        );
        assert_eq!(
            required(&post, "/tributary.v1.Coordinator/Claim"),
            Some(Access::Full)
        );
        assert_eq!(required(&get, "/anything/new"), Some(Access::Full));
    }

    #[test]
    fn full_read_and_wrong_tokens_get_what_they_should() {
        let dir = tempfile::tempdir().unwrap();
        let (guard, _) = guard(dir.path(), "full-1", Some("read-1"));
        let get = Method::GET;
        let check = |h: &[(&'static str, &str)], needed| guard.check(&get, &headers(h), needed);
        assert_eq!(check(&[], Access::Read), Err(Refusal::Missing));
        assert_eq!(
            check(&[("authorization", "Bearer full-1")], Access::Full),
            Ok(())
        );
        assert_eq!(
            check(&[("authorization", "bearer read-1")], Access::Read),
            Ok(())
        );
        assert_eq!(
            check(&[("authorization", "Bearer read-1")], Access::Full),
            Err(Refusal::ReadOnly)
        );
        assert_eq!(
            check(&[("authorization", "Bearer full-")], Access::Read),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            check(&[("authorization", "Basic full-1")], Access::Read),
            Err(Refusal::Invalid)
        );
        assert!(
            AccessGuard::open()
                .check(&get, &headers(&[]), Access::Full)
                .is_ok()
        );
    }

    #[test]
    fn the_cookie_counts_only_for_reads_and_only_on_get() {
        let dir = tempfile::tempdir().unwrap();
        let (guard, _) = guard(dir.path(), "full-1", None);
        let cookie = headers(&[("cookie", "a=b; tributary_token=full-1; c=d")]);
        assert_eq!(guard.check(&Method::GET, &cookie, Access::Read), Ok(()));
        assert_eq!(
            guard.check(&Method::GET, &cookie, Access::Full),
            Err(Refusal::ReadOnly)
        );
        assert_eq!(
            guard.check(&Method::POST, &cookie, Access::Read),
            Err(Refusal::Missing)
        );
        let wrong = headers(&[("cookie", "tributary_token=nope")]);
        assert_eq!(
            guard.check(&Method::GET, &wrong, Access::Read),
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn a_rotated_file_takes_effect_and_a_broken_one_keeps_the_old_token() {
        let dir = tempfile::tempdir().unwrap();
        let (guard, file) = guard(dir.path(), "old-token", None);
        let keys = guard.keys.clone().unwrap();
        let bearer = |t: &str| headers(&[("authorization", &*format!("Bearer {t}"))]);
        let get = Method::GET;
        assert!(
            guard
                .check(&get, &bearer("old-token"), Access::Full)
                .is_ok()
        );
        std::fs::write(&file, "new-token\n").unwrap();
        assert!(keys.reload().unwrap());
        assert!(
            guard
                .check(&get, &bearer("new-token"), Access::Full)
                .is_ok()
        );
        assert_eq!(
            guard.check(&get, &bearer("old-token"), Access::Full),
            Err(Refusal::Invalid)
        );
        std::fs::write(&file, "").unwrap();
        assert!(keys.reload().is_err());
        assert!(
            guard
                .check(&get, &bearer("new-token"), Access::Full)
                .is_ok()
        );
    }

    #[test]
    fn the_internal_token_is_full_and_survives_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (guard, file) = guard(dir.path(), "t1", None);
        let (guard, internal) = guard.with_internal_token();
        let internal = internal.unwrap();
        let header = headers(&[("authorization", &*format!("Bearer {}", internal.expose()))]);
        assert!(guard.check(&Method::POST, &header, Access::Full).is_ok());
        std::fs::write(&file, "t2\n").unwrap();
        guard.keys.as_ref().unwrap().reload().unwrap();
        assert!(guard.check(&Method::POST, &header, Access::Full).is_ok());
    }

    #[test]
    fn a_read_token_needs_a_full_one() {
        let read = "r".to_owned();
        let e = AccessGuard::from_sources((None, None), (None, Some(&read))).unwrap_err();
        assert!(matches!(e, TokenError::ReadWithoutFull));
    }
}
