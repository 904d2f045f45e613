//! The server's state apart from sockets: the stock store, the verifier, the timer wheel,
//! cooldowns, metrics, and the pass transaction that groups a loop pass's writes.
//!
//! A pass is one turn of the poll loop. Writes taken during it go into one SQLite
//! transaction; the alerts they raise are logged in it and held in [`Pass::alerts`]
//! until it commits. If it fails, everything the pass did (store, sequence numbers,
//! cooldowns) is undone and its held responses become 503s.

use std::time::{Duration, Instant, SystemTime};

use crate::alert::{self, AlertKind, CooldownKey, Cooldowns, Subject};
use crate::auth::Verifier;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Item, Store, StoreError, Timestamp};
use crate::timer::{TimerId, TimerWheel};

/// Everything the timer wheel can hold. Connection deadlines carry the slab key and the
/// connection's serial number, so a deadline never touches a newer connection that
/// reused the slot.
#[derive(Debug, Clone)]
pub enum Deadline {
    /// A connection's own deadline (request timeout, keep-alive, ping, close wait).
    Connection { key: usize, serial: u64 },
    /// A cooldown runs out. Boxed: every connection holds two deadlines, and the key's
    /// three strings inline would triple the size of each.
    Cooldown(Box<CooldownKey>),
    /// Periodic storage upkeep: WAL checkpoint and purges.
    Housekeeping,
}

/// An alert raised in the current pass, sent once the pass commits.
#[derive(Debug, Clone)]
pub struct PendingAlert {
    /// Tenant of the item's store.
    pub tenant_id: String,
    /// The item's store; every connection subscribed to it gets the alert.
    pub store_code: String,
    /// The item, for the log line.
    pub item_code: String,
    /// Which rule fired.
    pub kind: AlertKind,
    /// The serialized message, the same bytes for every connection.
    pub payload: String,
    /// When the update that raised it was fully read, for the latency histogram.
    pub received: Instant,
}

/// What the current pass has done that a rollback must undo beyond the store.
#[derive(Debug, Default)]
pub struct Pass {
    /// Alerts raised, in order, waiting for the commit.
    pub alerts: Vec<PendingAlert>,
    /// Cooldowns started, with their wheel entries, to cancel on rollback.
    cooldowns: Vec<(CooldownKey, TimerId)>,
    /// Bumped by every rollback: a response held under an older epoch was voided.
    pub epoch: u64,
}

/// The state shared by the HTTP handlers and the WebSocket side.
pub struct Service {
    /// The validated configuration.
    pub config: Config,
    /// The stock book and its database.
    pub store: Store,
    /// Checks JWTs for the configured algorithm and key.
    pub verifier: Verifier,
    /// Every deadline of the server.
    pub timers: TimerWheel<Deadline>,
    /// Live alert cooldowns.
    pub cooldowns: Cooldowns,
    /// The current pass.
    pub pass: Pass,
    /// Exported figures.
    pub metrics: Metrics,
    /// When the server started, for `/health` uptime and the process metric.
    pub started: (Instant, SystemTime),
    /// Whether the last write to the store worked; `/health` says 503 while it is false.
    pub writable: bool,
}

impl Service {
    /// Builds the service around an opened store.
    pub fn new(config: Config, store: Store, verifier: Verifier, now: Instant) -> Service {
        let cooldown = config.alerts.cooldown();
        Service {
            config,
            store,
            verifier,
            timers: TimerWheel::new(Duration::from_millis(10), 1024, now),
            cooldowns: Cooldowns::new(cooldown),
            pass: Pass::default(),
            metrics: Metrics::default(),
            started: (now, SystemTime::now()),
            writable: true,
        }
    }

    /// Evaluates both rules for `item` after its quantity changed and raises each due
    /// alert that no cooldown suppresses: it is logged with the store's next sequence
    /// number and its cooldown starts, all inside the pass.
    pub fn raise_alerts(
        &mut self,
        item: &Item,
        now: Timestamp,
        received: Instant,
    ) -> Result<(), StoreError> {
        let levels = item.levels();
        let subject = Subject {
            tenant_id: &item.tenant_id,
            store_code: &item.store_code,
            item_code: &item.item_code,
        };
        let clock = Instant::now();

        for kind in alert::due(&levels) {
            let key = CooldownKey {
                tenant_id: item.tenant_id.clone(),
                store_code: item.store_code.clone(),
                item_code: item.item_code.clone(),
                kind,
            };
            if self.cooldowns.is_cooling(&key, clock) {
                self.metrics.alert_suppressed(kind);
                continue;
            }

            let timestamp = now.to_rfc3339();
            let (_seq, payload) =
                self.store
                    .log_alert(&item.tenant_id, &item.store_code, now, |seq| {
                        alert::render(kind, subject, &levels, &timestamp, Some(seq))
                    })?;

            if !self.cooldowns.period().is_zero() {
                let until = clock + self.cooldowns.period();
                let timer = self
                    .timers
                    .insert(until, Deadline::Cooldown(Box::new(key.clone())));
                if let Some(replaced) = self.cooldowns.start(key.clone(), clock, timer) {
                    self.timers.cancel(replaced);
                }
                self.pass.cooldowns.push((key, timer));
            }

            self.pass.alerts.push(PendingAlert {
                tenant_id: item.tenant_id.clone(),
                store_code: item.store_code.clone(),
                item_code: item.item_code.clone(),
                kind,
                payload,
                received,
            });
        }
        Ok(())
    }

    /// Commits the pass. On failure the pass is rolled back and the error returned; the
    /// caller answers the pass's held requests with 503.
    pub fn commit_pass(&mut self) -> Result<(), StoreError> {
        if !self.store.has_pending() {
            self.pass.cooldowns.clear();
            return Ok(());
        }

        let started = Instant::now();
        let result = self.store.commit();
        self.metrics.commit_duration.observe(started.elapsed());

        match result {
            Ok(()) => {
                self.pass.cooldowns.clear();
                self.writable = true;
                Ok(())
            }
            Err(error) => {
                self.rollback_pass();
                Err(error)
            }
        }
    }

    /// Undoes everything the pass did: the store's transaction and memory, the alerts it
    /// raised and the cooldowns it started. Responses held under the old epoch are void.
    pub fn rollback_pass(&mut self) {
        self.store.rollback();
        for (key, timer) in self.pass.cooldowns.drain(..) {
            self.cooldowns.end(&key, timer);
            self.timers.cancel(timer);
        }
        self.pass.alerts.clear();
        self.pass.epoch += 1;
        self.metrics.rollbacks += 1;
        self.writable = false;
    }

    /// The current-state alerts of a store: for each item already at or under a
    /// threshold, the alert it would raise now. Sent to a connection that just joined;
    /// they carry no sequence number and neither check nor start a cooldown.
    pub fn current_alerts(&self, tenant: &str, store: &str) -> Vec<String> {
        let timestamp = Timestamp::now().to_rfc3339();
        let mut alerts = Vec::new();
        for item in self.store.items(tenant, store) {
            let levels = item.levels();
            let subject = Subject {
                tenant_id: &item.tenant_id,
                store_code: &item.store_code,
                item_code: &item.item_code,
            };
            for kind in alert::due(&levels) {
                alerts.push(alert::render(kind, subject, &levels, &timestamp, None));
            }
        }
        alerts
    }
}
