//! Tests of `Store` against real SQLite files in temporary directories.

use super::*;

use std::path::Path;

use rusqlite::Connection;
use tempfile::TempDir;

const T: &str = "t1";
const S: &str = "s1";

fn open(dir: &TempDir) -> Store {
    Store::open(dir.path(), Durability::Full).unwrap()
}

fn change(quantity_change: f64, reference: &str) -> UpdateInput {
    UpdateInput {
        quantity_change,
        update_type: UpdateType::Sale,
        reference_id: Some(reference.to_owned()),
        operator_id: Some("op".to_owned()),
        note: None,
    }
}

/// A second connection to the same file, as another process would open it.
fn other_connection(dir: &Path) -> Connection {
    Connection::open(dir.join(schema::DB_FILE)).unwrap()
}

fn count_rows(dir: &Path, table: &str) -> i64 {
    let conn = other_connection(dir);
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
        row.get(0)
    })
    .unwrap()
}

fn quantity(store: &Store, item: &str) -> Option<f64> {
    store.item(T, S, item).map(|item| item.current_quantity)
}

#[test]
fn committed_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .apply_update(T, S, "A", &change(10.0, "r1"), Timestamp(1_000))
        .unwrap();
    store
        .apply_update(T, S, "A", &change(-4.0, "r2"), Timestamp(2_000))
        .unwrap();
    store
        .set_reorder(T, S, "A", 5.0, 20.0, Timestamp(3_000))
        .unwrap();
    store.set_minimum(T, S, "B", 2.0, Timestamp(4_000)).unwrap();
    store
        .log_alert(T, S, Timestamp(5_000), |seq| format!("alert {seq}"))
        .unwrap();
    assert!(store.has_pending());
    store.commit().unwrap();
    assert!(!store.has_pending());
    let before: Vec<Item> = store.items(T, S).cloned().collect();
    drop(store);

    let store = open(&dir);

    let after: Vec<Item> = store.items(T, S).cloned().collect();
    assert_eq!(after, before);
    let a = store.item(T, S, "A").unwrap();
    assert_eq!(a.current_quantity, 6.0);
    assert_eq!(a.reorder_point, 5.0);
    assert_eq!(a.reorder_quantity, 20.0);
    assert_eq!(a.last_transaction_id.as_deref(), Some("r2"));
    assert_eq!(a.last_updated, Timestamp(3_000));
    assert_eq!(store.item(T, S, "B").unwrap().minimum_quantity, 2.0);
    assert_eq!(store.item_count(), 2);
    assert_eq!(store.store_item_count(T, S), 2);
    assert_eq!(store.last_seq(T, S), 1);

    let (history, total) = store.history(T, S, "A", 1, 10).unwrap();
    assert_eq!(total, 2);
    assert_eq!(history[0].reference_id.as_deref(), Some("r2"));
    assert_eq!(history[0].before_quantity, 10.0);
    assert_eq!(history[0].after_quantity, 6.0);
    assert_eq!(history[0].operator_id.as_deref(), Some("op"));
    assert_eq!(history[1].timestamp, Timestamp(1_000));
}

#[test]
fn rollback_restores_memory_exactly_and_leaves_disk_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .apply_update(T, S, "A", &change(10.0, "r1"), Timestamp(1_000))
        .unwrap();
    store
        .log_alert(T, S, Timestamp(1_000), |seq| seq.to_string())
        .unwrap();
    store.commit().unwrap();
    let memory_before = store.memory.clone();
    let history_rows = count_rows(dir.path(), "updates");

    store
        .apply_update(T, S, "A", &change(-3.0, "r2"), Timestamp(2_000))
        .unwrap();
    store
        .apply_update(T, S, "NEW", &change(1.0, "r3"), Timestamp(2_000))
        .unwrap();
    store
        .apply_update(T, "other", "X", &change(1.0, "r4"), Timestamp(2_000))
        .unwrap();
    store
        .set_reorder(T, S, "A", 50.0, 100.0, Timestamp(2_000))
        .unwrap();
    store.set_minimum(T, S, "A", 7.0, Timestamp(2_000)).unwrap();
    store
        .log_alert(T, S, Timestamp(2_000), |seq| seq.to_string())
        .unwrap();
    store
        .log_alert("t2", "s9", Timestamp(2_000), |seq| seq.to_string())
        .unwrap();
    store
        .idempotency_record(T, S, "k", [1; 32], 200, "{}", Timestamp(2_000))
        .unwrap();
    assert_eq!(store.item_count(), 3);

    store.rollback();

    assert!(!store.has_pending());
    assert_eq!(store.memory, memory_before);
    assert_eq!(store.item_count(), 1);
    assert_eq!(store.last_seq(T, S), 1);
    assert_eq!(store.last_seq("t2", "s9"), 0);
    assert_eq!(count_rows(dir.path(), "updates"), history_rows);
    assert_eq!(count_rows(dir.path(), "alerts"), 1);
    assert_eq!(count_rows(dir.path(), "idempotency"), 0);
    assert_eq!(store.history(T, S, "NEW", 1, 10).unwrap().1, 0);

    // The next pass works and reuses the rolled-back seq.
    let (seq, _) = store
        .log_alert(T, S, Timestamp(3_000), |seq| seq.to_string())
        .unwrap();
    assert_eq!(seq, 2);
    store.commit().unwrap();
    drop(store);
    let store = open(&dir);
    assert_eq!(store.memory.item_count(), 1);
    assert_eq!(quantity(&store, "A"), Some(10.0));
}

#[test]
fn failed_commit_rolls_back_the_pass() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .apply_update(T, S, "A", &change(1.0, "r1"), Timestamp(1))
        .unwrap();
    store.fault = Some(Fault::Commit);

    let err = store.commit().unwrap_err();

    assert!(matches!(err, StoreError::Io(_)));
    assert!(!store.has_pending());
    assert_eq!(store.item_count(), 0);
    assert_eq!(count_rows(dir.path(), "items"), 0);
    store
        .apply_update(T, S, "A", &change(2.0, "r2"), Timestamp(2))
        .unwrap();
    store.commit().unwrap();
    assert_eq!(count_rows(dir.path(), "items"), 1);
}

#[test]
fn commit_with_nothing_pending_is_ok() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    assert!(!store.has_pending());
    store.commit().unwrap();
    store.rollback();
    assert!(!store.has_pending());
}

#[test]
fn batch_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .apply_update(T, S, "A", &change(10.0, "r0"), Timestamp(1))
        .unwrap();
    let memory_before = store.memory.clone();
    store.fault = Some(Fault::Item("C".to_owned()));
    let lines = vec![
        ("A".to_owned(), change(-1.0, "b1")),
        ("B".to_owned(), change(5.0, "b1")),
        ("C".to_owned(), change(5.0, "b1")),
    ];

    let err = store.apply_batch(T, S, &lines, Timestamp(2)).unwrap_err();

    assert!(matches!(err, StoreError::Io(_)));
    assert_eq!(store.memory, memory_before);
    assert_eq!(store.history(T, S, "A", 1, 10).unwrap().1, 1);
    assert_eq!(store.history(T, S, "B", 1, 10).unwrap().1, 0);
    assert_eq!(store.history(T, S, "C", 1, 10).unwrap().1, 0);

    // The pass goes on: the earlier write commits, the batch left nothing.
    store.fault = None;
    store.commit().unwrap();
    drop(store);
    let store = open(&dir);
    assert_eq!(quantity(&store, "A"), Some(10.0));
    assert_eq!(store.item_count(), 1);
}

#[test]
fn batch_applies_repeated_items_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let lines = vec![
        ("A".to_owned(), change(5.0, "b1")),
        ("B".to_owned(), change(1.0, "b1")),
        ("A".to_owned(), change(-2.0, "b1")),
    ];

    let applied = store.apply_batch(T, S, &lines, Timestamp(7)).unwrap();

    assert_eq!(applied.len(), 3);
    assert_eq!(applied[0].record.after_quantity, 5.0);
    assert_eq!(applied[2].record.before_quantity, 5.0);
    assert_eq!(applied[2].record.after_quantity, 3.0);
    assert_eq!(applied[2].item.current_quantity, 3.0);
    assert_eq!(quantity(&store, "A"), Some(3.0));
    store.commit().unwrap();
    assert_eq!(store.history(T, S, "A", 1, 10).unwrap().1, 2);
}

#[test]
fn lock_held_elsewhere_fails_the_write_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .apply_update(T, S, "A", &change(1.0, "r1"), Timestamp(1))
        .unwrap();
    store.commit().unwrap();
    let memory_before = store.memory.clone();
    let other = other_connection(dir.path());
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let err = store
        .apply_update(T, S, "A", &change(1.0, "r2"), Timestamp(2))
        .unwrap_err();

    assert!(matches!(err, StoreError::Locked));
    assert!(err.to_string().contains("locked"));
    assert_eq!(store.memory, memory_before);
    assert!(!store.has_pending());
    assert!(!store.writable_probe());
    store.rollback();

    other.execute_batch("ROLLBACK").unwrap();
    assert!(store.writable_probe());
    store
        .apply_update(T, S, "A", &change(1.0, "r3"), Timestamp(3))
        .unwrap();
    store.commit().unwrap();
    assert_eq!(quantity(&store, "A"), Some(2.0));
}

#[test]
fn alert_seqs_increase_across_reopen_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    for _ in 0..3 {
        store
            .log_alert(T, S, Timestamp(1_000), |seq| format!("a{seq}"))
            .unwrap();
    }
    store.commit().unwrap();
    drop(store);

    let mut store = open(&dir);
    assert_eq!(store.last_seq(T, S), 3);
    let (seq, payload) = store
        .log_alert(T, S, Timestamp(2_000), |seq| format!("a{seq}"))
        .unwrap();
    assert_eq!((seq, payload.as_str()), (4, "a4"));
    store.commit().unwrap();

    assert_eq!(store.purge_alerts(Timestamp(10_000), 100).unwrap(), 4);
    assert_eq!(count_rows(dir.path(), "alerts"), 0);
    let (seq, _) = store
        .log_alert(T, S, Timestamp(3_000), |seq| format!("a{seq}"))
        .unwrap();
    assert_eq!(seq, 5);
    store.commit().unwrap();
    drop(store);

    let mut store = open(&dir);
    assert_eq!(store.last_seq(T, S), 5);
    let (seq, _) = store
        .log_alert(T, S, Timestamp(4_000), |seq| format!("a{seq}"))
        .unwrap();
    assert_eq!(seq, 6);
    assert_eq!(store.last_seq("t1", "other"), 0);
}

#[test]
fn alerts_since_replays_or_reports_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    for created in [1_000, 2_000, 3_000] {
        store
            .log_alert(T, S, Timestamp(created), |seq| format!("a{seq}"))
            .unwrap();
    }
    store.commit().unwrap();
    let alerts = |texts: &[&str]| Replay::Alerts(texts.iter().map(|t| t.to_string()).collect());

    assert_eq!(
        store.alerts_since(T, S, 0).unwrap(),
        alerts(&["a1", "a2", "a3"])
    );
    assert_eq!(store.alerts_since(T, S, 2).unwrap(), alerts(&["a3"]));
    assert_eq!(store.alerts_since(T, S, 3).unwrap(), alerts(&[]));
    assert_eq!(store.alerts_since(T, S, 99).unwrap(), alerts(&[]));
    assert_eq!(store.alerts_since(T, "nothing", 0).unwrap(), alerts(&[]));

    assert!(matches!(store.purge_alerts(Timestamp(2_500), 10), Ok(2)));

    assert_eq!(store.alerts_since(T, S, 0).unwrap(), Replay::Truncated);
    assert_eq!(store.alerts_since(T, S, 1).unwrap(), Replay::Truncated);
    assert_eq!(store.alerts_since(T, S, 2).unwrap(), alerts(&["a3"]));
    assert_eq!(store.alerts_since(T, S, 3).unwrap(), alerts(&[]));
}

#[test]
fn idempotency_record_lookup_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let hash = Store::request_hash("PUT", "/stock", b"{}");
    store
        .idempotency_record(T, S, "k1", hash, 201, "{\"ok\":1}", Timestamp(100))
        .unwrap();

    // Visible inside the pass, and a second record under the key fails.
    let found = store.idempotency_lookup(T, S, "k1").unwrap().unwrap();
    assert_eq!(
        found,
        StoredResponse {
            request_hash: hash,
            status: 201,
            body: "{\"ok\":1}".into()
        }
    );
    let err = store
        .idempotency_record(T, S, "k1", hash, 200, "", Timestamp(100))
        .unwrap_err();
    assert!(matches!(err, StoreError::IdempotencyKeyTaken));
    store
        .idempotency_record(T, S, "k2", hash, 200, "", Timestamp(200))
        .unwrap();
    store
        .idempotency_record(T, S, "k3", hash, 200, "", Timestamp(300))
        .unwrap();
    store
        .idempotency_record(T, "s2", "k1", [0; 32], 200, "", Timestamp(900))
        .unwrap();
    assert!(matches!(
        store.purge_idempotency(Timestamp(1_000), 10),
        Err(StoreError::PassOpen)
    ));
    store.commit().unwrap();

    assert_eq!(
        store
            .idempotency_lookup(T, S, "k1")
            .unwrap()
            .unwrap()
            .status,
        201
    );
    assert_eq!(store.idempotency_lookup(T, S, "nope").unwrap(), None);
    assert_eq!(store.idempotency_lookup("t9", S, "k1").unwrap(), None);

    // Bounded: oldest first, at most max_rows per call.
    assert_eq!(store.purge_idempotency(Timestamp(250), 1).unwrap(), 1);
    assert_eq!(store.idempotency_lookup(T, S, "k1").unwrap(), None);
    assert!(store.idempotency_lookup(T, S, "k2").unwrap().is_some());
    assert_eq!(store.purge_idempotency(Timestamp(250), 10).unwrap(), 1);
    assert_eq!(store.purge_idempotency(Timestamp(250), 10).unwrap(), 0);
    assert!(store.idempotency_lookup(T, S, "k3").unwrap().is_some());
    assert!(store.idempotency_lookup(T, "s2", "k1").unwrap().is_some());
}

#[test]
fn request_hash_separates_method_path_and_body() {
    let base = Store::request_hash("PUT", "/a", b"x");
    assert_eq!(base, Store::request_hash("PUT", "/a", b"x"));
    assert_ne!(base, Store::request_hash("POST", "/a", b"x"));
    assert_ne!(base, Store::request_hash("PUT", "/b", b"x"));
    assert_ne!(base, Store::request_hash("PUT", "/a", b"y"));
    assert_ne!(
        Store::request_hash("PUT", "/ax", b""),
        Store::request_hash("PUT", "/a", b"x")
    );
}

#[test]
fn history_is_newest_first_and_paged() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    for n in 1..=5 {
        let reference = format!("r{n}");
        store
            .apply_update(T, S, "A", &change(1.0, &reference), Timestamp(n))
            .unwrap();
    }
    store
        .apply_update(T, S, "B", &change(1.0, "other"), Timestamp(9))
        .unwrap();
    store.commit().unwrap();
    let refs = |records: Vec<UpdateRecord>| -> Vec<String> {
        records.into_iter().filter_map(|r| r.reference_id).collect()
    };

    let (page, total) = store.history(T, S, "A", 1, 2).unwrap();
    assert_eq!(
        (refs(page), total),
        (vec!["r5".to_owned(), "r4".to_owned()], 5)
    );
    let (page, _) = store.history(T, S, "A", 3, 2).unwrap();
    assert_eq!(refs(page), ["r1"]);
    let (page, total) = store.history(T, S, "A", 4, 2).unwrap();
    assert!(page.is_empty());
    assert_eq!(total, 5);
    assert_eq!(store.history(T, S, "none", 1, 10).unwrap(), (Vec::new(), 0));

    assert!(matches!(
        store.history(T, S, "A", 0, 2),
        Err(StoreError::InvalidPage { .. })
    ));
    assert!(matches!(
        store.history(T, S, "A", 1, 0),
        Err(StoreError::InvalidPage { .. })
    ));
    assert!(matches!(
        store.history(T, S, "A", 1, 1001),
        Err(StoreError::InvalidPage { .. })
    ));
    assert_eq!(store.history(T, S, "A", u32::MAX, 1000).unwrap().0.len(), 0);
}

#[test]
fn durability_sets_synchronous_pragma() {
    let pragma = |store: &Store, name: &str| -> String {
        store
            .conn
            .pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))
            .map(|value| format!("{value:?}"))
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();

    let store = Store::open(dir.path(), Durability::Full).unwrap();
    assert_eq!(pragma(&store, "synchronous"), "Integer(2)");
    assert_eq!(pragma(&store, "journal_mode"), "Text(\"wal\")");
    assert_eq!(pragma(&store, "wal_autocheckpoint"), "Integer(0)");
    assert_eq!(pragma(&store, "busy_timeout"), "Integer(0)");
    drop(store);

    let store = Store::open(dir.path(), Durability::Normal).unwrap();
    assert_eq!(pragma(&store, "synchronous"), "Integer(1)");
}

#[test]
fn non_finite_numbers_are_refused_without_opening_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);

    let nan = store.apply_update(T, S, "A", &change(f64::NAN, "r"), Timestamp(1));
    assert!(matches!(
        nan,
        Err(StoreError::InvalidNumber {
            what: "quantity change"
        })
    ));
    let lines = vec![
        ("A".to_owned(), change(1.0, "r")),
        ("B".to_owned(), change(f64::INFINITY, "r")),
    ];
    assert!(store.apply_batch(T, S, &lines, Timestamp(1)).is_err());
    assert!(
        store
            .set_minimum(T, S, "A", f64::NAN, Timestamp(1))
            .is_err()
    );
    assert!(
        store
            .set_reorder(T, S, "A", 1.0, f64::INFINITY, Timestamp(1))
            .is_err()
    );
    assert!(!store.has_pending());
    assert_eq!(store.item_count(), 0);

    // An overflowing sum is refused inside the pass; memory is unchanged.
    store
        .apply_update(T, S, "A", &change(f64::MAX, "r"), Timestamp(1))
        .unwrap();
    let err = store
        .apply_update(T, S, "A", &change(f64::MAX, "r"), Timestamp(2))
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidNumber { .. }));
    assert_eq!(quantity(&store, "A"), Some(f64::MAX));
    assert_eq!(store.history(T, S, "A", 1, 10).unwrap().1, 1);
}

#[test]
fn negative_stock_and_items_created_by_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);

    let applied = store
        .apply_update(T, S, "A", &change(-3.0, "r"), Timestamp(1))
        .unwrap();
    let item = store
        .set_reorder(T, S, "B", 4.0, 8.0, Timestamp(2))
        .unwrap();

    assert_eq!(applied.item.current_quantity, -3.0);
    assert_eq!(applied.record.before_quantity, 0.0);
    assert_eq!(item.current_quantity, 0.0);
    assert_eq!(item.last_transaction_id, None);
    let codes: Vec<&str> = store
        .items(T, S)
        .map(|item| item.item_code.as_str())
        .collect();
    assert_eq!(codes, ["A", "B"]);
    assert_eq!(store.items(T, "none").count(), 0);
}

#[test]
fn housekeeping_refuses_an_open_pass_and_checkpoints_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .apply_update(T, S, "A", &change(1.0, "r"), Timestamp(1))
        .unwrap();
    assert!(store.writable_probe());
    assert!(matches!(store.checkpoint(), Err(StoreError::PassOpen)));
    assert!(matches!(
        store.purge_alerts(Timestamp(1), 1),
        Err(StoreError::PassOpen)
    ));
    store.commit().unwrap();

    let stats = store.checkpoint().unwrap();

    assert!(!stats.busy);
    assert!(stats.wal_pages > 0);
    assert_eq!(stats.checkpointed_pages, stats.wal_pages);
}

#[test]
fn newer_schema_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir));
    other_connection(dir.path())
        .pragma_update(None, "user_version", 2)
        .unwrap();

    let err = Store::open(dir.path(), Durability::Full).err().unwrap();

    assert!(err.to_string().contains("newer than this build supports"));
}

/// Loads 100,000 items and prints how long `open` took; run with
/// `cargo test --release --lib store::tests::open_time -- --ignored --nocapture`.
#[test]
#[ignore]
fn open_time_with_100k_items() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir));
    let mut conn = other_connection(dir.path());
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare("INSERT INTO items VALUES (?1, ?2, ?3, ?4, 1, 5, 10, 1700000000000, ?5)")
            .unwrap();
        for n in 0..100_000 {
            let store = format!("s{}", n % 20);
            let item = format!("item-{n:06}");
            let reference = format!("ref-{n}");
            insert
                .execute(params!["tenant", store, item, n as f64, reference])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    drop(conn);

    let started = std::time::Instant::now();
    let store = open(&dir);
    let elapsed = started.elapsed();

    assert_eq!(store.item_count(), 100_000);
    assert_eq!(store.store_item_count("tenant", "s3"), 5_000);
    println!("open with 100,000 items took {} ms", elapsed.as_millis());
}
