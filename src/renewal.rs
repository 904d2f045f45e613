//! Token lifetime on live WebSockets: the renewal message and the expiry deadline.
//!
//! A client renews by sending the text message `{"type":"token","token":"<JWT>"}`. The
//! server checks the new token like one presented at connect time (same tenant, same
//! store); the parsing here only decides whether a text message is a renewal at all.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a message that claims to be a renewal cannot be one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalError {
    /// `type` is `"token"` but `token` is missing, empty or not a string.
    MissingToken,
}

impl fmt::Display for RenewalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenewalError::MissingToken => f.write_str("renewal message without a token"),
        }
    }
}

impl std::error::Error for RenewalError {}

/// Reads a client text message. `None`: not a renewal (any other text, including JSON
/// of another type, is left to the caller). `Some(Ok(token))`: a renewal carrying
/// `token`. `Some(Err(_))`: typed as a renewal but without a usable token, which the
/// caller treats as a failed authentication.
pub fn parse_renewal(text: &str) -> Option<Result<String, RenewalError>> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    if value.get("type").and_then(|t| t.as_str()) != Some("token") {
        return None;
    }
    match value.get("token").and_then(|t| t.as_str()) {
        Some(token) if !token.is_empty() => Some(Ok(token.to_owned())),
        _ => Some(Err(RenewalError::MissingToken)),
    }
}

/// Time left until a token with `exp` (seconds since the Unix epoch) expires, seen from
/// `now`; zero when it already has (a token is dead at its `exp`, RFC 7519).
pub fn time_left(exp: u64, now: SystemTime) -> Duration {
    let expiry = UNIX_EPOCH.checked_add(Duration::from_secs(exp));
    match expiry {
        Some(expiry) => expiry.duration_since(now).unwrap_or(Duration::ZERO),
        // Beyond what the clock can represent: as good as never.
        None => Duration::from_secs(u64::from(u32::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_message_is_a_renewal() {
        let parsed = parse_renewal(r#"{"type":"token","token":"a.b.c"}"#);
        assert_eq!(parsed, Some(Ok("a.b.c".to_owned())));
        let spaced = parse_renewal(" {\"token\": \"x\", \"type\": \"token\"}");
        assert_eq!(spaced, Some(Ok("x".to_owned())));
    }

    #[test]
    fn other_text_is_not_a_renewal() {
        assert_eq!(parse_renewal("ping"), None);
        assert_eq!(parse_renewal(r#"{"type":"hello"}"#), None);
        assert_eq!(parse_renewal(r#"{"token":"a.b.c"}"#), None);
        assert_eq!(parse_renewal("{not json"), None);
        assert_eq!(parse_renewal("[1,2]"), None);
    }

    #[test]
    fn a_renewal_without_a_usable_token_is_an_error() {
        let missing = Some(Err(RenewalError::MissingToken));
        assert_eq!(parse_renewal(r#"{"type":"token"}"#), missing);
        assert_eq!(parse_renewal(r#"{"type":"token","token":""}"#), missing);
        assert_eq!(parse_renewal(r#"{"type":"token","token":42}"#), missing);
        assert_eq!(parse_renewal(r#"{"type":"token","token":null}"#), missing);
    }

    #[test]
    fn time_left_counts_down_to_zero() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(time_left(1_060, now), Duration::from_secs(60));
        assert_eq!(time_left(1_000, now), Duration::ZERO);
        assert_eq!(time_left(10, now), Duration::ZERO);
        assert!(time_left(u64::MAX, now) >= Duration::from_secs(1 << 31));
    }
}
