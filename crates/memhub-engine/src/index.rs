//! The derived index: everything search and list need to pick candidates without
//! touching the store. It is rebuilt from the store on open and updated after each
//! committed write; it is never the source of truth. Hits are hydrated from the store.
//!
//! Retrievers here are deliberately simple (BM25 over an inverted index and an
//! exact cosine scan); the ANN + tantivy engine replaces them behind the same calls.

use std::collections::{HashMap, HashSet};

use memhub_types::{Memory, MemoryFilter};
use serde_json::Value;

/// Split text into lowercase, English-stemmed terms (Snowball). Letters, digits and
/// `_` form terms, so ids such as `conv_8f3a91` stay whole; terms with a digit or an
/// underscore are identifiers and are not stemmed. Stop words are kept.
pub fn tokenize(text: &str) -> Vec<String> {
    thread_local! {
        static STEMMER: rust_stemmers::Stemmer = rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English);
    }
    STEMMER.with(|stemmer| {
        text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|t| !t.is_empty() && t.len() <= 64)
            .map(|t| {
                let lower = t.to_lowercase();
                if lower.chars().any(|c| c.is_ascii_digit() || c == '_') {
                    lower
                } else {
                    stemmer.stem(&lower).into_owned()
                }
            })
            .collect()
    })
}

/// Lucene's English stop words. They stay in the index and in a query's scoring,
/// but a document that matches only stop words of a query that has other terms is
/// not a hit: a match on "a" or "the" alone never ranks.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of",
    "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will", "with",
];

/// A query's distinct terms, each with whether it is a content (non-stop) term. When
/// the query has no content term, every term counts as one.
pub fn query_terms(query: &str) -> Vec<(String, bool)> {
    let mut seen = HashSet::new();
    let terms: Vec<String> = tokenize(query).into_iter().filter(|t| seen.insert(t.clone())).collect();
    // The stop words as the tokenizer writes them (stemmed), computed once.
    static STOP: std::sync::LazyLock<HashSet<String>> =
        std::sync::LazyLock::new(|| STOP_WORDS.iter().flat_map(|w| tokenize(w)).collect());
    let stop = &*STOP;
    let any_content = terms.iter().any(|t| !stop.contains(t));
    terms
        .into_iter()
        .map(|t| {
            let content = !any_content || !stop.contains(&t);
            (t, content)
        })
        .collect()
}

/// L2-normalise; `None` for a zero or non-finite vector.
pub fn normalized(v: &[f32]) -> Option<Box<[f32]>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm.is_finite() && norm > 0.0).then(|| v.iter().map(|x| x / norm).collect())
}

/// What the index keeps of one memory.
#[derive(Debug, Clone)]
pub struct IndexedDoc {
    pub tenant: String,
    pub system_id: String,
    pub kind: String,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub session_id: Option<String>,
    pub project: Option<String>,
    pub tags: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub content_hash: String,
    /// Top-level scalar metadata values, for equality filters.
    pub metadata: Vec<(String, Value)>,
    pub vector: Option<Box<[f32]>>,
    pub model: Option<String>,
    /// Distinct terms with their frequency in the content.
    terms: Vec<(String, u32)>,
    len: u32,
}

impl IndexedDoc {
    pub fn from_memory(m: &Memory) -> Self {
        let tokens = tokenize(&m.content);
        let mut tf: HashMap<String, u32> = HashMap::new();
        for t in &tokens {
            *tf.entry(t.clone()).or_default() += 1;
        }
        IndexedDoc {
            tenant: m.tenant.clone(),
            system_id: m.system_id.clone(),
            kind: m.kind.clone(),
            user_id: m.user_id.clone(),
            agent_id: m.agent_id.clone(),
            session_id: m.session_id.clone(),
            project: m.project.clone(),
            tags: m.tags.clone(),
            created_at: m.created_at,
            expires_at: m.expires_at,
            content_hash: m.content_hash.clone(),
            metadata: m
                .metadata
                .iter()
                .filter(|(_, v)| !(v.is_object() || v.is_array()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            vector: m.embedding.as_deref().and_then(normalized),
            model: m.embedding_model.clone(),
            terms: tf.into_iter().collect(),
            len: tokens.len() as u32,
        }
    }
}

/// A filter bound to a tenant and a clock: the one definition of "visible and
/// matching" that list and every retriever use.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub tenant: &'a str,
    pub filter: &'a MemoryFilter,
    pub now: i64,
}

fn eq(want: &Option<String>, have: &Option<String>) -> bool {
    want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
}

impl Scope<'_> {
    pub fn matches(&self, d: &IndexedDoc) -> bool {
        let f = self.filter;
        d.tenant == self.tenant
            && d.expires_at.is_none_or(|t| t > self.now)
            && f.system_id.as_ref().is_none_or(|s| *s == d.system_id)
            && f.kind.as_ref().is_none_or(|k| *k == d.kind)
            && eq(&f.user_id, &d.user_id)
            && eq(&f.agent_id, &d.agent_id)
            && eq(&f.session_id, &d.session_id)
            && eq(&f.project, &d.project)
            && f.since.is_none_or(|s| d.created_at >= s)
            && f.until.is_none_or(|u| d.created_at < u)
            && (f.tags.is_empty() || f.tags.iter().any(|t| d.tags.contains(t)))
            && f.tags_all.iter().all(|t| d.tags.contains(t))
            && f.metadata
                .as_ref()
                .is_none_or(|want| want.iter().all(|(k, v)| d.metadata.iter().any(|(dk, dv)| dk == k && dv == v)))
    }
}

/// A text hit: BM25 score and the share of distinct query terms present.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextHit {
    pub seq: i64,
    pub bm25: f32,
    pub coverage: f32,
}

/// The in-memory index over all memories of the store.
#[derive(Debug, Default)]
pub struct MemoryIndex {
    docs: HashMap<i64, IndexedDoc>,
    postings: HashMap<String, HashMap<i64, u32>>,
    total_len: u64,
    /// The last `change_log` sequence number applied.
    pub applied_change: i64,
}

impl MemoryIndex {
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    pub fn get(&self, seq: i64) -> Option<&IndexedDoc> {
        self.docs.get(&seq)
    }

    /// Insert or replace the document for `seq`.
    pub fn upsert(&mut self, seq: i64, memory: &Memory) {
        self.remove(seq);
        let doc = IndexedDoc::from_memory(memory);
        for (term, tf) in &doc.terms {
            self.postings.entry(term.clone()).or_default().insert(seq, *tf);
        }
        self.total_len += u64::from(doc.len);
        self.docs.insert(seq, doc);
    }

    pub fn remove(&mut self, seq: i64) {
        if let Some(doc) = self.docs.remove(&seq) {
            for (term, _) in &doc.terms {
                if let Some(p) = self.postings.get_mut(term) {
                    p.remove(&seq);
                    if p.is_empty() {
                        self.postings.remove(term);
                    }
                }
            }
            self.total_len -= u64::from(doc.len);
        }
    }

    /// BM25 (k1 = 1.2, b = 0.75) over the docs in scope, best first, at most `n`.
    pub fn text_search(&self, query: &str, scope: Scope<'_>, n: usize) -> Vec<TextHit> {
        let terms = query_terms(query);
        if terms.is_empty() || self.docs.is_empty() {
            return Vec::new();
        }
        let n_docs = self.docs.len() as f32;
        let avg_len = (self.total_len as f32 / n_docs).max(1.0);
        // seq -> (score, terms matched, a content term matched)
        let mut scores: HashMap<i64, (f32, u32, bool)> = HashMap::new();
        let mut in_scope: HashMap<i64, bool> = HashMap::new();
        for (term, content) in &terms {
            let Some(posting) = self.postings.get(term) else {
                continue;
            };
            let df = posting.len() as f32;
            let idf = (1.0 + (n_docs - df + 0.5) / (df + 0.5)).ln();
            for (&seq, &tf) in posting {
                let ok = *in_scope.entry(seq).or_insert_with(|| scope.matches(&self.docs[&seq]));
                if !ok {
                    continue;
                }
                let len = self.docs[&seq].len as f32;
                let tf = tf as f32;
                let s = idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len / avg_len));
                let e = scores.entry(seq).or_default();
                e.0 += s;
                e.1 += 1;
                e.2 |= *content;
            }
        }
        let mut hits: Vec<TextHit> = scores
            .into_iter()
            .filter(|(_, (_, _, content))| *content)
            .map(|(seq, (bm25, matched, _))| TextHit { seq, bm25, coverage: matched as f32 / terms.len() as f32 })
            .collect();
        top_n(&mut hits, n, |h| (h.bm25, h.seq));
        hits
    }

    /// Exact cosine scan over docs in scope whose vector came from `model`.
    pub fn vector_search(&self, query: &[f32], model: &str, scope: Scope<'_>, n: usize) -> Vec<(i64, f32)> {
        let mut hits: Vec<(i64, f32)> = self
            .docs
            .iter()
            .filter_map(|(&seq, d)| {
                let v = d.vector.as_ref()?;
                if d.model.as_deref() != Some(model) || v.len() != query.len() || !scope.matches(d) {
                    return None;
                }
                Some((seq, v.iter().zip(query).map(|(a, b)| a * b).sum::<f32>()))
            })
            .collect();
        top_n(&mut hits, n, |h| (h.1, h.0));
        hits
    }

    /// Docs in scope, newest first (`created_at`, then `seq`), strictly after `cursor`.
    pub fn list(&self, scope: Scope<'_>, after: Option<(i64, i64)>, n: usize) -> Vec<(i64, i64)> {
        let mut keys: Vec<(i64, i64)> = self
            .docs
            .iter()
            .filter(|(&seq, d)| scope.matches(d) && after.is_none_or(|c| (d.created_at, seq) < c))
            .map(|(&seq, d)| (d.created_at, seq))
            .collect();
        let n = n.min(keys.len());
        if n < keys.len() {
            keys.select_nth_unstable_by(n, |a, b| b.cmp(a));
            keys.truncate(n);
        }
        keys.sort_unstable_by(|a, b| b.cmp(a));
        keys
    }

    /// Count docs in scope.
    pub fn count(&self, scope: Scope<'_>) -> usize {
        self.docs.values().filter(|d| scope.matches(d)).count()
    }

    /// Iterate all docs (for stats).
    pub fn docs(&self) -> impl Iterator<Item = (&i64, &IndexedDoc)> {
        self.docs.iter()
    }
}

/// Keep the `n` best by `key` (descending; ties broken by the second key, descending),
/// sorted best first.
fn top_n<T, F: Fn(&T) -> (f32, i64)>(items: &mut Vec<T>, n: usize, key: F) {
    let cmp = |a: &T, b: &T| {
        let (ka, sa) = key(a);
        let (kb, sb) = key(b);
        kb.total_cmp(&ka).then(sb.cmp(&sa))
    };
    if n < items.len() {
        items.select_nth_unstable_by(n, cmp);
        items.truncate(n);
    }
    items.sort_unstable_by(cmp);
}

#[cfg(test)]
mod tests {
    use super::*;
    use memhub_types::memory::IngestionMethod;
    use serde_json::json;

    fn memory(tenant: &str, system: &str, content: &str, created_at: i64) -> Memory {
        Memory {
            id: uuid::Uuid::now_v7(),
            tenant: tenant.into(),
            system_id: system.into(),
            memory_id: content.into(),
            kind: "note".into(),
            schema_version: 1,
            content: content.into(),
            attributes: json!({}),
            metadata: json!({"speaker": "Ann", "nested": {"x": 1}}).as_object().unwrap().clone(),
            tags: vec!["a".into(), "b".into()],
            user_id: Some("u1".into()),
            agent_id: None,
            session_id: None,
            project: None,
            created_at,
            ingested_at: created_at,
            updated_at: created_at,
            expires_at: None,
            embedding: None,
            embedding_model: None,
            content_hash: content.into(),
            version: 1,
            ingestion_method: IngestionMethod::Rest,
        }
    }

    #[test]
    fn tokenizer_keeps_identifiers_lowercases_and_stems() {
        assert_eq!(
            tokenize("See conv_8f3a91, in /src/Main.rs!"),
            vec!["see", "conv_8f3a91", "in", "src", "main", "rs"]
        );
        assert_eq!(tokenize("Café ÜBER"), vec!["café", "über"]);
        assert_eq!(tokenize("Camping trips, deployed deploys"), vec!["camp", "trip", "deploy", "deploy"]);
        assert_eq!(tokenize("build_2024s v2s"), vec!["build_2024s", "v2s"], "identifiers are not stemmed");
    }

    #[test]
    fn a_stop_word_alone_is_not_a_match_but_still_scores() {
        let content = |q: &str| query_terms(q).into_iter().filter(|t| t.1).map(|t| t.0).collect::<Vec<_>>();
        assert_eq!(content("Is the cat on a mat?"), vec!["cat", "mat"]);
        assert_eq!(
            content("to be or not to be"),
            vec!["to", "be", "or", "not"],
            "all-stop-word queries keep every term"
        );
        let mut idx = MemoryIndex::default();
        idx.upsert(1, &memory("t", "s", "A man is playing a guitar", 1));
        idx.upsert(2, &memory("t", "s", "To be or not to be", 2));
        let all = MemoryFilter::default();
        let scope = Scope { tenant: "t", filter: &all, now: 0 };
        assert!(idx.text_search("someone having a meal", scope, 10).is_empty(), "a stop word alone does not match");
        assert_eq!(idx.text_search("to be", scope, 10)[0].seq, 2);
        // Stop words still add to the score of a document that matches a content term.
        idx.upsert(3, &memory("t", "s", "the guitar", 3));
        idx.upsert(4, &memory("t", "s", "guitar", 4));
        let hits = idx.text_search("the guitar", scope, 10);
        assert_eq!(hits.iter().map(|h| h.seq).collect::<Vec<_>>()[0], 3, "{hits:?}");
    }

    #[test]
    fn scope_applies_every_filter_and_tenant_and_expiry() {
        let mut m = memory("t1", "slack", "hello", 100);
        let d = IndexedDoc::from_memory(&m);
        let all = MemoryFilter::default();
        assert!(Scope { tenant: "t1", filter: &all, now: 0 }.matches(&d));
        assert!(!Scope { tenant: "t2", filter: &all, now: 0 }.matches(&d));
        let f = |f: MemoryFilter| Scope { tenant: "t1", filter: &f, now: 0 }.matches(&d);
        assert!(f(MemoryFilter { system_id: Some("slack".into()), ..Default::default() }));
        assert!(!f(MemoryFilter { system_id: Some("github".into()), ..Default::default() }));
        assert!(f(MemoryFilter { user_id: Some("u1".into()), ..Default::default() }));
        assert!(!f(MemoryFilter { session_id: Some("s".into()), ..Default::default() }));
        assert!(f(MemoryFilter { tags: vec!["zz".into(), "b".into()], ..Default::default() }));
        assert!(!f(MemoryFilter { tags_all: vec!["a".into(), "zz".into()], ..Default::default() }));
        assert!(f(MemoryFilter { since: Some(100), until: Some(101), ..Default::default() }));
        assert!(!f(MemoryFilter { until: Some(100), ..Default::default() }));
        let meta = |v: Value| MemoryFilter {
            metadata: Some(json!({"speaker": v}).as_object().unwrap().clone()),
            ..Default::default()
        };
        assert!(f(meta(json!("Ann"))));
        assert!(!f(meta(json!("Bob"))));
        m.expires_at = Some(50);
        let d = IndexedDoc::from_memory(&m);
        assert!(Scope { tenant: "t1", filter: &all, now: 49 }.matches(&d));
        assert!(!Scope { tenant: "t1", filter: &all, now: 50 }.matches(&d));
    }

    #[test]
    fn text_search_ranks_by_bm25_and_respects_scope_and_removal() {
        let mut idx = MemoryIndex::default();
        idx.upsert(1, &memory("t", "s", "the cat sat on the mat", 1));
        idx.upsert(2, &memory("t", "s", "cat cat cat", 2));
        idx.upsert(3, &memory("t", "other", "a dog", 3));
        idx.upsert(4, &memory("u", "s", "cat", 4));
        let all = MemoryFilter::default();
        let scope = Scope { tenant: "t", filter: &all, now: 0 };
        let hits = idx.text_search("cat dog", scope, 10);
        assert_eq!(hits.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![3, 2, 1]);
        assert_eq!(hits[1].coverage, 0.5);
        idx.remove(2);
        idx.upsert(1, &memory("t", "s", "now about birds", 1));
        assert_eq!(idx.text_search("cat", scope, 10), vec![]);
        assert_eq!(idx.text_search("birds", scope, 10)[0].seq, 1);
    }

    #[test]
    fn vector_search_is_exact_cosine_within_model_and_scope() {
        let mut idx = MemoryIndex::default();
        for (seq, v, model) in [(1, [1.0, 0.0], "m"), (2, [0.6, 0.8], "m"), (3, [1.0, 0.1], "other")] {
            let mut m = memory("t", "s", "x", seq);
            m.embedding = Some(v.to_vec());
            m.embedding_model = Some(model.into());
            idx.upsert(seq, &m);
        }
        let all = MemoryFilter::default();
        let hits = idx.vector_search(&[0.0, 1.0], "m", Scope { tenant: "t", filter: &all, now: 0 }, 10);
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].0, 2);
        assert!((hits[0].1 - 0.8).abs() < 1e-6);
    }

    #[test]
    fn list_pages_newest_first() {
        let mut idx = MemoryIndex::default();
        for seq in 1..=5 {
            idx.upsert(seq, &memory("t", "s", "x", seq * 10));
        }
        let all = MemoryFilter::default();
        let scope = Scope { tenant: "t", filter: &all, now: 0 };
        let page = idx.list(scope, None, 2);
        assert_eq!(page, vec![(50, 5), (40, 4)]);
        assert_eq!(idx.list(scope, Some(page[1]), 10), vec![(30, 3), (20, 2), (10, 1)]);
    }
}
