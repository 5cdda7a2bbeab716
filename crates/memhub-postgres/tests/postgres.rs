//! The PostgreSQL store against a real cluster (`MEMHUB_TEST_POSTGRES_URL`, started
//! by `scripts/test.sh`): what replicas sharing one database rely on.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use memhub_engine::{Access, Engine, EngineConfig, LogFollower, MemoryStore, StoreTx};
use memhub_postgres::{create_database, PostgresConfig, PostgresStore};
use memhub_types::memory::IngestionMethod;
use memhub_types::{ChangeFilter, ChangeOp, ErrorCode, Memory, NewMemory, Scope, SearchRequest, Tier};
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

// --- replicas: engines over one database -----------------------------------------

/// An engine over the database at `url`, its derived indexes in `dir` (a replica).
fn replica(url: &str, dir: &std::path::Path) -> Arc<Engine> {
    Arc::new(Engine::open_on(Box::new(connect(url)), dir, EngineConfig::default(), None).unwrap())
}

fn note(key: &str, content: &str) -> NewMemory {
    NewMemory {
        system_id: Some("test".into()),
        memory_id: Some(key.into()),
        kind: Some("note".into()),
        content: content.into(),
        ..Default::default()
    }
}

/// Wait until `engine` has published every change in the log (bounded).
fn caught_up(engine: &Engine) {
    let started = std::time::Instant::now();
    while engine.applied() < engine.last_change().unwrap() {
        assert!(started.elapsed() < Duration::from_secs(20), "the replica never caught up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn found(engine: &Engine, query: &str) -> Vec<String> {
    let req = SearchRequest { query: query.into(), semantic_ratio: Some(0.0), limit: Some(100), ..Default::default() };
    engine.search(&"default".into(), &req).unwrap().results.into_iter().map(|h| h.memory.memory_id).collect()
}

#[test]
fn a_commit_wakes_a_waiting_store_at_once() {
    let url = fresh("wake");
    let (writer, waiter) = (connect(&url), Arc::new(connect(&url)));
    // Start listening, then wait for a change after the (empty) log's end.
    waiter.wait_for_changes(0, Duration::from_millis(50));
    let waiting = {
        let waiter = waiter.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            waiter.wait_for_changes(0, Duration::from_secs(60));
            started.elapsed()
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let m = memory("wake");
    writer.write(&mut |tx: &mut dyn StoreTx| tx.insert(&m, ChangeOp::Created).map(drop)).unwrap();
    let waited = waiting.join().unwrap();
    assert!(waited < Duration::from_secs(30), "woken by the commit's notification, not the timeout: {waited:?}");
}

#[test]
fn a_replica_takes_the_writes_of_another_into_its_indexes_and_feed() {
    let url = fresh("follow");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (replica(&url, dir_a.path()), replica(&url, dir_b.path()));
    let _follow = (LogFollower::start(a.clone()), LogFollower::start(b.clone()));
    let scope: Scope = "default".into();

    let first = a.store_memory(&scope, note("k1", "the blue heron nests"), IngestionMethod::Rest).unwrap();
    caught_up(&b);
    assert_eq!(found(&b, "heron"), ["k1"], "a write on A is searchable on B");
    assert_eq!(b.get(&scope, &first.memory.id).unwrap().content, "the blue heron nests");

    // B updates it; A sees the new text and not the old one.
    b.store_memory(&scope, note("k1", "the grey egret nests"), IngestionMethod::Rest).unwrap();
    caught_up(&a);
    assert_eq!(found(&a, "egret"), ["k1"]);
    assert!(found(&a, "heron").is_empty(), "the old version left A's text index");

    // A write on A after B's: A publishes B's change first (commit order).
    a.store_memory(&scope, note("k2", "a red kite circles"), IngestionMethod::Rest).unwrap();
    a.delete(&Access::tenant("default"), &first.memory.id).unwrap();
    caught_up(&b);
    assert_eq!(found(&b, "kite"), ["k2"]);
    assert!(found(&b, "egret").is_empty(), "a delete on A leaves B's indexes");

    // Both feeds tell the whole log, in order.
    let log: Vec<(i64, ChangeOp)> =
        connect(&url).changes_after(0, 100).unwrap().into_iter().map(|c| (c.seq, c.op)).collect();
    for engine in [&a, &b] {
        let page = engine.changes(&scope, 0, &ChangeFilter::default(), Some(100)).unwrap();
        assert_eq!(page.changes.iter().map(|c| (c.seq, c.op)).collect::<Vec<_>>(), log);
    }
}

/// A word of letters only (the tokenizer keeps it whole) unique to writer `w`'s `i`th memory.
fn word(w: usize, i: usize) -> String {
    let letter = |d: usize| char::from(b'a' + d as u8);
    format!("tok{}{}{}", letter(w), letter(i / 10), letter(i % 10))
}

/// Writers on two replicas at once (batches, single stores, updates, deletes), each
/// replica following the other. Afterwards each replica's indexes hold exactly the
/// live memories and its feed holds every change of the log, in order: none skipped
/// even though the two replicas' commits interleave.
#[test]
fn concurrent_writers_on_two_replicas_leave_both_complete() {
    let url = fresh("concurrent");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let replicas = [replica(&url, dir_a.path()), replica(&url, dir_b.path())];
    let _follow = replicas.clone().map(LogFollower::start);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let engine = replicas[w % 2].clone();
            std::thread::spawn(move || {
                let scope: Scope = "default".into();
                for i in 0..30 {
                    let (key, token) = (format!("w{w}-{i}"), word(w, i));
                    let first = note(&key, &format!("{token} first"));
                    let stored = engine.store_memory(&scope, first, IngestionMethod::Rest).unwrap();
                    if i % 3 == 0 {
                        let batch = (0..5).map(|j| note(&format!("{key}-b{j}"), &format!("batch{token}{j}"))).collect();
                        engine.store_batch(&scope, batch, IngestionMethod::Rest).unwrap();
                    }
                    match i % 4 {
                        1 => drop(engine.store_memory(
                            &scope,
                            note(&key, &format!("{token} second")),
                            IngestionMethod::Rest,
                        )),
                        2 => drop(engine.delete(&Access::tenant("default"), &stored.memory.id).unwrap()),
                        _ => {}
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let store = connect(&url);
    let mut live = BTreeSet::new();
    store
        .each_meta("all-MiniLM-L6-v2", &mut |row| {
            live.insert(row.row);
            Ok(())
        })
        .unwrap();
    assert_eq!(live.len(), 4 * (30 - 7) + 4 * 10 * 5, "the writers' live memories");
    let log: Vec<i64> = store.changes_after(0, 100_000).unwrap().iter().map(|c| c.seq).collect();
    for engine in &replicas {
        caught_up(engine);
        let indexed: BTreeSet<i64> = engine.indexes().read().filters.docs().map(|(id, _)| i64::from(id)).collect();
        assert_eq!(indexed, live, "the filter table holds exactly the live memories");
        let mut fed = Vec::new();
        let mut after = 0;
        loop {
            let page = engine.changes(&"default".into(), after, &ChangeFilter::default(), Some(1000)).unwrap();
            if page.changes.is_empty() {
                break;
            }
            fed.extend(page.changes.iter().map(|c| c.seq));
            after = page.next_after;
        }
        assert_eq!(fed, log, "the feed holds every change, in order");
        assert_eq!(found(engine, &word(1, 5)), ["w1-5"], "an updated memory is found once");
        assert_eq!(found(engine, "second").len(), 4 * 8, "by its new text");
        assert!(found(engine, &word(2, 6)).is_empty(), "a deleted memory is not found");
    }
}

/// A log entry this binary cannot read (an operation a newer replica logs during a
/// rolling upgrade) must not stop a follower's cursor before it for good.
#[test]
fn a_follower_moves_past_log_entries_it_cannot_read() {
    let url = fresh("unknown_op");
    let dir = tempfile::tempdir().unwrap();
    let engine = replica(&url, dir.path());
    let _follow = LogFollower::start(engine.clone());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO changes (seq, op, tenant, id, at) \
             VALUES (nextval('changes_seq'), 'from_the_future', 'default', gen_random_uuid(), 1)",
        )
        .execute(&mut c)
        .await
        .unwrap();
        sqlx::query("SELECT pg_notify('memhub_changes', '1')").execute(&mut c).await.unwrap();
    });
    caught_up(&engine);
    // And the next write takes the direct path again, found at once.
    engine
        .store_memory(&"default".into(), note("after", "written after the unreadable entry"), IngestionMethod::Rest)
        .unwrap();
    assert_eq!(found(&engine, "unreadable"), ["after"]);
    assert_eq!(engine.applied(), engine.last_change().unwrap());
}

fn audit_event(writer: usize, i: usize) -> memhub_govern::AuditEvent {
    memhub_govern::AuditEvent {
        at: memhub_types::time::now_micros(),
        actor: format!("key:mh_writer{writer}"),
        role: "user".into(),
        tenant: "default".into(),
        action: "memory.store".into(),
        targets: vec![format!("w{writer}-{i}")],
        // Key order and spacing as the caller wrote them: the hash covers this text.
        filters: serde_json::json!({"z": 1, "a": [1, 2]}),
        outcome: memhub_govern::Outcome::Ok,
        status: 201,
        client: "127.0.0.1".into(),
        request_id: format!("r{writer}-{i}"),
    }
}

/// Two replicas' audit logs append to the database at once: they make one chain
/// (numbered without gaps, each record hashing the one before), which verifies;
/// a record changed in the database afterwards is named.
#[test]
fn two_replicas_append_to_one_audit_chain() {
    use memhub_govern::{audit, AuditLog, AuditQuery, AuditTable};
    use memhub_postgres::PostgresAudit;
    let url = fresh("audit");
    let config = PostgresConfig { url: url.clone(), ..Default::default() };
    let (a, b) = (PostgresAudit::connect(&config).unwrap(), PostgresAudit::connect(&config).unwrap());
    let logs = [Arc::new(AuditLog::on(Arc::new(a)).unwrap()), Arc::new(AuditLog::on(Arc::new(b)).unwrap())];
    std::thread::scope(|s| {
        for writer in 0..4 {
            let log = logs[writer % 2].clone();
            s.spawn(move || {
                for i in 0..150 {
                    log.record(audit_event(writer, i));
                    if i % 50 == 0 {
                        std::thread::sleep(Duration::from_millis(3));
                    }
                }
            });
        }
    });
    logs.iter().for_each(|l| l.flush());

    let reader = PostgresAudit::connect(&config).unwrap();
    let report = audit::verify(&reader).unwrap();
    assert_eq!((report.records, report.first_broken.clone()), (600, None), "{report:?}");
    let newest = audit::query(&reader, &AuditQuery { limit: Some(1), ..Default::default() }).unwrap();
    assert_eq!(newest[0].hash, report.head, "the head is the newest record");
    let mine = audit::query(
        &reader,
        &AuditQuery { actor: Some("key:mh_writer3".into()), limit: Some(1000), ..Default::default() },
    )
    .unwrap();
    assert_eq!(mine.len(), 150);
    assert!(mine.iter().all(|r| r.event.filters == serde_json::json!({"z": 1, "a": [1, 2]})));
    let pages: usize = std::iter::successors(Some((0i64, 0usize)), |(after, _)| {
        let page = reader.page(*after, 64).unwrap();
        page.last().map(|last| (last.seq, page.len()))
    })
    .map(|(_, n)| n)
    .sum();
    assert_eq!(pages, 600, "paging reads every record once");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE audit_log SET outcome = 'denied' WHERE seq = 321").execute(&mut c).await.unwrap();
    });
    let report = audit::verify(&reader).unwrap();
    assert_eq!(report.first_broken.map(|b| b.0), Some(321));
}

/// The type of `memories.embedding` in the database at `url`, as `format_type` names it.
fn embedding_type(url: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'memories'::regclass AND attname = 'embedding'",
        )
        .fetch_one(&mut c)
        .await
        .unwrap()
    })
}

/// With pgvector in the database (the test cluster has it), vectors are stored as
/// `vector`, which SQL can search by distance; asked not to, as `real[]`. Either
/// way a memory, its history and a later embedding come back as written.
#[test]
fn vectors_are_pgvector_vectors_when_the_extension_is_there_and_real_arrays_when_not() {
    for (pgvector, column) in [(true, "vector"), (false, "real[]")] {
        let url = fresh(if pgvector { "pgvector" } else { "plain" });
        let store =
            PostgresStore::connect(&PostgresConfig { url: url.clone(), pgvector, ..Default::default() }).unwrap();
        assert_eq!(embedding_type(&url), column);
        let m = memory("v");
        let changes = store.write(&mut |tx: &mut dyn StoreTx| tx.insert(&m, ChangeOp::Created).map(drop)).unwrap();
        let row = changes[0].row.unwrap();
        assert_eq!(store.memory_by_id("default", &m.id).unwrap().unwrap().1, m, "{column}");
        let v2 = Memory { version: 2, embedding: Some(vec![0.0, 1.0, 0.0]), content_hash: "h2".into(), ..m.clone() };
        store.write(&mut |tx: &mut dyn StoreTx| tx.replace(row, &v2, 7)).unwrap();
        assert_eq!(store.history("default", &m.id).unwrap(), vec![m.clone()], "{column}: history keeps the old vector");
        let v3 = Memory { embedding: Some(vec![1.0, 0.0, 0.0]), ..v2.clone() };
        store.write(&mut |tx: &mut dyn StoreTx| tx.set_embedding(row, &v3).map(drop)).unwrap();
        assert_eq!(store.memories_by_row(&[row]).unwrap()[0].1.embedding, v3.embedding, "{column}");
        if pgvector {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let distance: f64 = runtime.block_on(async {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::query_scalar("SELECT embedding <=> '[0, 1, 0]' FROM memories").fetch_one(&mut c).await.unwrap()
            });
            assert!((distance - 1.0).abs() < 1e-6, "cosine distance of orthogonal vectors in SQL: {distance}");
        }
    }
}

/// A replica keeps its hits' memories (they are a database round trip away), and the
/// change stream empties that cache: after another replica's update, a search that
/// finds the memory again returns the new version, never the one it kept.
#[test]
fn a_replica_never_serves_a_kept_hit_older_than_what_it_applied() {
    let url = fresh("hits");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (replica(&url, dir_a.path()), replica(&url, dir_b.path()));
    let _follow = (LogFollower::start(a.clone()), LogFollower::start(b.clone()));
    let scope: Scope = "default".into();
    let contents = |engine: &Engine| -> Vec<String> {
        let req = SearchRequest { query: "nests".into(), semantic_ratio: Some(0.0), ..Default::default() };
        engine.search(&scope, &req).unwrap().results.into_iter().map(|h| h.memory.content).collect()
    };
    a.store_memory(&scope, note("k1", "the blue heron nests"), IngestionMethod::Rest).unwrap();
    caught_up(&b);
    for _ in 0..3 {
        assert_eq!(contents(&b), ["the blue heron nests"], "kept after the first search");
    }
    for (i, text) in ["the grey egret nests", "the white stork nests", "the black kite nests"].iter().enumerate() {
        a.store_memory(&scope, note("k1", text), IngestionMethod::Rest).unwrap();
        caught_up(&b);
        assert_eq!(contents(&b), [*text], "version {} on B once applied", i + 2);
        assert_eq!(contents(&a), [*text], "and on the writer at once");
    }
}
