//! The PostgreSQL store against a real cluster (`MEMHUB_TEST_POSTGRES_URL`, started
//! by `scripts/test.sh`): what replicas sharing one database rely on.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use memhub_engine::{MemoryStore, StoreTx};
use memhub_postgres::{create_database, PostgresConfig, PostgresStore};
use memhub_types::memory::IngestionMethod;
use memhub_types::{ChangeOp, ErrorCode, Memory, Tier};
use uuid::Uuid;

fn admin_url() -> String {
    std::env::var("MEMHUB_TEST_POSTGRES_URL").expect(
        "MEMHUB_TEST_POSTGRES_URL names a PostgreSQL database to create test databases from: run scripts/test.sh",
    )
}

/// A fresh database: its URL.
fn fresh(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    create_database(&admin_url(), &format!("memhub_{tag}_{}_{}", std::process::id(), nanos % 1_000_000_000)).unwrap()
}

fn connect(url: &str) -> PostgresStore {
    PostgresStore::connect(&PostgresConfig { url: url.into(), ..Default::default() }).unwrap()
}

fn memory(key: &str) -> Memory {
    Memory {
        id: Uuid::now_v7(),
        tenant: "default".into(),
        system_id: "test".into(),
        memory_id: key.into(),
        kind: "note".into(),
        schema_version: 1,
        content: format!("content of {key}"),
        attributes: serde_json::json!({}),
        metadata: Default::default(),
        tags: vec!["t".into()],
        user_id: None,
        agent_id: None,
        session_id: None,
        project: None,
        created_at: 1,
        ingested_at: 1,
        updated_at: 1,
        expires_at: None,
        embedding: Some(vec![0.5, -0.25, 1.0]),
        embedding_model: Some("m".into()),
        content_hash: format!("h-{key}"),
        version: 1,
        ingestion_method: IngestionMethod::Rest,
        tier: Tier::Hot,
    }
}

#[test]
fn a_memory_round_trips_with_its_history_and_log() {
    let store = connect(&fresh("roundtrip"));
    let m = memory("a");
    let changes = store
        .write(&mut |tx: &mut dyn StoreTx| {
            tx.insert(&m, ChangeOp::Created)?;
            Ok(())
        })
        .unwrap();
    assert_eq!(changes.len(), 1);
    let row = changes[0].row.unwrap();
    let (found_row, found) = store.memory_by_id("default", &m.id).unwrap().unwrap();
    assert_eq!((found_row, &found), (row, &m), "every column comes back as written");
    assert!(store.memory_by_id("other-tenant", &m.id).unwrap().is_none(), "a tenant sees only its own");

    let v2 = Memory { content: "second".into(), version: 2, content_hash: "h2".into(), ..m.clone() };
    store
        .write(&mut |tx: &mut dyn StoreTx| {
            let (row, _) = tx.find_by_key("default", "test", "a")?.expect("found in the transaction");
            tx.replace(row, &v2, 7)
        })
        .unwrap();
    assert_eq!(store.memories_by_row(&[row]).unwrap()[0].1.content, "second");
    let history = store.history("default", &m.id).unwrap();
    assert_eq!(history, vec![m.clone()], "the superseded version is kept");

    store.write(&mut |tx: &mut dyn StoreTx| tx.remove(row, &v2, ChangeOp::Erased).map(|_| ())).unwrap();
    assert!(store.history("default", &m.id).unwrap().is_empty());
    let log = store.changes_after(0, 100).unwrap();
    let ops: Vec<ChangeOp> = log.iter().map(|c| c.op).collect();
    assert_eq!(ops, [ChangeOp::Created, ChangeOp::Updated, ChangeOp::Erased]);
    assert!(log.iter().all(|c| c.memory_id.is_none()), "an erasure takes the client key out of earlier events too");
    assert_eq!(store.last_change().unwrap(), log[2].seq);
}

#[test]
fn a_failed_write_leaves_nothing_behind() {
    let store = connect(&fresh("rollback"));
    let m = memory("dup");
    let err = store
        .write(&mut |tx: &mut dyn StoreTx| {
            tx.insert(&m, ChangeOp::Created)?;
            // The same key again: the second insert fails, so the first must not stay.
            tx.insert(&Memory { id: Uuid::now_v7(), ..m.clone() }, ChangeOp::Created)?;
            Ok(())
        })
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::StorageError, "{err:?}");
    assert!(store.memory_by_id("default", &m.id).unwrap().is_none());
    assert!(store.changes_after(0, 10).unwrap().is_empty());
}

/// Two replicas write at once, each holding its transaction open a while after
/// taking its sequence number (as a slow commit would); a reader tails the log by
/// `seq > last` the whole time. It must see every change: none may commit below a
/// sequence number the reader has already passed.
#[test]
fn a_tailing_reader_never_skips_a_change_that_commits_late() {
    let url = fresh("tail");
    let replicas = [Arc::new(connect(&url)), Arc::new(connect(&url))];
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = Arc::new(connect(&url));
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut last, mut seen) = (0, Vec::new());
            loop {
                let finished = done.load(Ordering::SeqCst);
                for c in store.changes_after(last, 1000).unwrap() {
                    assert!(c.seq > last);
                    last = c.seq;
                    seen.push(c.seq);
                }
                if finished {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = replicas[w % 2].clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let m = memory(&format!("w{w}-{i}"));
                    store
                        .write(&mut |tx: &mut dyn StoreTx| {
                            tx.insert(&m, ChangeOp::Created)?;
                            std::thread::sleep(Duration::from_millis(2 + (i % 3) as u64));
                            Ok(())
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.join().unwrap();
    let all: Vec<i64> = replicas[0].changes_after(0, 10_000).unwrap().iter().map(|c| c.seq).collect();
    assert_eq!(all.len(), 160);
    assert_eq!(seen.iter().copied().collect::<BTreeSet<_>>(), all.iter().copied().collect::<BTreeSet<_>>());
}

#[test]
fn a_database_migrated_by_a_newer_memhub_is_refused() {
    let url = fresh("newer");
    drop(connect(&url));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (999, 'from the future', true, '\\x00', 0)",
        )
        .execute(&mut c)
        .await
        .unwrap();
    });
    let err = PostgresStore::connect(&PostgresConfig { url, ..Default::default() }).err().expect("refused");
    assert!(err.message().contains("newer memhub"), "{err:?}");
}

#[test]
fn an_unreachable_database_is_storage_unavailable() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = PostgresConfig {
        url: format!("postgres://memhub@127.0.0.1:{port}/memhub"),
        acquire_timeout_seconds: 1,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let err = PostgresStore::connect(&config).err().expect("no database there");
    assert_eq!(err.code, ErrorCode::StorageUnavailable, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded by the pool timeout");
    assert!(!err.message().contains("secret"));
}
