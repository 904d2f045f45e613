//! The store dashboard's static files, embedded in the binary and served by path.
//!
//! Store networks often have no internet, so the page needs no CDN and no build step:
//! its HTML, script, style sheet and icon are compiled in with `include_bytes!`. The
//! browser client module the examples ship is served too, and the dashboard imports it,
//! so the page and the example share one tested client.
//!
//! Every file goes out with a strict Content-Security-Policy: scripts, styles, images
//! and connections from this origin only, no inline code, no framing, no forms posted
//! anywhere. The page keeps its token in the URL fragment and `sessionStorage`, never
//! in a request the server would see outside the WebSocket query string.

use crate::http::Response;

/// The policy on every embedded file. `'self'` in `connect-src` also covers `ws:` to
/// this host and port (CSP Level 3), which is what the page's WebSocket needs.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Browsers revalidate on every load. The files are small and served on the store's
/// own network, and a stale script beside a new page after an upgrade of the binary
/// would cost more than the bytes saved; the names carry no version to cache by.
const CACHE_CONTROL: &str = "no-cache";

/// One embedded file.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    /// The request path it is served at; starts with `/`.
    pub path: &'static str,
    /// The `Content-Type` header value.
    pub content_type: &'static str,
    /// The file's bytes, as compiled in.
    pub body: &'static [u8],
}

/// Every embedded file; paths are unique.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../assets/dashboard/index.html"),
    },
    Asset {
        path: "/dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/dashboard/app.js"),
    },
    Asset {
        path: "/stock-alerts-client.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../examples/browser-client.js"),
    },
    Asset {
        path: "/dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/dashboard/app.css"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../assets/dashboard/favicon.svg"),
    },
];

/// The embedded file served at `path` (the path alone, without a query), if any.
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.path == path)
}

impl Asset {
    /// The 200 response carrying this file and its security and cache headers.
    pub fn response(&self) -> Response {
        Response {
            status: 200,
            headers: Vec::new(),
            content_type: self.content_type,
            body: self.body.to_vec(),
        }
        .with_header("Cache-Control", CACHE_CONTROL)
        .with_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Referrer-Policy", "no-referrer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
        response
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn paths_are_unique_and_absolute() {
        for (index, asset) in ASSETS.iter().enumerate() {
            assert!(asset.path.starts_with('/'), "{}", asset.path);
            assert!(!asset.body.is_empty(), "{} is empty", asset.path);
            let again = ASSETS.iter().skip(index + 1).any(|a| a.path == asset.path);
            assert!(!again, "{} listed twice", asset.path);
        }
    }

    #[test]
    fn find_matches_whole_paths_only() {
        assert_eq!(
            find("/").map(|a| a.content_type),
            Some("text/html; charset=utf-8")
        );
        assert!(find("/dashboard.js").is_some());
        assert!(find("/dashboard.js/").is_none());
        assert!(find("/DASHBOARD.JS").is_none());
        assert!(find("/index.html").is_none());
        assert!(find("").is_none());
    }

    #[test]
    fn every_response_carries_the_policy_and_nosniff() {
        for asset in ASSETS {
            let response = asset.response();
            assert_eq!(response.status, 200);
            assert_eq!(response.body, asset.body);
            assert_eq!(
                header(&response, "Content-Security-Policy"),
                Some(CONTENT_SECURITY_POLICY)
            );
            assert_eq!(header(&response, "X-Content-Type-Options"), Some("nosniff"));
            assert_eq!(header(&response, "Cache-Control"), Some("no-cache"));
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }

    #[test]
    fn page_loads_only_the_embedded_script_and_style() {
        let page = std::str::from_utf8(find("/").map_or(&[][..], |a| a.body)).unwrap();
        assert!(page.contains(r#"<script type="module" src="/dashboard.js"></script>"#));
        assert!(page.contains(r#"href="/dashboard.css""#));
        assert!(!page.contains("<style"), "inline style in the page");
        assert!(
            !page.contains(" style="),
            "inline style attribute in the page"
        );
        assert!(!page.contains("http://") && !page.contains("https://"));
    }
}
