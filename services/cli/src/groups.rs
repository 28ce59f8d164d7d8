//! `tributary groups`: lists the queue's consumer groups, or deletes one,
//! through an ingest server (or `tributary up`).

use anyhow::{Context, bail};
use tributary::{
    bearer::SendTokenArgs,
    channel::{ClientTlsArgs, Link},
    grpc_client, kind,
    proto::{DeleteGroupRequest, ListGroupsRequest, RecordKind, ingest_client::IngestClient},
};

/// `tributary groups list|delete`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List every consumer group: its kinds, live subscribers, lag and how
    /// long it has been idle.
    List(Target),
    /// Delete a consumer group. What it had not acked is no longer kept for
    /// it (counted in tributary_queue_dropped_messages_total).
    Delete {
        /// The group to delete: a parser type's name.
        group: String,
        #[command(flatten)]
        target: Target,
    },
}

/// The ingest server to ask.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// An ingest server, `tributary up`, or Envoy.
    #[arg(
        long,
        env = "TRIBUTARY_CONNECT",
        default_value = "http://127.0.0.1:8080"
    )]
    pub connect: String,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    #[command(flatten)]
    pub auth: SendTokenArgs,
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::List(target) => {
            let mut client = client(&target).await?;
            let groups = client
                .list_groups(ListGroupsRequest {})
                .await
                .with_context(|| format!("listing the groups of {}", target.connect))?
                .into_inner()
                .groups;
            println!(
                "{:<24} {:>7} {:>12} {:>10}  kinds",
                "group", "members", "lag", "idle_secs"
            );
            for g in groups {
                let kinds: Vec<&str> = g
                    .kinds
                    .iter()
                    .filter_map(|k| RecordKind::try_from(*k).ok())
                    .map(kind::name)
                    .collect();
                println!(
                    "{:<24} {:>7} {:>12} {:>10}  {}",
                    g.name,
                    g.members,
                    g.lag,
                    g.idle_seconds,
                    kinds.join(",")
                );
            }
            Ok(())
        }
        Command::Delete { group, target } => {
            if group.is_empty() {
                bail!("the group name is empty");
            }
            let mut client = client(&target).await?;
            let dropped = client
                .delete_group(DeleteGroupRequest {
                    group: group.clone(),
                })
                .await
                .with_context(|| format!("deleting group {group:?} on {}", target.connect))?
                .into_inner()
                .dropped;
            println!(
                "deleted group {group}; {dropped} messages it had not acked are no longer kept for it"
            );
            Ok(())
        }
    }
}

async fn client(target: &Target) -> anyhow::Result<IngestClient<grpc_client::TracedChannel>> {
    let link = Link::new(
        target.connect.clone(),
        target.tls.load()?,
        target.auth.load()?,
    );
    let endpoint = link.endpoint().context("--connect")?;
    let channel = grpc_client::connect_with_bearer(&endpoint, link.bearer())
        .await
        .with_context(|| format!("connecting to {}", target.connect))?;
    Ok(IngestClient::new(channel))
}
