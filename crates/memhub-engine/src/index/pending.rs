//! Changes the persisted indexes have not taken in yet. The write path only touches
//! these (cheap, in memory), so a write never waits on a tantivy commit or an HNSW
//! insert; the index maintainer drains them in the background. Searches read the
//! persisted index *and* these, and ignore persisted entries of any memory listed
//! here (its persisted version is stale or deleted).

use std::collections::HashMap;

use super::filters::{DocId, Plan};

/// Changed memories with their current state (`None` = deleted or nothing to index),
/// each stamped with a generation so a drain can tell whether it changed again.
#[derive(Debug)]
pub struct Changes<T> {
    entries: HashMap<DocId, (u64, Option<T>)>,
    next_gen: u64,
}

impl<T> Default for Changes<T> {
    fn default() -> Self {
        Changes { entries: HashMap::new(), next_gen: 0 }
    }
}

impl<T: Clone> Changes<T> {
    /// Record `id`'s new state; returns the pending state it replaces.
    pub fn set(&mut self, id: DocId, value: Option<T>) -> Option<T> {
        self.next_gen += 1;
        self.entries.insert(id, (self.next_gen, value)).and_then(|(_, old)| old)
    }

    pub fn contains(&self, id: DocId) -> bool {
        self.entries.contains_key(&id)
    }

    pub fn get(&self, id: DocId) -> Option<&T> {
        self.entries.get(&id).and_then(|(_, v)| v.as_ref())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Up to `max` changes to drain: `(id, generation, state)`.
    pub fn snapshot(&self, max: usize) -> Vec<(DocId, u64, Option<T>)> {
        let mut out: Vec<_> = self.entries.iter().map(|(id, (g, v))| (*id, *g, v.clone())).collect();
        // Oldest changes first, so a bounded drain makes progress in write order.
        if out.len() > max {
            out.select_nth_unstable_by_key(max, |e| e.1);
            out.truncate(max);
        }
        out
    }

    /// Forget drained changes that did not change again since their snapshot;
    /// returns the states removed.
    pub fn settle(&mut self, drained: &[(DocId, u64)]) -> Vec<(DocId, Option<T>)> {
        let mut removed = Vec::new();
        for (id, g) in drained {
            if self.entries.get(id).is_some_and(|(cur, _)| cur == g) {
                let (_, v) = self.entries.remove(id).expect("present");
                removed.push((*id, v));
            }
        }
        removed
    }

    pub fn iter(&self) -> impl Iterator<Item = (DocId, &T)> {
        self.entries.iter().filter_map(|(id, (_, v))| v.as_ref().map(|v| (*id, v)))
    }
}

/// A memory's analysed text: distinct terms with their frequency, and its length.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysed {
    pub terms: Vec<(String, u32)>,
    pub len: u32,
}

impl Analysed {
    pub fn of(text: &str) -> Self {
        let tokens = super::tokens::tokenize(text);
        let mut tf: HashMap<String, u32> = HashMap::new();
        for t in &tokens {
            *tf.entry(t.clone()).or_default() += 1;
        }
        let mut terms: Vec<(String, u32)> = tf.into_iter().collect();
        terms.sort_unstable();
        Analysed { terms, len: tokens.len() as u32 }
    }
}

/// Corpus statistics BM25 needs, from the persisted index.
#[derive(Debug, Clone, Copy, Default)]
pub struct CorpusStats {
    pub docs: u64,
    pub tokens: u64,
}

/// A text hit: BM25 score and the share of distinct query terms present.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextHit {
    pub id: DocId,
    pub bm25: f32,
    pub coverage: f32,
}

/// Text changes, with an inverted index over them so they can be searched.
#[derive(Debug, Default)]
pub struct PendingText {
    changes: Changes<Analysed>,
    postings: HashMap<String, HashMap<DocId, u32>>,
    total_len: u64,
}

impl PendingText {
    pub fn changes(&self) -> &Changes<Analysed> {
        &self.changes
    }

    pub fn set(&mut self, id: DocId, text: Option<Analysed>) {
        if let Some(t) = &text {
            for (term, tf) in &t.terms {
                self.postings.entry(term.clone()).or_default().insert(id, *tf);
            }
            self.total_len += u64::from(t.len);
        }
        if let Some(old) = self.changes.set(id, text.clone()) {
            self.unpost(id, &old, text.as_ref());
        }
    }

    fn unpost(&mut self, id: DocId, old: &Analysed, keep: Option<&Analysed>) {
        for (term, _) in &old.terms {
            if keep.is_some_and(|k| k.terms.iter().any(|(t, _)| t == term)) {
                continue;
            }
            if let Some(p) = self.postings.get_mut(term) {
                p.remove(&id);
                if p.is_empty() {
                    self.postings.remove(term);
                }
            }
        }
        self.total_len -= u64::from(old.len);
    }

    pub fn settle(&mut self, drained: &[(DocId, u64)]) {
        for (id, old) in self.changes.settle(drained) {
            if let Some(old) = old {
                self.unpost(id, &old, None);
            }
        }
    }

    /// Document frequency of `term` among pending texts.
    pub fn doc_freq(&self, term: &str) -> u64 {
        self.postings.get(term).map_or(0, |p| p.len() as u64)
    }

    pub fn stats(&self) -> CorpusStats {
        CorpusStats { docs: self.changes.iter().count() as u64, tokens: self.total_len }
    }

    /// BM25 (k1 = 1.2, b = 0.75) over pending texts that match `plan`, best first, at
    /// most `n`. `idf` gives each term's weight over the whole corpus; `avg_len` is
    /// the whole corpus's mean length. A hit must match a content (non-stop) term,
    /// every one with `match_all`.
    pub fn search(
        &self,
        terms: &[(String, bool)],
        match_all: bool,
        idf: &dyn Fn(&str) -> f32,
        avg_len: f32,
        plan: &Plan<'_>,
        n: usize,
    ) -> Vec<TextHit> {
        // Per memory: score, terms matched, content terms matched.
        let mut scores: HashMap<DocId, (f32, u32, usize)> = HashMap::new();
        for (term, content) in terms {
            let Some(posting) = self.postings.get(term) else { continue };
            let w = idf(term);
            for (&id, &tf) in posting {
                if !plan.matches(id) {
                    continue;
                }
                let Some(doc) = self.changes.get(id) else { continue };
                let tf = tf as f32;
                let s = w * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * doc.len as f32 / avg_len));
                let e = scores.entry(id).or_default();
                e.0 += s;
                e.1 += 1;
                e.2 += usize::from(*content);
            }
        }
        let wanted = if match_all { terms.iter().filter(|t| t.1).count() } else { 1 };
        let mut hits: Vec<TextHit> = scores
            .into_iter()
            .filter(|(_, (_, _, content))| *content >= wanted)
            .map(|(id, (bm25, matched, _))| TextHit { id, bm25, coverage: matched as f32 / terms.len() as f32 })
            .collect();
        top_n(&mut hits, n, |h| (h.bm25, h.id));
        hits
    }
}

/// BM25's inverse document frequency, as tantivy and Lucene compute it.
pub fn idf(docs: u64, df: u64) -> f32 {
    let (n, df) = (docs as f32, df as f32);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// Vector changes: the memory's normalised vector of the engine's model, or `None`.
pub type PendingVectors = Changes<Box<[f32]>>;

impl PendingVectors {
    /// Exact cosine over pending vectors that match `plan`.
    pub fn search(&self, query: &[f32], plan: &Plan<'_>) -> Vec<(DocId, f32)> {
        self.iter().filter(|(id, _)| plan.matches(*id)).map(|(id, v)| (id, dot(v, query))).collect()
    }
}

#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Keep the `n` best by `key` (descending; ties broken by the second key, descending),
/// sorted best first.
pub fn top_n<T, K: Ord + Copy, F: Fn(&T) -> (f32, K)>(items: &mut Vec<T>, n: usize, key: F) {
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
    use super::super::filters::{FilterTable, MetaSource};
    use super::super::tokens::query_terms;
    use super::*;
    use memhub_types::MemoryFilter;

    fn table(ids: &[(DocId, &str)]) -> FilterTable {
        let md = serde_json::Map::new();
        let mut t = FilterTable::default();
        for (id, tenant) in ids {
            t.upsert(
                *id,
                &MetaSource {
                    tenant,
                    system_id: "s",
                    kind: "note",
                    user_id: None,
                    agent_id: None,
                    session_id: None,
                    project: None,
                    tags: &[],
                    created_at: 0,
                    expires_at: None,
                    metadata: &md,
                    content_hash: "00",
                    has_vector: false,
                    tier: memhub_types::Tier::Hot,
                },
            );
        }
        t
    }

    fn search(p: &PendingText, t: &FilterTable, tenant: &str, q: &str) -> Vec<TextHit> {
        let terms = query_terms(q);
        let stats = p.stats();
        let avg = stats.tokens as f32 / stats.docs.max(1) as f32;
        let plan = t.plan(&tenant.into(), &MemoryFilter::default(), 0);
        p.search(&terms, false, &|term| idf(stats.docs, p.doc_freq(term)), avg, &plan, 10)
    }

    #[test]
    fn pending_text_ranks_by_bm25_within_the_plan_and_forgets_replaced_text() {
        let t = table(&[(1, "t"), (2, "t"), (3, "t"), (4, "u")]);
        let mut p = PendingText::default();
        p.set(1, Some(Analysed::of("the cat sat on the mat")));
        p.set(2, Some(Analysed::of("cat cat cat")));
        p.set(3, Some(Analysed::of("a dog")));
        p.set(4, Some(Analysed::of("cat")));
        let hits = search(&p, &t, "t", "cat dog");
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![3, 2, 1], "{hits:?}");
        assert_eq!(hits[1].coverage, 0.5);
        assert!(search(&p, &t, "t", "someone having a meal").is_empty(), "a stop word alone does not match");
        let plan = t.plan(&"t".into(), &MemoryFilter::default(), 0);
        let all = p.search(&query_terms("cat mat"), true, &|_| 1.0, 3.0, &plan, 10);
        assert_eq!(all.iter().map(|h| h.id).collect::<Vec<_>>(), vec![1], "match_all wants every content term");
        p.set(2, None);
        p.set(1, Some(Analysed::of("now about birds")));
        assert_eq!(search(&p, &t, "t", "cat"), vec![]);
        assert_eq!(search(&p, &t, "t", "birds")[0].id, 1);
        assert!(p.changes().contains(2), "a deletion stays pending until drained");
    }

    #[test]
    fn settle_keeps_changes_made_after_the_snapshot() {
        let mut p = PendingText::default();
        p.set(1, Some(Analysed::of("first")));
        p.set(2, Some(Analysed::of("second")));
        let snap: Vec<(DocId, u64)> = p.changes().snapshot(10).iter().map(|(id, g, _)| (*id, *g)).collect();
        p.set(2, Some(Analysed::of("second again")));
        p.settle(&snap);
        assert!(!p.changes().contains(1));
        assert_eq!(p.changes().get(2), Some(&Analysed::of("second again")));
        assert_eq!(p.doc_freq("first"), 0, "settled text leaves the postings");
        assert_eq!(p.doc_freq("again"), 1);
        assert_eq!(p.stats().tokens, 2);
    }

    #[test]
    fn a_bounded_snapshot_takes_the_oldest_changes() {
        let mut v = PendingVectors::default();
        for id in [5, 3, 9, 1] {
            v.set(id, Some(vec![1.0].into()));
        }
        let mut ids: Vec<DocId> = v.snapshot(2).iter().map(|e| e.0).collect();
        ids.sort();
        assert_eq!(ids, vec![3, 5]);
    }
}
