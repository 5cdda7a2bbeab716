//! How the suites open an engine: on the embedded store, or with
//! `MEMHUB_TEST_BACKEND=postgres` on a PostgreSQL database of the cluster at
//! `MEMHUB_TEST_POSTGRES_URL` (`scripts/test.sh` starts one). One suite, two backends.

// Each suite uses what it needs of this.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use memhub_engine::{Engine, EngineConfig, OpenMode};
use memhub_types::Embedder;

/// Whether this run is the PostgreSQL one.
pub fn on_postgres() -> bool {
    std::env::var("MEMHUB_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// Open (again) the engine of data dir `data`. On PostgreSQL, a data dir gets a
/// database of its own the first time (its URL is kept in `data/postgres-url`) and
/// the same one each time after, so a reopen sees what was written before; the
/// derived indexes stay in `data/index` as they would on a replica.
pub fn open(data: &Path, config: EngineConfig, embedder: Option<Arc<dyn Embedder>>) -> Engine {
    if !on_postgres() {
        return Engine::open_with(data, config, OpenMode::ReadWrite, embedder).unwrap();
    }
    std::fs::create_dir_all(data).unwrap();
    let kept = data.join("postgres-url");
    let url = match std::fs::read_to_string(&kept) {
        Ok(url) => url,
        Err(_) => {
            let admin = std::env::var("MEMHUB_TEST_POSTGRES_URL")
                .expect("MEMHUB_TEST_BACKEND=postgres needs MEMHUB_TEST_POSTGRES_URL: run scripts/test.sh");
            let name = format!("memhub_test_{}", uuid_like());
            let url = memhub_postgres::create_database(&admin, &name).unwrap();
            std::fs::write(&kept, &url).unwrap();
            url
        }
    };
    let store = memhub_postgres::PostgresStore::connect(&memhub_postgres::PostgresConfig { url, ..Default::default() })
        .unwrap();
    Engine::open_on(Box::new(store), &data.join("index"), config, embedder).unwrap()
}

/// A name unique to this process and call.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{}_{}_{}", std::process::id(), nanos % 1_000_000_000, N.fetch_add(1, Ordering::Relaxed))
}
