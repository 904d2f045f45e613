//! The alert rules (reorder point, minimum stock), the alert messages, and cooldowns.
//!
//! Rules are pure functions of an item's levels. A cooldown suppresses a repeat of the
//! same alert for the same (tenant, store, item, alert type) until it runs out; the server
//! keeps one timer-wheel entry per live cooldown so the map shrinks as they expire.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::timer::TimerId;

/// The two kinds of stock alert, in the order they are evaluated and sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Current stock is at or under the reorder point (a positive reorder point).
    ReorderPoint,
    /// Current stock is under the minimum quantity (a positive minimum).
    MinimumStock,
}

impl AlertKind {
    /// Both kinds, in evaluation order: reorder first.
    pub const ALL: [AlertKind; 2] = [AlertKind::ReorderPoint, AlertKind::MinimumStock];

    /// The `alert_type` value on the wire and in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::ReorderPoint => "reorder_point",
            AlertKind::MinimumStock => "minimum_stock",
        }
    }

    /// Whether this rule fires for the given levels. A zero threshold disables its rule.
    pub fn is_due(self, levels: &Levels) -> bool {
        match self {
            AlertKind::ReorderPoint => {
                levels.reorder_point > 0.0 && levels.current_quantity <= levels.reorder_point
            }
            AlertKind::MinimumStock => {
                levels.minimum_quantity > 0.0 && levels.current_quantity < levels.minimum_quantity
            }
        }
    }
}

/// An item's stock figures, all that the rules and the messages need.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Levels {
    /// Stock on hand; may be negative (backorders).
    pub current_quantity: f64,
    /// Minimum stock; 0 means no minimum.
    pub minimum_quantity: f64,
    /// Reorder point; 0 means no reorder point.
    pub reorder_point: f64,
    /// How much to order when the reorder point is reached (informational).
    pub reorder_quantity: f64,
}

/// The alerts due for `levels`, reorder first.
pub fn due(levels: &Levels) -> impl Iterator<Item = AlertKind> + '_ {
    AlertKind::ALL
        .into_iter()
        .filter(move |kind| kind.is_due(levels))
}

/// The wire form of a reorder-point alert; field order is part of the contract.
#[derive(Serialize)]
struct ReorderMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    alert_type: &'static str,
    tenant_id: &'a str,
    store_code: &'a str,
    item_code: &'a str,
    current_quantity: f64,
    reorder_point: f64,
    reorder_quantity: f64,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

/// The wire form of a minimum-stock alert: `minimum_quantity` in place of
/// `reorder_point`, otherwise as the reorder message.
#[derive(Serialize)]
struct MinimumMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    alert_type: &'static str,
    tenant_id: &'a str,
    store_code: &'a str,
    item_code: &'a str,
    current_quantity: f64,
    minimum_quantity: f64,
    reorder_quantity: f64,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

/// Which item an alert is about.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub tenant_id: &'a str,
    pub store_code: &'a str,
    pub item_code: &'a str,
}

/// Serializes one alert message. `timestamp` is RFC 3339 UTC with milliseconds; `seq` is
/// the store's alert-log sequence number, absent for current-state alerts that are not
/// logged.
pub fn render(
    kind: AlertKind,
    subject: Subject<'_>,
    levels: &Levels,
    timestamp: &str,
    seq: Option<u64>,
) -> String {
    let text = match kind {
        AlertKind::ReorderPoint => serde_json::to_string(&ReorderMessage {
            kind: "stock_alert",
            alert_type: kind.as_str(),
            tenant_id: subject.tenant_id,
            store_code: subject.store_code,
            item_code: subject.item_code,
            current_quantity: levels.current_quantity,
            reorder_point: levels.reorder_point,
            reorder_quantity: levels.reorder_quantity,
            timestamp,
            seq,
        }),
        AlertKind::MinimumStock => serde_json::to_string(&MinimumMessage {
            kind: "stock_alert",
            alert_type: kind.as_str(),
            tenant_id: subject.tenant_id,
            store_code: subject.store_code,
            item_code: subject.item_code,
            current_quantity: levels.current_quantity,
            minimum_quantity: levels.minimum_quantity,
            reorder_quantity: levels.reorder_quantity,
            timestamp,
            seq,
        }),
    };
    // Only strings and finite floats go in (the HTTP layer refuses non-finite numbers),
    // which serde_json always serializes.
    text.unwrap_or_default()
}

/// Identifies one cooldown: the same alert type for the same item of the same store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CooldownKey {
    pub tenant_id: String,
    pub store_code: String,
    pub item_code: String,
    pub kind: AlertKind,
}

/// A live cooldown: when it ends, and the wheel entry that will remove it.
#[derive(Clone, Copy, Debug)]
struct Cooling {
    /// The first instant at which the alert may be sent again.
    until: Instant,
    /// The timer-wheel entry that drops this record at `until` (or a little after).
    timer: TimerId,
}

/// The live cooldowns. Expiry is decided by `until`, not by when the wheel happens to
/// fire, so the wheel's tick granularity never lets an alert through early.
#[derive(Debug)]
pub struct Cooldowns {
    /// Cooldown length; zero turns cooldowns off entirely.
    period: Duration,
    /// Live cooldowns; an entry exists only while its timer-wheel entry does.
    active: HashMap<CooldownKey, Cooling>,
}

impl Cooldowns {
    /// Cooldowns of `period`; `Duration::ZERO` disables them.
    pub fn new(period: Duration) -> Cooldowns {
        Cooldowns {
            period,
            active: HashMap::new(),
        }
    }

    /// The configured cooldown length.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Whether an alert for `key` must be suppressed at `now`.
    pub fn is_cooling(&self, key: &CooldownKey, now: Instant) -> bool {
        self.active.get(key).is_some_and(|c| now < c.until)
    }

    /// Records a cooldown for `key` until `now + period`, held by wheel entry `timer`.
    /// Returns the timer of a cooldown it replaced (an expired one not yet swept), which
    /// the caller must cancel.
    pub fn start(&mut self, key: CooldownKey, now: Instant, timer: TimerId) -> Option<TimerId> {
        let until = now + self.period;
        self.active
            .insert(key, Cooling { until, timer })
            .map(|old| old.timer)
    }

    /// Drops the cooldown of `key` if `timer` still holds it (the wheel fired, or a pass
    /// was rolled back). Returns whether it was removed.
    pub fn end(&mut self, key: &CooldownKey, timer: TimerId) -> bool {
        if self.active.get(key).is_some_and(|c| c.timer == timer) {
            self.active.remove(key);
            return true;
        }
        false
    }

    /// Drops the cooldown of `key` once it has run out at `now`; the wheel calls this.
    /// A cooldown still running (its wheel entry fired early) is kept.
    pub fn expire(&mut self, key: &CooldownKey, now: Instant) -> bool {
        if self.active.get(key).is_some_and(|c| now >= c.until) {
            self.active.remove(key);
            return true;
        }
        false
    }

    /// Number of live cooldowns.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// Whether no cooldown is live.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(current: f64, minimum: f64, reorder_point: f64) -> Levels {
        Levels {
            current_quantity: current,
            minimum_quantity: minimum,
            reorder_point,
            reorder_quantity: 100.0,
        }
    }

    #[test]
    fn reorder_point_fires_at_equality_and_below_only() {
        assert!(AlertKind::ReorderPoint.is_due(&levels(50.0, 0.0, 50.0)));
        assert!(AlertKind::ReorderPoint.is_due(&levels(49.5, 0.0, 50.0)));
        assert!(!AlertKind::ReorderPoint.is_due(&levels(50.5, 0.0, 50.0)));
        assert!(AlertKind::ReorderPoint.is_due(&levels(-3.0, 0.0, 50.0)));
    }

    #[test]
    fn minimum_fires_strictly_below_only() {
        assert!(!AlertKind::MinimumStock.is_due(&levels(10.0, 10.0, 0.0)));
        assert!(AlertKind::MinimumStock.is_due(&levels(9.0, 10.0, 0.0)));
        assert!(!AlertKind::MinimumStock.is_due(&levels(11.0, 10.0, 0.0)));
    }

    #[test]
    fn zero_thresholds_disable_their_rule() {
        assert_eq!(due(&levels(0.0, 0.0, 0.0)).count(), 0);
        assert_eq!(due(&levels(-10.0, 0.0, 0.0)).count(), 0);
    }

    #[test]
    fn both_rules_fire_reorder_first() {
        let kinds: Vec<_> = due(&levels(5.0, 10.0, 20.0)).collect();
        assert_eq!(kinds, [AlertKind::ReorderPoint, AlertKind::MinimumStock]);
    }

    #[test]
    fn reorder_message_matches_the_contract_byte_for_byte() {
        let subject = Subject {
            tenant_id: "tenant001",
            store_code: "store001",
            item_code: "ITEM001",
        };
        let text = render(
            AlertKind::ReorderPoint,
            subject,
            &Levels {
                current_quantity: 40.0,
                minimum_quantity: 0.0,
                reorder_point: 50.0,
                reorder_quantity: 100.0,
            },
            "2024-01-01T12:34:56.789Z",
            None,
        );

        let expected = concat!(
            r#"{"type":"stock_alert","alert_type":"reorder_point","tenant_id":"tenant001","#,
            r#""store_code":"store001","item_code":"ITEM001","current_quantity":40.0,"#,
            r#""reorder_point":50.0,"reorder_quantity":100.0,"#,
            r#""timestamp":"2024-01-01T12:34:56.789Z"}"#
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn minimum_message_swaps_the_threshold_field_and_appends_seq() {
        let subject = Subject {
            tenant_id: "t",
            store_code: "s",
            item_code: "i",
        };
        let text = render(
            AlertKind::MinimumStock,
            subject,
            &levels(4.0, 5.0, 0.0),
            "2024-01-01T00:00:00.000Z",
            Some(7),
        );

        let expected = concat!(
            r#"{"type":"stock_alert","alert_type":"minimum_stock","tenant_id":"t","#,
            r#""store_code":"s","item_code":"i","current_quantity":4.0,"#,
            r#""minimum_quantity":5.0,"reorder_quantity":100.0,"#,
            r#""timestamp":"2024-01-01T00:00:00.000Z","seq":7}"#
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn cooldown_suppresses_until_its_end_and_only_its_own_key() {
        let start = Instant::now();
        let mut wheel = crate::timer::TimerWheel::new(Duration::from_millis(10), 64, start);
        let mut cooldowns = Cooldowns::new(Duration::from_secs(60));
        let key = CooldownKey {
            tenant_id: "t".into(),
            store_code: "s".into(),
            item_code: "i".into(),
            kind: AlertKind::ReorderPoint,
        };
        let other = CooldownKey {
            kind: AlertKind::MinimumStock,
            ..key.clone()
        };

        let timer = wheel.insert(start + Duration::from_secs(60), ());
        assert_eq!(cooldowns.start(key.clone(), start, timer), None);

        assert!(cooldowns.is_cooling(&key, start + Duration::from_secs(59)));
        assert!(!cooldowns.is_cooling(&key, start + Duration::from_secs(60)));
        assert!(!cooldowns.is_cooling(&other, start));

        assert!(cooldowns.end(&key, timer));
        assert!(!cooldowns.end(&key, timer));
        assert!(cooldowns.is_empty());
    }
}
