//! Query vectors kept for reuse: embedding a query's text costs more than the
//! search it serves (milliseconds on a CPU against a fraction of one), and agents
//! ask the same questions again. Two levels: a bounded LRU in this process, and
//! optionally one shared by every replica ([`SharedVectors`], Redis in the server),
//! so a question asked through one replica is embedded once for all of them.
//! Entries are keyed by model and text, so a model change never serves a stale vector.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock};

use memhub_types::Embedder;

/// A cache of query vectors that other processes share.
pub trait SharedVectors: Send + Sync {
    /// The vector `model` made of `text`, if one was kept (a miss on any failure:
    /// the cache must never fail a search).
    fn get(&self, model: &str, text: &str) -> Option<Vec<f32>>;
    /// Keep `vector` for `(model, text)`.
    fn put(&self, model: &str, text: &str, vector: &[f32]);
}

/// Which level answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Local,
    Shared,
    Embedded,
}

impl Found {
    pub fn as_str(self) -> &'static str {
        match self {
            Found::Local => "local",
            Found::Shared => "shared",
            Found::Embedded => "embedded",
        }
    }
}

/// This process's vectors by (model, text), least recently used first out.
type Local = Mutex<lru::LruCache<(String, String), Arc<[f32]>>>;

/// The engine's query vectors: local LRU, then the shared level, then the embedder.
pub struct QueryVectors {
    local: Option<Local>,
    shared: OnceLock<Arc<dyn SharedVectors>>,
}

impl QueryVectors {
    /// Keep up to `entries` vectors in this process (0: none).
    pub fn new(entries: usize) -> QueryVectors {
        QueryVectors {
            local: NonZeroUsize::new(entries).map(|n| Mutex::new(lru::LruCache::new(n))),
            shared: OnceLock::new(),
        }
    }

    /// Add the level replicas share (once; later calls are ignored).
    pub fn share(&self, shared: Arc<dyn SharedVectors>) {
        let _ = self.shared.set(shared);
    }

    /// The vector of `text` under `embedder`'s model, and where it came from.
    pub fn get(&self, embedder: &dyn Embedder, text: &str) -> Result<(Arc<[f32]>, Found), memhub_types::EmbedError> {
        let key = (embedder.model_name().to_string(), text.to_string());
        if let Some(local) = &self.local {
            if let Some(v) = local.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
                return Ok((v.clone(), Found::Local));
            }
        }
        let shared = self.shared.get();
        let (vector, found) = match shared.and_then(|s| s.get(&key.0, text)).filter(|v| v.len() == embedder.dim()) {
            Some(v) => (Arc::<[f32]>::from(v), Found::Shared),
            None => {
                let v = embedder.embed(&[text])?.into_iter().next().unwrap_or_default();
                if let Some(s) = shared {
                    s.put(&key.0, text, &v);
                }
                (Arc::<[f32]>::from(v), Found::Embedded)
            }
        };
        if let Some(local) = &self.local {
            local.lock().unwrap_or_else(|p| p.into_inner()).put(key, vector.clone());
        }
        Ok((vector, found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize);

    impl Embedder for Counting {
        fn model_name(&self) -> &str {
            "counting"
        }
        fn dim(&self) -> usize {
            2
        }
        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, memhub_types::EmbedError> {
            self.0.fetch_add(texts.len(), Ordering::Relaxed);
            Ok(texts.iter().map(|t| vec![t.len() as f32, 1.0]).collect())
        }
    }

    #[derive(Default)]
    struct Map(Mutex<HashMap<(String, String), Vec<f32>>>);

    impl SharedVectors for Map {
        fn get(&self, model: &str, text: &str) -> Option<Vec<f32>> {
            self.0.lock().unwrap().get(&(model.into(), text.into())).cloned()
        }
        fn put(&self, model: &str, text: &str, vector: &[f32]) {
            self.0.lock().unwrap().insert((model.into(), text.into()), vector.to_vec());
        }
    }

    #[test]
    fn a_query_is_embedded_once_per_process_and_once_for_all_that_share() {
        let embedder = Counting(AtomicUsize::new(0));
        let shared = Arc::new(Map::default());
        let (a, b) = (QueryVectors::new(2), QueryVectors::new(2));
        a.share(shared.clone());
        b.share(shared.clone());
        assert_eq!(a.get(&embedder, "heron").unwrap().1, Found::Embedded);
        assert_eq!(a.get(&embedder, "heron").unwrap().1, Found::Local);
        let (v, found) = b.get(&embedder, "heron").unwrap();
        assert_eq!((found, &v[..]), (Found::Shared, &[5.0, 1.0][..]), "the other process finds it shared");
        assert_eq!(embedder.0.load(Ordering::Relaxed), 1);
        // The local level is bounded (LRU): two more texts push "heron" out of `a`.
        a.get(&embedder, "kite").unwrap();
        a.get(&embedder, "weir").unwrap();
        assert_eq!(a.get(&embedder, "heron").unwrap().1, Found::Shared);
        // A vector of another dimension in the shared level (another deployment's model
        // under the same name) is not trusted.
        shared.put("counting", "odd", &[1.0, 2.0, 3.0]);
        assert_eq!(a.get(&embedder, "odd").unwrap(), (Arc::from(vec![3.0, 1.0]), Found::Embedded));
        let off = QueryVectors::new(0);
        off.get(&embedder, "heron").unwrap();
        assert_eq!(off.get(&embedder, "heron").unwrap().1, Found::Embedded, "entries = 0 keeps nothing");
    }
}
