//! HTTP/1.1 request heads parsed with `httparse`, and responses written into byte buffers.
//!
//! This module knows framing only: where a head ends, how long the body is, whether the
//! connection stays open. Routing and JSON live in `api`; sockets live in `server`.

use std::fmt;

/// Request methods the API distinguishes; anything else is `Other` and gets 405 or 404.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Other,
}

impl Method {
    fn parse(name: &str) -> Method {
        match name {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "POST" => Method::Post,
            _ => Method::Other,
        }
    }
}

/// A complete, validated request head. The body (if any) follows at `head_len`.
#[derive(Debug)]
pub struct RequestHead {
    /// The method, reduced to the ones the server routes on.
    pub method: Method,
    /// The path part of the request target, before any `?`; never empty.
    pub path: String,
    /// The query string after `?`, without it. Never logged: it may carry a token.
    pub query: Option<String>,
    /// Minor version of HTTP/1.x (0 or 1).
    pub minor_version: u8,
    /// Every header as sent, names in their original case, values as raw bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Declared body length; `None` when no Content-Length was sent.
    pub content_length: Option<usize>,
    /// Whether the connection stays open after the response (HTTP/1.1 default, or 1.0
    /// with `Connection: keep-alive`), before the server's own decision to close.
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue` and waits for a go-ahead before the body.
    pub expect_continue: bool,
    /// Bytes taken by the request line and headers, including the blank line.
    pub head_len: usize,
}

impl RequestHead {
    /// The first header named `name` (case-insensitive), as text; `None` if absent or
    /// not valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// One query parameter, percent-decoded; `None` when absent.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The bearer token of an `Authorization: Bearer …` header, if one was sent.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.header("authorization")?.trim();
        let (scheme, token) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        Some(token.trim())
    }
}

/// Why a request head was refused. Each maps to one status; after any of them the
/// connection is closed, because the framing of what follows can no longer be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Not parseable as an HTTP/1.x request line and headers.
    Malformed(&'static str),
    /// The head grew past the configured byte limit.
    TooLarge { limit: usize },
    /// More header lines than the configured limit.
    TooManyHeaders { limit: usize },
    /// A protocol other than HTTP/1.x.
    UnsupportedVersion,
    /// Content-Length absent on a body-carrying request, or chunked transfer coding.
    LengthRequired,
    /// Content-Length not a non-negative decimal, or sent twice with different values.
    BadContentLength,
}

impl HeadError {
    /// The HTTP status that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Malformed(_) | HeadError::BadContentLength => 400,
            HeadError::TooLarge { .. } | HeadError::TooManyHeaders { .. } => 431,
            HeadError::UnsupportedVersion => 505,
            HeadError::LengthRequired => 411,
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::Malformed(what) => write!(f, "malformed request: {what}"),
            HeadError::TooLarge { limit } => {
                write!(f, "request head larger than {limit} bytes")
            }
            HeadError::TooManyHeaders { limit } => {
                write!(f, "more than {limit} request headers")
            }
            HeadError::UnsupportedVersion => f.write_str("only HTTP/1.0 and HTTP/1.1 are served"),
            HeadError::LengthRequired => f.write_str(
                "a request body needs a Content-Length header (chunked bodies are refused)",
            ),
            HeadError::BadContentLength => f.write_str("invalid Content-Length header"),
        }
    }
}

impl std::error::Error for HeadError {}

/// Limits applied while a head is parsed.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Most bytes a head may take, blank line included.
    pub max_head_bytes: usize,
    /// Most header lines.
    pub max_headers: usize,
}

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)` means the head is not complete yet and `buf` is still within the size
/// limit: read more and call again. `Ok(Some(head))` is a complete head; its body, if
/// any, starts at `head.head_len`.
pub fn parse_head(buf: &[u8], limits: HeadLimits) -> Result<Option<RequestHead>, HeadError> {
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut request = httparse::Request::new(&mut slots);

    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => {
            return Err(HeadError::TooLarge {
                limit: limits.max_head_bytes,
            });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        Err(httparse::Error::Version) => return Err(version_error(buf)),
        Err(_) => return Err(HeadError::Malformed("bad request line or header syntax")),
    };
    if head_len > limits.max_head_bytes {
        return Err(HeadError::TooLarge {
            limit: limits.max_head_bytes,
        });
    }

    // httparse fills every field of a complete head; the checks only keep us panic-free.
    let method = Method::parse(request.method.unwrap_or(""));
    let minor_version = request.version.unwrap_or(1);
    let target = request.path.unwrap_or("");
    if !target.starts_with('/') {
        return Err(HeadError::Malformed(
            "request target must be an absolute path",
        ));
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (target.to_owned(), None),
    };

    let headers: Vec<(String, Vec<u8>)> = request
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();

    let mut head = RequestHead {
        method,
        path,
        query,
        minor_version,
        headers,
        content_length: None,
        keep_alive: minor_version >= 1,
        expect_continue: false,
        head_len,
    };
    apply_framing_headers(&mut head)?;
    Ok(Some(head))
}

/// httparse says "version" both for `HTTP/2.0` and for garbage where the version should
/// be; only a well-formed `HTTP/x.y` that is not 1.x deserves 505.
fn version_error(buf: &[u8]) -> HeadError {
    let line_end = buf
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(buf.len());
    let line = &buf[..line_end];
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or(b"");
    let looks_like_http = version.len() == 8
        && version.starts_with(b"HTTP/")
        && version[5].is_ascii_digit()
        && version[6] == b'.'
        && version[7].is_ascii_digit();
    if looks_like_http {
        HeadError::UnsupportedVersion
    } else {
        HeadError::Malformed("bad request line")
    }
}

/// Reads Content-Length, Transfer-Encoding, Connection and Expect into `head`.
fn apply_framing_headers(head: &mut RequestHead) -> Result<(), HeadError> {
    let mut content_length: Option<usize> = None;
    for (name, value) in &head.headers {
        if name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(value).map_err(|_| HeadError::BadContentLength)?;
            let text = text.trim();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadError::BadContentLength);
            }
            let length: usize = text.parse().map_err(|_| HeadError::BadContentLength)?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(HeadError::BadContentLength);
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked bodies are refused outright (RFC 9112 allows a 411 here); a
            // smuggling attempt pairing it with Content-Length is refused the same way.
            return Err(HeadError::LengthRequired);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                // HTTP/1.0 keep-alive is not offered: a 1.0 connection always closes
                // after its response, which 1.0 clients expect without any header.
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }

    let carries_body = matches!(head.method, Method::Put | Method::Post);
    if carries_body && content_length.is_none() {
        return Err(HeadError::LengthRequired);
    }
    head.content_length = content_length;
    Ok(())
}

/// An HTTP response ready to be written.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Extra headers beyond Content-Type, Content-Length and Connection.
    pub headers: Vec<(&'static str, String)>,
    /// Media type of the body.
    pub content_type: &'static str,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response with the given status and body text.
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            headers: Vec::new(),
            content_type: "application/json",
            body: body.into_bytes(),
        }
    }

    /// Adds a header, builder style.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Serializes the response onto `out`. `keep_alive` false adds `Connection: close`;
    /// `head_only` (a HEAD request) sends the headers with the body's length but no body.
    pub fn write_to(&self, out: &mut Vec<u8>, keep_alive: bool, head_only: bool) {
        use std::io::Write as _;

        let reason = reason_phrase(self.status);
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", self.status, reason);
        let _ = write!(out, "Content-Type: {}\r\n", self.content_type);
        let _ = write!(out, "Content-Length: {}\r\n", self.body.len());
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

/// The interim response that tells an `Expect: 100-continue` client to send its body.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Standard reason phrases for the statuses the server uses.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 1024,
        max_headers: 8,
    };

    fn parse(text: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        parse_head(text, LIMITS)
    }

    #[test]
    fn complete_head_with_body_length_and_query() {
        let raw = b"PUT /a/b?token=x%20y HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n{}";
        let head = parse(raw).unwrap().unwrap();

        assert_eq!(head.method, Method::Put);
        assert_eq!(head.path, "/a/b");
        assert_eq!(head.query_param("token").as_deref(), Some("x y"));
        assert_eq!(head.content_length, Some(12));
        assert!(head.keep_alive);
        assert_eq!(head.head_len, raw.len() - 2);
    }

    #[test]
    fn every_prefix_of_a_head_is_partial() {
        let raw = b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n";
        for cut in 0..raw.len() {
            assert!(parse(&raw[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        assert!(parse(raw).unwrap().is_some());
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        let close = parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        let old = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        let old_kept = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();

        assert!(!close.keep_alive);
        assert!(!old.keep_alive);
        assert!(
            !old_kept.unwrap().keep_alive,
            "1.0 keep-alive is not offered"
        );
    }

    #[test]
    fn framing_errors_map_to_statuses() {
        let cases: &[(&[u8], u16)] = &[
            (b"PUT / HTTP/1.1\r\n\r\n", 411),
            (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
            (b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                400,
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"\x00\x01garbage\r\n\r\n", 400),
            (b"GET nopath HTTP/1.1\r\n\r\n", 400),
        ];
        for (raw, status) in cases {
            let error = parse(raw).unwrap_err();
            assert_eq!(error.status(), *status, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn oversized_heads_and_header_floods_get_431() {
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(2000));
        assert_eq!(parse(long.as_bytes()).unwrap_err().status(), 431);

        let mut flood = String::from("GET / HTTP/1.1\r\n");
        for i in 0..20 {
            flood.push_str(&format!("X-{i}: v\r\n"));
        }
        flood.push_str("\r\n");
        assert_eq!(parse(flood.as_bytes()).unwrap_err().status(), 431);
    }

    #[test]
    fn bearer_token_is_read_case_insensitively() {
        let head = parse(b"GET / HTTP/1.1\r\nauthorization: bearer abc.def\r\n\r\n").unwrap();
        assert_eq!(head.unwrap().bearer_token(), Some("abc.def"));

        let basic = parse(b"GET / HTTP/1.1\r\nAuthorization: Basic abc\r\n\r\n").unwrap();
        assert_eq!(basic.unwrap().bearer_token(), None);
    }

    #[test]
    fn response_serializes_with_length_and_close() {
        let mut out = Vec::new();
        Response::json(404, "{}".into())
            .with_header("X-A", "1")
            .write_to(&mut out, false, false);
        let text = String::from_utf8(out).unwrap();

        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.contains("X-A: 1\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{}"));
    }
}
