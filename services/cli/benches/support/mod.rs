//! What more than one benchmark needs.

use std::time::Duration;

use tributary::proto::{GetStatsRequest, query_client::QueryClient};

/// Returns once `parser` has stored at least `count` records, asking the
/// query API at `url` every 5 ms (a benchmark's clock runs meanwhile, so the
/// poll is short).
pub async fn wait_stored(url: &str, parser: &str, count: u64) {
    let mut query = QueryClient::connect(url.to_owned()).await.unwrap();
    loop {
        let stats = query
            .get_stats(GetStatsRequest {})
            .await
            .unwrap()
            .into_inner();
        if stats
            .parsers
            .iter()
            .any(|p| p.parser == parser && p.stored >= count)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
