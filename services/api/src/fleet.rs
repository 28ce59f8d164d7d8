//! The worker fleet's status, polled from a fleet run's status server
//! (`tributary fleet collect --status-listen`) for the dashboard.

use std::time::Duration;

use tonic::{
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};
use tributary::bearer::{AttachBearer, BearerToken, SendTokenArgs};
use tributary::proto::{
    FleetReport, FleetReportState, GetFleetStatusRequest, fleet_client::FleetClient,
};

/// How long one poll may take. A fleet that does not answer within it is
/// reported unreachable rather than delaying the dashboard's next update,
/// which is due a second after the last one.
const POLL_TIMEOUT: Duration = Duration::from_millis(400);

/// The flag that points the dashboard at a fleet.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FleetArgs {
    /// A worker fleet's status server, as `http://HOST:PORT` (what
    /// `tributary fleet collect --status-listen ADDR` serves). The dashboard
    /// polls it once per update; without it, or while nothing answers there,
    /// the dashboard says that no fleet is reporting.
    #[arg(long, env = "TRIBUTARY_FLEET_STATUS", value_name = "URL")]
    pub fleet_status: Option<String>,
    /// File holding the token to send to --fleet-status, when the fleet's
    /// status server requires one (`fleet collect --status-token-file`).
    #[arg(
        long,
        env = "TRIBUTARY_FLEET_STATUS_TOKEN_FILE",
        requires = "fleet_status"
    )]
    pub fleet_status_token_file: Option<std::path::PathBuf>,
}

impl FleetArgs {
    /// The fleet source the flag names; a malformed address is refused here,
    /// before anything binds.
    pub fn source(&self) -> Result<FleetSource, BadFleetUrl> {
        let token = SendTokenArgs {
            auth_token_file: self.fleet_status_token_file.clone(),
            auth_token: None,
        }
        .load()
        .map_err(|e| BadFleetUrl {
            url: self.fleet_status.clone().unwrap_or_default(),
            reason: e.to_string(),
        })?;
        self.fleet_status.as_deref().map_or_else(
            || Ok(FleetSource::none()),
            |url| FleetSource::with_token(url, token),
        )
    }
}

/// Where the fleet's status comes from, if anywhere.
#[derive(Clone, Debug, Default)]
pub struct FleetSource {
    client: Option<(
        String,
        FleetClient<InterceptedService<Channel, AttachBearer>>,
    )>,
}

/// A `--fleet-status` value that is not a usable address.
#[derive(Debug, thiserror::Error)]
#[error("--fleet-status {url:?} is not an http:// address of a fleet status server: {reason}")]
pub struct BadFleetUrl {
    url: String,
    reason: String,
}

impl FleetSource {
    /// No fleet: every report says so.
    pub fn none() -> Self {
        Self::default()
    }

    /// A fleet status server at `url` (`http://HOST:PORT`). Nothing is
    /// connected yet: the fleet may start after the query API, and come and
    /// go between runs. Call inside a Tokio runtime.
    pub fn at(url: &str) -> Result<Self, BadFleetUrl> {
        Self::with_token(url, None)
    }

    /// [`FleetSource::at`], sending `token` with every poll.
    pub fn with_token(url: &str, token: Option<BearerToken>) -> Result<Self, BadFleetUrl> {
        let bad = |reason: &str| BadFleetUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if !url.starts_with("http://") {
            return Err(bad("only plain http:// is supported"));
        }
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| bad(&e.to_string()))?
            .connect_timeout(POLL_TIMEOUT)
            .timeout(POLL_TIMEOUT);
        let client =
            FleetClient::with_interceptor(endpoint.connect_lazy(), AttachBearer::new(token));
        Ok(Self {
            client: Some((url.to_owned(), client)),
        })
    }

    /// Asks the fleet for its status now.
    pub async fn report(&self) -> FleetReport {
        let Some((url, client)) = &self.client else {
            return FleetReport {
                state: FleetReportState::NotConfigured.into(),
                status: None,
                detail: "no fleet status address is configured (--fleet-status)".into(),
            };
        };
        match client
            .clone()
            .get_fleet_status(GetFleetStatusRequest {})
            .await
        {
            Ok(status) => FleetReport {
                state: FleetReportState::Reporting.into(),
                status: Some(status.into_inner()),
                detail: String::new(),
            },
            Err(status) => {
                tracing::debug!(%url, code = ?status.code(), "fleet status not available");
                FleetReport {
                    state: FleetReportState::Unreachable.into(),
                    status: None,
                    detail: format!("no fleet answers at {url}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A lazy channel spawns its connection task, so it needs a runtime.
    #[tokio::test]
    async fn only_plain_http_addresses_are_accepted() {
        assert!(FleetSource::at("http://127.0.0.1:7000").is_ok());
        let err = FleetSource::at("127.0.0.1:7000").unwrap_err().to_string();
        assert!(err.contains("http://"), "{err}");
        assert!(FleetSource::at("https://fleet:7000").is_err());
        assert!(FleetSource::at("http://").is_err());
    }

    #[tokio::test]
    async fn without_an_address_the_report_says_no_fleet_is_configured() {
        let report = FleetSource::none().report().await;
        assert_eq!(report.state(), FleetReportState::NotConfigured);
        assert!(report.status.is_none());
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_unreachable() {
        let port = tributary::testkit::free_port();
        let source = FleetSource::at(&format!("http://127.0.0.1:{port}")).unwrap();
        let report = source.report().await;
        assert_eq!(report.state(), FleetReportState::Unreachable);
        assert!(
            report.detail.contains(&port.to_string()),
            "{}",
            report.detail
        );
    }
}
