//! stockalert: keeps each item's stock level durably and pushes reorder-point and
//! minimum-stock alerts over WebSocket to every client of the item's store.
//!
//! One thread runs one `mio` poll loop (`server`, with its HTTP, WebSocket and guard
//! sides) over a slab of connections (`conn`). HTTP framing is in `http`, the stock API
//! in `api` (with `idempotency`), alert rules and cooldowns in `alert`, durable stock in
//! `store`, tokens in `auth` (and `renewal`), per-client limits in `limits`, the
//! embedded dashboard in `assets`, figures in `metrics`, and every deadline sits on the
//! `timer` wheel.

pub mod alert;
pub mod api;
pub mod assets;
pub mod auth;
pub mod cli;
pub mod config;
pub mod conn;
pub mod http;
pub mod idempotency;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod renewal;
pub mod server;
pub mod service;
pub mod store;
pub mod timer;
