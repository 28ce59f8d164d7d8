//! Pages of stored rows bounded in bytes as well as in count, so that a page
//! of large records stays under the message limit a client can take, and the
//! server never holds more than about one page of rows for one request.

use std::future::Future;

use tonic::Status;
use tributary::store::StoreError;

pub use tributary::ranges::{DEFAULT_LIMIT, DEFAULT_MAX_BYTES, MAX_LIMIT, MAX_MAX_BYTES};

/// Rows read by the first query of a page: enough for one query to fill a
/// page of small rows' first stretch, few enough that large rows stay within
/// a few MiB before their size is known.
const FIRST_CHUNK: u32 = 64;

/// Bytes counted per row beside its body: ids, names and timestamps.
const ROW_OVERHEAD: usize = 64;

/// A validated page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub limit: u32,
    pub max_bytes: usize,
}

impl Bounds {
    /// Applies the defaults and checks the maxima the proto documents.
    pub fn new(limit: u32, max_bytes: u32) -> Result<Self, Status> {
        let limit = match limit {
            0 => DEFAULT_LIMIT,
            n if n > MAX_LIMIT => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is above the maximum of {MAX_LIMIT}"
                )));
            }
            n => n,
        };
        let max_bytes = match max_bytes as usize {
            0 => DEFAULT_MAX_BYTES,
            n if n > MAX_MAX_BYTES => {
                return Err(Status::invalid_argument(format!(
                    "max_bytes {n} is above the maximum of {MAX_MAX_BYTES}"
                )));
            }
            n => n,
        };
        Ok(Self { limit, max_bytes })
    }
}

/// A stored row as paging sees it.
pub trait Row {
    fn id(&self) -> i64;
    fn bytes(&self) -> usize;
}

/// Reads rows after `after_id` through `fetch(after_id, count)` until the
/// page holds `bounds.limit` rows or the next would pass `bounds.max_bytes`.
/// A page holds at least one row, so paging always moves on. Returns the rows
/// and the cursor of the next page (0 when there is none).
pub async fn read<R, F, Fut>(
    bounds: Bounds,
    mut after_id: i64,
    mut fetch: F,
) -> Result<(Vec<R>, i64), StoreError>
where
    R: Row,
    F: FnMut(i64, u32) -> Fut,
    Fut: Future<Output = Result<Vec<R>, StoreError>>,
{
    let mut page: Vec<R> = Vec::new();
    let mut bytes = 0usize;
    let mut chunk = bounds.limit.min(FIRST_CHUNK);
    loop {
        let rows = fetch(after_id, chunk).await?;
        let exhausted = rows.len() < chunk as usize;
        for row in rows {
            let size = row.bytes() + ROW_OVERHEAD;
            if !page.is_empty() && bytes + size > bounds.max_bytes {
                let next = page.last().map_or(0, Row::id);
                return Ok((page, next));
            }
            bytes += size;
            after_id = row.id();
            page.push(row);
        }
        let room = bounds.limit as usize - page.len();
        if room == 0 {
            return Ok((page, after_id));
        }
        if exhausted {
            return Ok((page, 0));
        }
        // Ask for about as many rows as the bytes left hold at the sizes
        // seen so far, and one more to learn whether the page is full.
        let average = (bytes / page.len()).max(1);
        let fit = bounds.max_bytes.saturating_sub(bytes) / average + 1;
        chunk = u32::try_from(fit.min(room)).unwrap_or(1).max(1);
    }
}

impl Row for tributary::store::StoredRow {
    fn id(&self) -> i64 {
        self.id
    }
    fn bytes(&self) -> usize {
        self.body.len() + self.parser.len()
    }
}

impl Row for tributary::store::DeadLetterRow {
    fn id(&self) -> i64 {
        self.id
    }
    fn bytes(&self) -> usize {
        self.body.len() + self.parser.len() + self.error.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Fake {
        id: i64,
        bytes: usize,
    }

    impl Row for Fake {
        fn id(&self) -> i64 {
            self.id
        }
        fn bytes(&self) -> usize {
            self.bytes
        }
    }

    /// `n` rows of `bytes` each, ids 1..=n, served like a store would.
    async fn page(n: i64, bytes: usize, bounds: Bounds, after: i64) -> (Vec<i64>, i64, usize) {
        let mut queries = 0;
        let (rows, next) = read(bounds, after, |after_id, count| {
            queries += 1;
            let rows: Vec<Fake> = (after_id + 1..=n)
                .take(count as usize)
                .map(|id| Fake { id, bytes })
                .collect();
            async move { Ok(rows) }
        })
        .await
        .unwrap();
        (rows.iter().map(|r| r.id).collect(), next, queries)
    }

    #[tokio::test]
    async fn large_rows_make_short_pages_with_a_cursor() {
        let bounds = Bounds::new(1000, 0).unwrap();
        let (ids, next, _) = page(200, 60_000, bounds, 0).await;
        let held = ids.len() * (60_000 + ROW_OVERHEAD);
        assert!(held <= DEFAULT_MAX_BYTES && held + 60_064 > DEFAULT_MAX_BYTES);
        assert_eq!(next, *ids.last().unwrap());
        let (more, _, _) = page(200, 60_000, bounds, next).await;
        assert_eq!(more[0], next + 1);
    }

    #[tokio::test]
    async fn small_rows_fill_the_count_in_few_queries() {
        let bounds = Bounds::new(1000, 0).unwrap();
        let (ids, next, queries) = page(5000, 80, bounds, 0).await;
        assert_eq!((ids.len(), next, queries), (1000, 1000, 2));
        let (ids, next, _) = page(1500, 80, bounds, 1000).await;
        assert_eq!((ids.len(), next), (500, 0));
    }

    #[tokio::test]
    async fn a_row_larger_than_the_page_still_moves_paging_on() {
        let bounds = Bounds::new(10, 1000).unwrap();
        let (ids, next, _) = page(3, 5000, bounds, 0).await;
        assert_eq!((ids, next), (vec![1], 1));
    }

    #[test]
    fn out_of_range_bounds_are_refused() {
        assert!(Bounds::new(1001, 0).is_err());
        assert!(Bounds::new(0, (MAX_MAX_BYTES + 1) as u32).is_err());
        assert_eq!(
            Bounds::new(0, 0).unwrap(),
            Bounds {
                limit: 100,
                max_bytes: DEFAULT_MAX_BYTES
            }
        );
    }
}
