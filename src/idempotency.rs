//! `Idempotency-Key` on stock updates: a retried update is answered, not applied twice.
//!
//! A POS terminal that timed out waiting for a 200 cannot know whether its update was
//! applied. If it sent an `Idempotency-Key`, it can resend the same request: the first
//! time a key is seen (per tenant and store) the update is applied and its response is
//! stored under the key in the same pass transaction, so the 200 and the key become
//! durable together or not at all. Later requests with that key get the stored response
//! with `Idempotent-Replayed: true` and change nothing; a different request under the
//! same key gets 422.
//!
//! Only the writes that add to stock take a key (`PUT …/{item}/update` and the batch);
//! setting a threshold is idempotent by itself, and reads need nothing. A key is used
//! up only by a 2xx answer: a request refused with 4xx or 503 changed nothing, so its
//! key stays free and a corrected retry under it is applied. Expired keys are purged by
//! the server's housekeeping after `storage.idempotency_key_ttl_seconds`.

use std::time::Instant;

use crate::api::{self, CallResult, StockCall};
use crate::http::{Method, RequestHead, Response};
use crate::service::Service;
use crate::store::{Store, Timestamp};

/// The request header that carries the key.
pub const HEADER: &str = "idempotency-key";

/// The response header set on a replayed answer.
pub const REPLAYED: &str = "Idempotent-Replayed";

/// Longest key accepted, in bytes. Long enough for a UUID with a terminal prefix,
/// short enough that keys cannot bloat the table.
pub const MAX_KEY_LEN: usize = 255;

/// Why a request's `Idempotency-Key` could not be honoured; each maps to a 4xx answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyError {
    /// The header is empty, too long, or holds bytes other than visible ASCII (400).
    BadKey,
    /// The key was already used for a different method, path or body (422).
    Conflict,
}

impl IdempotencyError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            IdempotencyError::BadKey => 400,
            IdempotencyError::Conflict => 422,
        }
    }
}

impl std::fmt::Display for IdempotencyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdempotencyError::BadKey => write!(
                f,
                "idempotency-key must be 1 to {MAX_KEY_LEN} visible ascii characters"
            ),
            IdempotencyError::Conflict => f.write_str(
                "idempotency-key was already used for a different request; use a new key",
            ),
        }
    }
}

impl std::error::Error for IdempotencyError {}

/// The key a request carries, if any: `Ok(None)` without the header, `Err(BadKey)` for
/// a header that is not 1 to [`MAX_KEY_LEN`] visible ASCII characters (no spaces).
pub fn request_key(head: &RequestHead) -> Result<Option<&str>, IdempotencyError> {
    let Some((_, raw)) = head
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(HEADER))
    else {
        return Ok(None);
    };
    // A key that is not text is refused, not ignored: ignoring it would apply a retry.
    let Ok(value) = std::str::from_utf8(raw) else {
        return Err(IdempotencyError::BadKey);
    };
    let key = value.trim();
    let valid =
        !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        Ok(Some(key))
    } else {
        Err(IdempotencyError::BadKey)
    }
}

/// The method's name as sent, for the request hash.
fn method_name(method: Method) -> &'static str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Put => "PUT",
        Method::Post => "POST",
        Method::Other => "OTHER",
    }
}

/// Serves one authorized stock call like [`api::serve_stock`], honouring an
/// `Idempotency-Key` on an update or a batch.
///
/// Contract, for a call that takes a key and carries one:
/// - key stored with the same request hash: the stored status and body, with
///   `Idempotent-Replayed: true`; nothing is written. The store sees this pass's own
///   records, so a second request with the key in the same pass is a replay too, and
///   the caller holds its answer for the pass commit like any other.
/// - key stored with another hash: 422, nothing written.
/// - key not stored: the call is served; a 2xx answer is recorded under the key in the
///   pass transaction before it is returned.
///
/// `Err` means the store failed (lookup, write or record): the caller voids the pass
/// and answers 503, as for any failed write.
pub fn serve_stock(
    service: &mut Service,
    tenant: &str,
    store: &str,
    call: &StockCall,
    head: &RequestHead,
    body: &[u8],
    received: Instant,
) -> CallResult {
    let takes_key = matches!(call, StockCall::Update(_) | StockCall::Batch);
    if !takes_key {
        return api::serve_stock(service, tenant, store, call, head, body, received);
    }
    let operation = call.operation();
    let key = match request_key(head) {
        Ok(Some(key)) => key,
        Ok(None) => return api::serve_stock(service, tenant, store, call, head, body, received),
        Err(error) => return Ok(api::failure(error.status(), &error.to_string(), operation)),
    };

    // Seen before: replay the stored answer, or refuse a different request.
    let hash = Store::request_hash(method_name(head.method), &head.path, body);
    if let Some(stored) = service.store.idempotency_lookup(tenant, store, key)? {
        if stored.request_hash != hash {
            let error = IdempotencyError::Conflict;
            return Ok(api::failure(error.status(), &error.to_string(), operation));
        }
        crate::event!(
            log::Level::Debug,
            "idempotent_replay",
            tenant_id = tenant,
            store_code = store,
            operation = operation
        );
        return Ok(Response::json(stored.status, stored.body).with_header(REPLAYED, "true"));
    }

    // First time: serve, then record a success in the same pass transaction.
    let response = api::serve_stock(service, tenant, store, call, head, body, received)?;
    if !(200..300).contains(&response.status) {
        return Ok(response);
    }
    let text = String::from_utf8_lossy(&response.body);
    service.store.idempotency_record(
        tenant,
        store,
        key,
        hash,
        response.status,
        &text,
        Timestamp::now(),
    )?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HeadLimits, parse_head};

    fn head_with(extra: &str) -> RequestHead {
        let text = format!("PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n{extra}\r\n");
        let limits = HeadLimits {
            max_head_bytes: 8192,
            max_headers: 32,
        };
        parse_head(text.as_bytes(), limits).unwrap().unwrap()
    }

    #[test]
    fn key_is_optional_and_trimmed() {
        assert_eq!(request_key(&head_with("")), Ok(None));
        let head = head_with("Idempotency-Key:  pos-7:0001 \r\n");
        assert_eq!(request_key(&head), Ok(Some("pos-7:0001")));
    }

    #[test]
    fn bad_keys_are_refused_with_400() {
        let long = "k".repeat(MAX_KEY_LEN + 1);
        for value in ["", "two words", long.as_str()] {
            let head = head_with(&format!("Idempotency-Key: {value}\r\n"));
            assert_eq!(
                request_key(&head),
                Err(IdempotencyError::BadKey),
                "{value:?}"
            );
        }
        assert_eq!(IdempotencyError::BadKey.status(), 400);
        assert_eq!(IdempotencyError::Conflict.status(), 422);
        let max = "k".repeat(MAX_KEY_LEN);
        let head = head_with(&format!("Idempotency-Key: {max}\r\n"));
        assert_eq!(request_key(&head), Ok(Some(max.as_str())));
    }

    #[test]
    fn hash_tells_method_path_and_body_apart() {
        let base = Store::request_hash(method_name(Method::Put), "/a", b"{}");
        assert_eq!(base, Store::request_hash("PUT", "/a", b"{}"));
        assert_ne!(
            base,
            Store::request_hash(method_name(Method::Post), "/a", b"{}")
        );
        assert_ne!(base, Store::request_hash("PUT", "/b", b"{}"));
        assert_ne!(base, Store::request_hash("PUT", "/a", b"{ }"));
    }
}
