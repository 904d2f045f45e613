//! Routes and handlers of the stock HTTP API, and its JSON envelope.
//!
//! Paths and shapes follow the stock service POS integrations already speak to:
//! `/api/v1/tenants/{tenant}/stores/{store}/stock/…`. Every response is the envelope
//! `{"success","code","message","data","operation"}` with camelCase data.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::alert::AlertKind;
use crate::http::{Method, RequestHead, Response};
use crate::service::Service;
use crate::store::{Item, StoreError, Timestamp, UpdateInput, UpdateType};

/// Longest tenant, store or item identifier accepted.
const MAX_IDENTIFIER: usize = 64;

/// Most lines in one batch update.
const MAX_BATCH_LINES: usize = 1000;

/// Largest page size for listings.
const MAX_PAGE_LIMIT: u32 = 1000;

/// Where a request goes, decided from its method and path alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /` and the other files of the store dashboard.
    Asset(&'static crate::assets::Asset),
    /// `GET /health`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `GET /api/v1/ws/{tenant}/{store}`: a WebSocket upgrade.
    WebSocket { tenant: String, store: String },
    /// One of the stock API calls for one tenant and store.
    Stock {
        tenant: String,
        store: String,
        call: StockCall,
    },
}

/// The stock API calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockCall {
    List,
    Low,
    ReorderAlerts,
    Batch,
    Get(String),
    Update(String),
    Reorder(String),
    Minimum(String),
    History(String),
}

impl StockCall {
    /// The route template used in metrics labels and logs (never the raw path).
    pub fn template(&self) -> &'static str {
        match self {
            StockCall::List => "stock_list",
            StockCall::Low => "stock_low",
            StockCall::ReorderAlerts => "stock_reorder_alerts",
            StockCall::Batch => "stock_batch",
            StockCall::Get(_) => "stock_get",
            StockCall::Update(_) => "stock_update",
            StockCall::Reorder(_) => "stock_reorder",
            StockCall::Minimum(_) => "stock_minimum",
            StockCall::History(_) => "stock_history",
        }
    }

    /// The `operation` field of the envelope.
    pub fn operation(&self) -> &'static str {
        match self {
            StockCall::List => "get_store_stocks",
            StockCall::Low => "get_low_stocks",
            StockCall::ReorderAlerts => "get_reorder_alerts",
            StockCall::Batch => "update_stocks",
            StockCall::Get(_) => "get_stock",
            StockCall::Update(_) => "update_stock",
            StockCall::Reorder(_) => "set_reorder_point",
            StockCall::Minimum(_) => "set_minimum_stock",
            StockCall::History(_) => "get_stock_history",
        }
    }

    /// Whether the call writes (and so needs the group commit before it is answered).
    pub fn writes(&self) -> bool {
        matches!(
            self,
            StockCall::Batch
                | StockCall::Update(_)
                | StockCall::Reorder(_)
                | StockCall::Minimum(_)
        )
    }

    /// The method the call is served on.
    fn method(&self) -> Method {
        match self {
            StockCall::Batch => Method::Post,
            StockCall::Update(_) | StockCall::Reorder(_) | StockCall::Minimum(_) => Method::Put,
            _ => Method::Get,
        }
    }
}

impl Route {
    /// The route template for metrics and logs.
    pub fn template(&self) -> &'static str {
        match self {
            Route::Asset(_) => "asset",
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::WebSocket { .. } => "websocket",
            Route::Stock { call, .. } => call.template(),
        }
    }
}

/// Why a path and method did not reach a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No such path (404).
    NotFound,
    /// The path exists for other methods (405, with the `Allow` value).
    MethodNotAllowed { allow: &'static str },
    /// An identifier in the path breaks the identifier rule (400).
    BadIdentifier { what: &'static str },
}

impl RouteError {
    /// The response for this error.
    pub fn response(&self) -> Response {
        match self {
            RouteError::NotFound => failure(404, "no such endpoint", "route"),
            RouteError::MethodNotAllowed { allow } => {
                let message = format!("method not allowed here; use {allow}");
                failure(405, &message, "route").with_header("Allow", *allow)
            }
            RouteError::BadIdentifier { what } => {
                let message = format!(
                    "{what} must be 1 to {MAX_IDENTIFIER} characters of A-Z a-z 0-9 _ . - \
                     and not only dots"
                );
                failure(400, &message, "route")
            }
        }
    }
}

/// Whether `text` is a valid tenant, store or item identifier: 1 to 64 characters of
/// `[A-Za-z0-9_.-]`, and not made only of dots (so `.` and `..` never look like paths).
pub fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_IDENTIFIER
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !text.bytes().all(|b| b == b'.')
}

fn identifier(text: &str, what: &'static str) -> Result<String, RouteError> {
    if is_identifier(text) {
        Ok(text.to_owned())
    } else {
        Err(RouteError::BadIdentifier { what })
    }
}

/// Finds the route for `method` and `path`.
pub fn route(method: Method, path: &str) -> Result<Route, RouteError> {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let get_only = |route: Route| match method {
        Method::Get | Method::Head => Ok(route),
        _ => Err(RouteError::MethodNotAllowed { allow: "GET, HEAD" }),
    };

    if let Some(asset) = crate::assets::find(path) {
        return get_only(Route::Asset(asset));
    }
    match segments.as_slice() {
        ["health"] => get_only(Route::Health),
        ["metrics"] => get_only(Route::Metrics),
        ["api", "v1", "ws", tenant, store] => {
            let tenant = identifier(tenant, "tenant_id")?;
            let store = identifier(store, "store_code")?;
            match method {
                Method::Get => Ok(Route::WebSocket { tenant, store }),
                _ => Err(RouteError::MethodNotAllowed { allow: "GET" }),
            }
        }
        [
            "api",
            "v1",
            "tenants",
            tenant,
            "stores",
            store,
            "stock",
            rest @ ..,
        ] => {
            let tenant = identifier(tenant, "tenant_id")?;
            let store = identifier(store, "store_code")?;
            let call = stock_call(rest)?;
            let allowed = call.method();
            let matches = method == allowed || (method == Method::Head && allowed == Method::Get);
            if !matches {
                let allow = match allowed {
                    Method::Put => "PUT",
                    Method::Post => "POST",
                    _ => "GET, HEAD",
                };
                return Err(RouteError::MethodNotAllowed { allow });
            }
            Ok(Route::Stock {
                tenant,
                store,
                call,
            })
        }
        _ => Err(RouteError::NotFound),
    }
}

/// The call named by the path segments after `/stock`.
fn stock_call(rest: &[&str]) -> Result<StockCall, RouteError> {
    let item = |text: &str| identifier(text, "item_code");
    match rest {
        [] => Ok(StockCall::List),
        ["low"] => Ok(StockCall::Low),
        ["reorder-alerts"] => Ok(StockCall::ReorderAlerts),
        ["updates"] => Ok(StockCall::Batch),
        [code] => Ok(StockCall::Get(item(code)?)),
        [code, "update"] => Ok(StockCall::Update(item(code)?)),
        [code, "reorder"] => Ok(StockCall::Reorder(item(code)?)),
        [code, "minimum"] => Ok(StockCall::Minimum(item(code)?)),
        [code, "history"] => Ok(StockCall::History(item(code)?)),
        _ => Err(RouteError::NotFound),
    }
}

/// The response envelope.
#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    success: bool,
    code: u16,
    message: &'a str,
    data: Option<T>,
    operation: &'a str,
}

/// A success envelope with `data`.
pub fn success<T: Serialize>(status: u16, message: &str, data: T, operation: &str) -> Response {
    let envelope = Envelope {
        success: true,
        code: status,
        message,
        data: Some(data),
        operation,
    };
    match serde_json::to_string(&envelope) {
        Ok(body) => Response::json(status, body),
        Err(_) => failure(500, "response could not be serialized", operation),
    }
}

/// A failure envelope: `success: false`, `data: null`, and a message naming the problem.
pub fn failure(status: u16, message: &str, operation: &str) -> Response {
    let envelope: Envelope<'_, ()> = Envelope {
        success: false,
        code: status,
        message,
        data: None,
        operation,
    };
    let body = serde_json::to_string(&envelope).unwrap_or_default();
    let response = Response::json(status, body);
    if status == 401 {
        return response.with_header("WWW-Authenticate", "Bearer");
    }
    response
}

/// A page of a listing.
#[derive(Serialize)]
struct Page<T: Serialize> {
    data: Vec<T>,
    metadata: PageMetadata,
}

#[derive(Serialize)]
struct PageMetadata {
    total: u64,
    page: u32,
    limit: u32,
    sort: Option<()>,
    filter: Option<()>,
}

/// Body of `PUT …/{item}/update`, and each line of a batch, which also names its item
/// (camelCase or snake_case keys).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default, rename = "itemCode", alias = "item_code")]
    item_code: Option<String>,
    #[serde(rename = "quantityChange", alias = "quantity_change")]
    quantity_change: f64,
    #[serde(rename = "updateType", alias = "update_type")]
    update_type: UpdateType,
    #[serde(default, rename = "referenceId", alias = "reference_id")]
    reference_id: Option<String>,
    #[serde(default, rename = "operatorId", alias = "operator_id")]
    operator_id: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

impl UpdateBody {
    fn into_input(self) -> Result<UpdateInput, String> {
        if !self.quantity_change.is_finite() {
            return Err("quantityChange must be a finite number".into());
        }
        Ok(UpdateInput {
            quantity_change: self.quantity_change,
            update_type: self.update_type,
            reference_id: self.reference_id,
            operator_id: self.operator_id,
            note: self.note,
        })
    }
}

/// A batch body. Lines stay raw until each is parsed on its own, so an error can name
/// its line and duplicate keys inside a line are still refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody<'a> {
    #[serde(borrow)]
    updates: Vec<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReorderBody {
    #[serde(rename = "reorderPoint", alias = "reorder_point")]
    reorder_point: f64,
    #[serde(rename = "reorderQuantity", alias = "reorder_quantity")]
    reorder_quantity: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MinimumBody {
    #[serde(rename = "minimumQuantity", alias = "minimum_quantity")]
    minimum_quantity: f64,
}

/// A threshold must be a finite number >= 0.
fn threshold(value: f64, name: &str) -> Result<f64, String> {
    if !value.is_finite() {
        return Err(format!("{name} must be a finite number"));
    }
    if value < 0.0 {
        return Err(format!("{name} must be >= 0"));
    }
    Ok(value)
}

/// Parses a JSON body, naming the problem in the error (serde's message has the field
/// and position; duplicate keys, NaN and out-of-range numbers all fail here).
fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))
}

/// `page` and `limit` query parameters: page >= 1 (default 1), limit 1..=1000 (default 100).
fn paging(head: &RequestHead) -> Result<(u32, u32), String> {
    let page = match head.query_param("page") {
        None => 1,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|&p| p >= 1)
            .ok_or_else(|| "page must be a whole number >= 1".to_string())?,
    };
    let limit = match head.query_param("limit") {
        None => 100,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_PAGE_LIMIT).contains(l))
            .ok_or_else(|| format!("limit must be a whole number from 1 to {MAX_PAGE_LIMIT}"))?,
    };
    Ok((page, limit))
}

/// What a stock call produced: a response, or a storage failure that voids the pass.
pub type CallResult = Result<Response, StoreError>;

/// Serves one authorized stock call. `received` is when its request was fully read (the
/// start of the update-to-alert latency). Writes go into the open pass transaction; the
/// caller holds the response until the pass commits.
pub fn serve_stock(
    service: &mut Service,
    tenant: &str,
    store: &str,
    call: &StockCall,
    head: &RequestHead,
    body: &[u8],
    received: Instant,
) -> CallResult {
    let operation = call.operation();
    let bad = |message: String| Ok(failure(400, &message, operation));

    match call {
        StockCall::List => {
            let (page, limit) = match paging(head) {
                Ok(paging) => paging,
                Err(message) => return bad(message),
            };
            let total = service.store.store_item_count(tenant, store) as u64;
            let skip = (page as usize - 1).saturating_mul(limit as usize);
            let data: Vec<_> = service
                .store
                .items(tenant, store)
                .skip(skip)
                .take(limit as usize)
                .collect();
            Ok(page_response(
                data,
                total,
                (page, limit),
                "stock items",
                operation,
            ))
        }

        StockCall::Low => {
            let data = items_due(service, tenant, store, AlertKind::MinimumStock);
            Ok(success(
                200,
                "items under their minimum stock",
                data,
                operation,
            ))
        }

        StockCall::ReorderAlerts => {
            let data = items_due(service, tenant, store, AlertKind::ReorderPoint);
            Ok(success(
                200,
                "items at or under their reorder point",
                data,
                operation,
            ))
        }

        StockCall::Get(item) => match service.store.item(tenant, store, item) {
            Some(found) => Ok(success(200, "stock item", found, operation)),
            None => Ok(failure(
                404,
                &format!("item {item} not found in this store"),
                operation,
            )),
        },

        StockCall::History(item) => {
            let (page, limit) = match paging(head) {
                Ok(paging) => paging,
                Err(message) => return bad(message),
            };
            let (data, total) = service.store.history(tenant, store, item, page, limit)?;
            Ok(page_response(
                data,
                total,
                (page, limit),
                "stock update history",
                operation,
            ))
        }

        StockCall::Update(item) => {
            let input = match parse_update(body) {
                Ok(input) => input,
                Err(message) => return bad(message),
            };
            let now = Timestamp::now();
            let applied = match service.store.apply_update(tenant, store, item, &input, now) {
                Ok(applied) => applied,
                Err(error) => return refuse_number(error, operation),
            };
            service.raise_alerts(&applied.item, now, received)?;
            Ok(success(200, "stock updated", &applied.record, operation))
        }

        StockCall::Batch => {
            let lines = match parse_batch(body) {
                Ok(lines) => lines,
                Err(message) => return bad(message),
            };
            let now = Timestamp::now();
            let applied = match service.store.apply_batch(tenant, store, &lines, now) {
                Ok(applied) => applied,
                Err(error) => return refuse_number(error, operation),
            };
            for each in &applied {
                service.raise_alerts(&each.item, now, received)?;
            }
            let records: Vec<_> = applied.iter().map(|a| &a.record).collect();
            Ok(success(200, "stock updated", records, operation))
        }

        StockCall::Reorder(item) => {
            let (point, quantity) = match parse_reorder(body) {
                Ok(values) => values,
                Err(message) => return bad(message),
            };
            let updated = service.store.set_reorder(
                tenant,
                store,
                item,
                point,
                quantity,
                Timestamp::now(),
            )?;
            Ok(success(200, "reorder point set", &updated, operation))
        }

        StockCall::Minimum(item) => {
            let minimum = match parse_minimum(body) {
                Ok(value) => value,
                Err(message) => return bad(message),
            };
            let updated =
                service
                    .store
                    .set_minimum(tenant, store, item, minimum, Timestamp::now())?;
            Ok(success(200, "minimum stock set", &updated, operation))
        }
    }
}

/// A stock change the store refused because the stock would leave the finite range is
/// the client's mistake (400); the store already undid it, so the pass stays good. Any
/// other store error is passed on for the caller to void the pass.
fn refuse_number(error: StoreError, operation: &str) -> CallResult {
    match error {
        StoreError::InvalidNumber { .. } => Ok(failure(400, &error.to_string(), operation)),
        other => Err(other),
    }
}

/// Parses and validates `body` exactly as [`serve_stock`] would for `call`, without
/// touching any store: for the fuzz target and tests. `Err` is the 400 message.
pub fn check_body(call: &StockCall, body: &[u8]) -> Result<(), String> {
    match call {
        StockCall::Update(_) => parse_update(body).map(drop),
        StockCall::Batch => parse_batch(body).map(drop),
        StockCall::Reorder(_) => parse_reorder(body).map(drop),
        StockCall::Minimum(_) => parse_minimum(body).map(drop),
        _ => Ok(()),
    }
}

/// The body of a single update; its item comes from the path, never the body.
fn parse_update(body: &[u8]) -> Result<UpdateInput, String> {
    let update = parse_body::<UpdateBody>(body)?;
    if update.item_code.is_some() {
        return Err("itemCode belongs in the path, not the body".to_string());
    }
    update.into_input()
}

/// The body of a reorder call: reorder point and reorder quantity, each >= 0.
fn parse_reorder(body: &[u8]) -> Result<(f64, f64), String> {
    let reorder = parse_body::<ReorderBody>(body)?;
    Ok((
        threshold(reorder.reorder_point, "reorderPoint")?,
        threshold(reorder.reorder_quantity, "reorderQuantity")?,
    ))
}

/// The body of a minimum call: the minimum quantity, >= 0.
fn parse_minimum(body: &[u8]) -> Result<f64, String> {
    let minimum = parse_body::<MinimumBody>(body)?;
    threshold(minimum.minimum_quantity, "minimumQuantity")
}

/// A 200 carrying one page of a listing with its metadata.
fn page_response<T: Serialize>(
    data: Vec<T>,
    total: u64,
    (page, limit): (u32, u32),
    message: &str,
    operation: &str,
) -> Response {
    let metadata = PageMetadata {
        total,
        page,
        limit,
        sort: None,
        filter: None,
    };
    success(200, message, Page { data, metadata }, operation)
}

/// The store's items for which the `kind` rule holds right now, in item-code order.
fn items_due<'a>(
    service: &'a Service,
    tenant: &str,
    store: &str,
    kind: AlertKind,
) -> Vec<&'a Item> {
    service
        .store
        .items(tenant, store)
        .filter(|item| kind.is_due(&item.levels()))
        .collect()
}

/// Validates every line of a batch before any is applied; the error names the line
/// (1-based) and its problem.
fn parse_batch(body: &[u8]) -> Result<Vec<(String, UpdateInput)>, String> {
    let batch: BatchBody = parse_body(body)?;
    if batch.updates.is_empty() || batch.updates.len() > MAX_BATCH_LINES {
        return Err(format!("updates must hold 1 to {MAX_BATCH_LINES} lines"));
    }

    let mut lines = Vec::with_capacity(batch.updates.len());
    for (index, raw) in batch.updates.into_iter().enumerate() {
        let number = index + 1;
        let line: UpdateBody = serde_json::from_str(raw.get())
            .map_err(|e| format!("invalid update line {number}: {e}"))?;
        let item_code = match line.item_code.clone() {
            Some(code) if is_identifier(&code) => code,
            Some(_) => {
                return Err(format!(
                    "invalid update line {number}: itemCode must be 1 to {MAX_IDENTIFIER} \
                     characters of A-Z a-z 0-9 _ . -"
                ));
            }
            None => return Err(format!("invalid update line {number}: missing itemCode")),
        };
        let input = line
            .into_input()
            .map_err(|e| format!("invalid update line {number}: {e}"))?;
        lines.push((item_code, input));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn identifiers_follow_the_rule() {
        assert!(is_identifier("ITEM-001_a.b"));
        assert!(is_identifier(&"a".repeat(64)));
        assert!(!is_identifier(&"a".repeat(65)));
        assert!(!is_identifier(""));
        assert!(!is_identifier(".."));
        assert!(!is_identifier("a%2Fb"));
        assert!(!is_identifier("a b"));
        assert!(!is_identifier("é"));
    }

    #[test]
    fn stock_paths_route_by_method() {
        let base = "/api/v1/tenants/t1/stores/s1/stock";
        let update = route(Method::Put, &format!("{base}/ITEM1/update")).unwrap();
        assert_eq!(
            update,
            Route::Stock {
                tenant: "t1".into(),
                store: "s1".into(),
                call: StockCall::Update("ITEM1".into())
            }
        );
        assert!(matches!(
            route(Method::Get, &format!("{base}/low")),
            Ok(Route::Stock {
                call: StockCall::Low,
                ..
            })
        ));
        assert!(matches!(
            route(Method::Post, &format!("{base}/updates")),
            Ok(Route::Stock {
                call: StockCall::Batch,
                ..
            })
        ));
        assert_eq!(
            route(Method::Get, &format!("{base}/ITEM1/update")),
            Err(RouteError::MethodNotAllowed { allow: "PUT" })
        );
        assert_eq!(
            route(Method::Put, base),
            Err(RouteError::MethodNotAllowed { allow: "GET, HEAD" })
        );
        assert_eq!(
            route(Method::Get, &format!("{base}/a/b/c")),
            Err(RouteError::NotFound)
        );
        assert_eq!(route(Method::Get, "/nope"), Err(RouteError::NotFound));
    }

    #[test]
    fn dashboard_files_route_on_get_and_head_only() {
        assert!(matches!(route(Method::Get, "/"), Ok(Route::Asset(a)) if a.path == "/"));
        assert!(matches!(
            route(Method::Head, "/dashboard.css"),
            Ok(Route::Asset(a)) if a.path == "/dashboard.css"
        ));
        assert_eq!(
            route(Method::Post, "/"),
            Err(RouteError::MethodNotAllowed { allow: "GET, HEAD" })
        );
        assert_eq!(
            route(Method::Get, "/assets/app.js"),
            Err(RouteError::NotFound)
        );
    }

    #[test]
    fn bad_identifiers_in_paths_are_400_not_404() {
        let error = route(Method::Get, "/api/v1/tenants/../stores/s/stock").unwrap_err();
        assert_eq!(error, RouteError::BadIdentifier { what: "tenant_id" });
        assert_eq!(error.response().status, 400);
        let encoded = route(Method::Get, "/api/v1/ws/t/a%2Fb").unwrap_err();
        assert_eq!(encoded, RouteError::BadIdentifier { what: "store_code" });
    }

    #[test]
    fn update_body_takes_both_key_styles_and_refuses_duplicates() {
        let camel: UpdateBody =
            parse_body(br#"{"quantityChange": -2, "updateType": "sale"}"#).unwrap();
        let snake: UpdateBody =
            parse_body(br#"{"quantity_change": 3.5, "update_type": "transfer_in"}"#).unwrap();
        assert_eq!(camel.quantity_change, -2.0);
        assert_eq!(snake.quantity_change, 3.5);

        let twice = br#"{"quantityChange": 1, "quantity_change": 2, "updateType": "sale"}"#;
        assert!(parse_body::<UpdateBody>(twice).is_err());
        assert!(
            parse_body::<UpdateBody>(br#"{"quantityChange": 1e400, "updateType": "sale"}"#)
                .is_err()
        );
        assert!(
            parse_body::<UpdateBody>(br#"{"quantityChange": NaN, "updateType": "sale"}"#).is_err()
        );
        assert!(
            parse_body::<UpdateBody>(br#"{"quantityChange": "1", "updateType": "sale"}"#).is_err()
        );
        assert!(
            parse_body::<UpdateBody>(br#"{"quantityChange": 1, "updateType": "gift"}"#).is_err()
        );
    }

    #[test]
    fn batch_errors_name_the_line() {
        let body = br#"{"updates": [
            {"itemCode": "A", "quantityChange": 1, "updateType": "sale"},
            {"itemCode": "B", "quantityChange": "x", "updateType": "sale"}]}"#;
        let error = parse_batch(body).unwrap_err();
        assert!(error.contains("line 2"), "{error}");

        let empty = parse_batch(br#"{"updates": []}"#).unwrap_err();
        assert!(empty.contains("1 to 1000"), "{empty}");

        let good = parse_batch(
            br#"{"updates": [{"item_code": "A", "quantity_change": -1, "update_type": "sale"}]}"#,
        )
        .unwrap();
        assert_eq!(good.len(), 1);
        assert_eq!(good[0].0, "A");
    }

    #[test]
    fn check_body_applies_the_rules_of_each_call() {
        let update = StockCall::Update("A".into());
        assert!(check_body(&update, br#"{"quantityChange": 1, "updateType": "sale"}"#).is_ok());
        let error = check_body(&update, br#"{"quantityChange": 1e400}"#).unwrap_err();
        assert!(error.starts_with("invalid request body"), "{error}");
        let minimum = StockCall::Minimum("A".into());
        let error = check_body(&minimum, br#"{"minimumQuantity": -1}"#).unwrap_err();
        assert_eq!(error, "minimumQuantity must be >= 0");
        assert!(check_body(&StockCall::List, b"\xff").is_ok());
    }

    #[test]
    fn failure_envelope_has_null_data_and_www_authenticate_on_401() {
        let response = failure(401, "missing token", "update_stock");
        let value: Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(value["success"], false);
        assert_eq!(value["code"], 401);
        assert_eq!(value["data"], Value::Null);
        assert!(
            response
                .headers
                .iter()
                .any(|(n, v)| *n == "WWW-Authenticate" && v == "Bearer")
        );
    }
}
