//! How a client reaches a server: the address, the TLS it expects there and
//! the bearer token it presents. Every gRPC client of the mesh builds its
//! endpoint here, so that TLS and credentials work the same everywhere.

use std::{path::PathBuf, time::Duration};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::{
    bearer::{AttachBearer, BearerToken},
    tls::{self, TlsError},
};

/// TLS flags of a client. `https://` addresses select TLS; `http://` ones
/// stay plaintext.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// PEM CA certificates to trust for `https://` servers, instead of the
    /// system's trusted roots.
    #[arg(long, env = "TRIBUTARY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate to present to servers that require one
    /// (mutual TLS).
    #[arg(long, env = "TRIBUTARY_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of --tls-client-cert.
    #[arg(long, env = "TRIBUTARY_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// Reads and checks the files.
    pub fn load(&self) -> Result<ClientTls, TlsError> {
        let mut config = ClientTlsConfig::new();
        let mut given = false;
        match &self.tls_ca {
            Some(path) => {
                // Parsed here, not only by tonic, so that a bad file is
                // reported with its flag before anything connects.
                tls::certificates("--tls-ca", path)?;
                config = config.ca_certificate(Certificate::from_pem(read("--tls-ca", path)?));
                given = true;
            }
            None => config = config.with_native_roots(),
        }
        match (&self.tls_client_cert, &self.tls_client_key) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                tls::certificates("--tls-client-cert", cert)?;
                tls::private_key("--tls-client-key", key)?;
                config = config.identity(Identity::from_pem(
                    read("--tls-client-cert", cert)?,
                    read("--tls-client-key", key)?,
                ));
                given = true;
            }
            _ => {
                return Err(TlsError::Flags(
                    "--tls-client-cert and --tls-client-key go together: give both or neither",
                ));
            }
        }
        Ok(ClientTls { config, given })
    }
}

/// A loaded client TLS configuration.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: ClientTlsConfig,
    /// Whether any TLS file was given: then a plaintext address is a mistake.
    given: bool,
}

impl Default for ClientTls {
    fn default() -> Self {
        Self {
            config: ClientTlsConfig::new().with_native_roots(),
            given: false,
        }
    }
}

impl ClientTls {
    /// Trusts `ca_pem` only and checks the server's certificate under
    /// `server_name` whatever address is dialled: for a process that
    /// connects to its own listener over loopback.
    pub fn for_own_listener(
        ca_pem: Vec<u8>,
        identity: Option<(Vec<u8>, Vec<u8>)>,
        server_name: &str,
    ) -> Self {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name(server_name);
        if let Some((cert, key)) = identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        Self {
            config,
            given: true,
        }
    }
}

/// A client-side setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("bad server address {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "TLS files were given but {url:?} is plaintext: use an https:// address, or drop the --tls-* flags"
    )]
    PlaintextWithTls { url: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Where a client connects and with what: address, TLS and token.
#[derive(Debug, Clone)]
pub struct Link {
    url: String,
    tls: ClientTls,
    token: Option<BearerToken>,
}

impl Link {
    /// A link to `url`; `https://` turns TLS on with `tls`.
    pub fn new(url: impl Into<String>, tls: ClientTls, token: Option<BearerToken>) -> Self {
        Self {
            url: url.into(),
            tls,
            token,
        }
    }

    /// A plaintext link without a token, as tests and tools on loopback use.
    pub fn plain(url: impl Into<String>) -> Self {
        Self::new(url, ClientTls::default(), None)
    }

    /// The same TLS and token, to another address.
    pub fn to(&self, url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..self.clone()
        }
    }

    /// The same address and TLS, without the token: for services that do
    /// not check it, which need not see it.
    pub fn without_token(&self) -> Self {
        Self {
            token: None,
            ..self.clone()
        }
    }

    /// The server address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The interceptor that adds this link's bearer token to each call.
    pub fn bearer(&self) -> AttachBearer {
        AttachBearer::new(self.token.clone())
    }

    /// The endpoint every client of the mesh connects through: TLS for
    /// `https://`, Nagle off (acks and deliveries are small and latency
    /// bound), and a connect timeout so that a dead address fails fast.
    pub fn endpoint(&self) -> Result<Endpoint, ChannelError> {
        let bad = |reason: String| ChannelError::BadUrl {
            url: self.url.clone(),
            reason,
        };
        let endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        match endpoint.uri().scheme_str() {
            Some("https") => endpoint
                .tls_config(self.tls.config.clone())
                .map_err(|e| bad(e.to_string())),
            Some("http") if self.tls.given => Err(ChannelError::PlaintextWithTls {
                url: self.url.clone(),
            }),
            Some("http") => Ok(endpoint),
            _ => Err(bad("the address must start with http:// or https://".into())),
        }
    }
}

fn read(flag: &'static str, path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}
