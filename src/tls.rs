//! TLS on the listeners: the server flags, the certificate files they name,
//! checked before anything binds, and the acceptor that wraps a listener.
//!
//! tonic's own `Server::tls_config` offers only ALPN `h2`. Our listeners
//! also answer HTTP/1.1 (REST and `/metrics` share the port), and a client
//! that offers only `http/1.1` would be refused at the handshake, so the
//! acceptor here is tokio-rustls with both protocols. Each handshake runs
//! in its own task under a deadline, so idle or slow clients cannot hold up
//! the accept loop or the handshakes of others: the loop only accepts and
//! hands off.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::Stream;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
    server::TlsStream,
};
use tokio_stream::wrappers::ReceiverStream;

use crate::backoff::Backoff;

/// How long a client may take to finish its TLS handshake: generous for a
/// real client on a slow link (a handshake is two round trips), short
/// enough that a crowd of idle sockets is soon let go.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handshakes in progress at once. An idle socket costs a task and a few
/// kilobytes until its deadline, so the cap is far above what a busy server
/// sees; it exists so that a flood of sockets costs bounded memory. Past
/// it, new connections wait in the kernel's accept queue.
const MAX_HANDSHAKES: usize = 10_000;

/// How long the accept loop rests after the kernel refused an accept (out
/// of file descriptors, say), instead of spinning on the error: from 50 ms,
/// doubling to 1 s while refusals go on, so that a lasting shortage is not
/// retried (and logged) twenty times a second.
fn accept_backoff() -> Backoff {
    Backoff::exact(Duration::from_millis(50), Duration::from_secs(1))
}

/// A TLS setting that cannot be used, with the flag or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Flags(&'static str),
    #[error("cannot read {flag} {}: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{flag} {}: {reason}", path.display())]
    Pem {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the TLS settings do not fit together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// TLS flags of a server. Without them it serves plaintext (h2c and
/// HTTP/1.1), as behind a proxy that terminates TLS.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain to serve TLS with, leaf first. With --tls-key,
    /// this listener speaks only TLS (gRPC, REST and /metrics alike).
    #[arg(long, env = "TRIBUTARY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TRIBUTARY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to. Setting
    /// it requires every client to present one (mutual TLS).
    #[arg(long, env = "TRIBUTARY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// Reads and checks the files: `None` when TLS is off.
    pub fn load(&self) -> Result<Option<ServerTls>, TlsError> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (None, None) if self.tls_client_ca.is_some() => {
                return Err(TlsError::Flags(
                    "--tls-client-ca needs --tls-cert and --tls-key",
                ));
            }
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            _ => {
                return Err(TlsError::Flags(
                    "--tls-cert and --tls-key go together: give both or neither",
                ));
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.tls_client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let roots = root_store("--tls-client-ca", path)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::Pem {
                            flag: "--tls-client-ca",
                            path: path.clone(),
                            reason: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(
            certificates("--tls-cert", cert)?,
            private_key("--tls-key", key)?,
        )?;
        // h2 first: gRPC clients offer only h2, browsers and curl offer both
        // and get h2; HTTP/1.1-only clients (REST scripts) still connect.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }))
    }
}

/// A loaded server TLS configuration, ready to wrap listeners.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The connections `listener` accepts, after their TLS handshake.
    /// Failed handshakes (a plaintext client, an untrusted client
    /// certificate, a timeout) are logged and dropped: they are the
    /// client's problem, and the listener goes on serving.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + Send + 'static {
        let acceptor = self.acceptor.clone();
        // Finished handshakes wait here for the server to take them.
        let (done, ready) = mpsc::channel(64);
        tokio::spawn(accept_loop(listener, acceptor, done));
        ReceiverStream::new(ready)
    }
}

/// Accepts connections and starts a handshake task for each, until the
/// server drops the receiving end.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    done: mpsc::Sender<io::Result<TlsStream<TcpStream>>>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let mut refused = accept_backoff();
    loop {
        let permit = tokio::select! {
            () = done.closed() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let tcp = tokio::select! {
            () = done.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    refused.reset();
                    tcp
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(refused.next_wait()).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // tonic ends the whole server on an accept error it does not
            // know, so a failed handshake must never reach it.
            if let Some(stream) = handshake(&acceptor, tcp).await {
                let _ = done.send(Ok(stream)).await;
            }
        });
    }
}

/// One handshake under [`HANDSHAKE_TIMEOUT`]. Failures (a plaintext client,
/// an untrusted client certificate, a timeout) are the client's problem:
/// logged at debug and dropped.
async fn handshake(acceptor: &TlsAcceptor, tcp: TcpStream) -> Option<TlsStream<TcpStream>> {
    let peer = tcp.peer_addr().ok();
    // Small acks and deliveries must not wait for delayed ACKs, with or
    // without TLS.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(?peer, error = %e, "a connection closed before its handshake");
        return None;
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(?peer, "TLS handshake timed out");
            None
        }
    }
}

/// Every certificate in the PEM file at `path`; at least one.
pub(crate) fn certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    readable(flag, path)?;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(flag, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            flag,
            path: path.to_owned(),
            reason: "no CERTIFICATE block in the file".into(),
        });
    }
    Ok(certs)
}

/// The private key in the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(
    flag: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    readable(flag, path)?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(flag, path, e))
}

fn root_store(flag: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(flag, path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            flag,
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Reads nothing, but turns a missing or unreadable file into an error that
/// names the flag, before the PEM parser gives a vaguer one.
pub(crate) fn readable(flag: &'static str, path: &Path) -> Result<(), TlsError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| TlsError::Read {
            flag,
            path: path.to_owned(),
            source,
        })
}

fn pem_error(flag: &'static str, path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        flag,
        path: path.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no matching PEM block in the file".into()
            }
            other => other.to_string(),
        },
    }
}
