//! The live dashboard page and its assets, compiled into the binary so that
//! the page needs no files and no network at run time.

use axum::{
    Router,
    http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, X_CONTENT_TYPE_OPTIONS},
    response::IntoResponse,
    routing::get,
};

/// Where the page's scripts and styles are served from. The prefix is
/// stable: Envoy routes it (and `/`) to the api service.
pub const ASSETS_PREFIX: &str = "/assets/";

/// (path, content type, body) of everything the page loads.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../assets/index.html"),
    ),
    (
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/app.js"),
    ),
    (
        "/assets/dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/dashboard.css"),
    ),
    (
        "/assets/vendor/uplot/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "/assets/vendor/uplot/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/vendor/uplot/uPlot.min.css"),
    ),
    (
        "/assets/vendor/uplot/LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/vendor/uplot/LICENSE"),
    ),
];

/// Routes for `/` and every asset under [`ASSETS_PREFIX`]. They have no
/// fallback, so they merge into a router that has one (tonic's).
pub fn routes() -> Router {
    FILES
        .iter()
        .fold(Router::new(), |router, &(path, content_type, body)| {
            router.route(
                path,
                get(move || async move {
                    (
                        [
                            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
                            // The files change only with the binary; revalidating
                            // keeps an upgraded server from serving a stale page.
                            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
                        ],
                        body,
                    )
                        .into_response()
                }),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_under_the_stable_prefix() {
        for (path, _, body) in FILES {
            assert!(!body.is_empty(), "{path} is empty");
            assert!(*path == "/" || path.starts_with(ASSETS_PREFIX), "{path}");
        }
    }

    #[test]
    fn the_page_loads_only_assets_that_are_served() {
        let page = std::str::from_utf8(FILES[0].2).unwrap();
        // Every src= and href= on the page points at a served file (or is
        // the empty data: icon), so the page works offline.
        for attr in ["src=\"", "href=\""] {
            for part in page.split(attr).skip(1) {
                let target = &part[..part.find('"').unwrap()];
                assert!(
                    target.starts_with("data:") || FILES.iter().any(|(p, _, _)| *p == target),
                    "the page loads {target}, which is not served"
                );
            }
        }
    }
}
