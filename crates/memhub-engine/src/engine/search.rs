//! Hybrid search: the keyword and vector retrievers (and the cold scan), fused by reciprocal rank.

use super::*;

/// A search candidate: a memory in the indexes (hot or warm) or the `i`th scanned
/// cold memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Key {
    Doc(DocId),
    Cold(usize),
}

/// A search candidate while retrievers' results are fused.
pub(super) struct Candidate {
    key: Key,
    /// Weighted reciprocal-rank sum.
    score: f32,
    similarity: f32,
    retrievers: Vec<&'static str>,
    /// Identifies the content, to collapse duplicates.
    content_key: u64,
}

/// The vector retriever's weight in fusion when a search names none (the keyword
/// retriever gets the rest). Below 0.5 because stemmed BM25 is the stronger retriever
/// on conversational recall with all-MiniLM-L6-v2: on LoCoMo, evidence recall@10 was
/// 0.548 at 0.5, 0.574 at 0.35 and 0.614 at 0.2 (BENCHMARKS.md).
pub const DEFAULT_SEMANTIC_RATIO: f32 = 0.3;

/// The reciprocal-rank-fusion constant (Cormack et al.: 60).
pub(super) const RRF_K: f32 = 60.0;

/// One retriever's hits from the indexes and the cold scan merged by score `(key,
/// score, similarity)`, best `n` first: `(key, similarity, rank)`.
fn ranked(hits: impl Iterator<Item = (Key, f32, f32)>, n: usize) -> Vec<(Key, f32, usize)> {
    let mut hits: Vec<(Key, f32, f32)> = hits.collect();
    hits.sort_by(|a, b| b.1.total_cmp(&a.1));
    hits.truncate(n);
    let ranks = competition_ranks(hits.iter().map(|h| h.1));
    hits.into_iter().zip(ranks).map(|((key, _, similarity), rank)| (key, similarity, rank)).collect()
}

/// 1-based ranks of scores sorted best first, equal scores sharing a rank
/// ("1224" ranking), so ties in one retriever do not decide the fused order.
fn competition_ranks(sorted_scores: impl Iterator<Item = f32>) -> Vec<usize> {
    let mut ranks: Vec<usize> = Vec::new();
    let mut last: Option<f32> = None;
    for (i, s) in sorted_scores.enumerate() {
        let rank = match (last, ranks.last()) {
            (Some(l), Some(&r)) if l == s => r,
            _ => i + 1,
        };
        ranks.push(rank);
        last = Some(s);
    }
    ranks
}

impl Engine {
    /// Hybrid search: BM25 and exact vector scan, fused by reciprocal rank.
    pub fn search(&self, scope: &Scope, req: &SearchRequest) -> Result<SearchResponse> {
        let started = std::time::Instant::now();
        let limit = check_limit(req.limit, 10, crate::limits::PAGE)?;
        let ratio = req.semantic_ratio.unwrap_or(DEFAULT_SEMANTIC_RATIO);
        if !(0.0..=1.0).contains(&ratio) {
            return Err(Error::field(ErrorCode::InvalidField, "semantic_ratio", "must be between 0 and 1"));
        }
        let query_vector = match &req.query_embedding {
            Some(v) => {
                check_embedding("query_embedding", v, self.config.embedding_dim)?;
                Some(normalized(v).ok_or_else(|| {
                    Error::field(ErrorCode::InvalidField, "query_embedding", "must not be the zero vector")
                })?)
            }
            None => match (&self.embedder, req.query.trim().is_empty(), req.semantic_ratio == Some(0.0)) {
                (Some(embedder), false, false) => {
                    let v = embedder
                        .embed(&[req.query.as_str()])
                        .map_err(|e| Error::new(ErrorCode::InternalError, format!("cannot embed the query: {e}")))?;
                    v.into_iter().next().and_then(|v| normalized(&v))
                }
                _ => None,
            },
        };
        if req.query.trim().is_empty() && query_vector.is_none() {
            return Err(Error::field(ErrorCode::InvalidField, "query", "give a query text or a query_embedding"));
        }
        let use_text = !req.query.trim().is_empty() && (ratio < 1.0 || query_vector.is_none());
        let use_vector = query_vector.is_some() && (ratio > 0.0 || !use_text);
        let mode = match (use_text, use_vector) {
            (true, true) => "hybrid",
            (false, true) => "vector",
            _ => "keyword",
        };
        let candidates = (limit * 4).max(100);
        let now = now_micros();
        let tiers = req.searched_tiers();
        let vector_query = query_vector.as_deref().filter(|_| use_vector);
        // Cold memories are scanned from their Parquet files (partitions pruned by the
        // filter) and scored on their own; their ranks merge with the indexes' by score.
        let cold_hits = if let (true, Some(cold)) = (tiers.contains(&Tier::Cold), &self.cold) {
            let terms = if use_text { query_terms(&req.query) } else { Vec::new() };
            let retention = self.retention_policies();
            let selection = memhub_types::Selection { scope, filter: &req.filter, retention: &retention, now };
            let scanned = cold.scan(self.store(), &selection)?;
            score_cold(scanned, &terms, query_vector.as_deref(), &self.config.embedding_model)
        } else {
            Vec::new()
        };

        let mut fused: HashMap<Key, Candidate> = HashMap::new();
        {
            let state = self.indexes.read();
            let mut plan = state.filters.plan(scope, &req.filter, now);
            plan.restrict_tiers(&tiers);
            let mut add = |key: Key, rank: usize, weight: f32, similarity: f32, retriever: &'static str| {
                let c = fused.entry(key).or_insert_with(|| Candidate {
                    key,
                    score: 0.0,
                    similarity,
                    retrievers: Vec::new(),
                    content_key: match key {
                        Key::Doc(id) => state.filters.get(id).map_or(0, |d| d.content_key),
                        Key::Cold(i) => content_key(&cold_hits[i].memory().content_hash),
                    },
                });
                c.score += weight / (RRF_K + rank as f32);
                c.retrievers.push(retriever);
                if retriever == "vector" {
                    c.similarity = similarity;
                }
            };
            // The two retrievers are independent: with both, the vector one runs on a
            // helper thread (an agent waits on the slower of the two, not their sum).
            let vector_search = |q: &[f32]| self.indexes.vector_search(&state, q, &plan, &tiers, candidates);
            let text_search = || self.indexes.text_search(&state, &req.query, &plan, candidates);
            let (text_hits, vector_hits) = match (use_text, vector_query) {
                (true, Some(q)) => {
                    let mut vector = None;
                    let text = self.search_helpers.in_place_scope(|s| {
                        s.spawn(|_| {
                            vector = Some(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vector_search(q))));
                        });
                        text_search()
                    });
                    let vector = vector
                        .ok_or_else(|| Error::internal("vector search did not run"))?
                        .map_err(|_| Error::internal("vector search panicked"))?;
                    (Some(text?), Some(vector))
                }
                (true, None) => (Some(text_search()?), None),
                (false, q) => (None, q.map(vector_search)),
            };
            if let Some(hits) = text_hits {
                let w = if use_vector { 1.0 - ratio } else { 1.0 };
                let hot = hits.into_iter().map(|h| (Key::Doc(h.id), h.bm25, h.coverage));
                let cold = cold_hits.iter().enumerate().filter(|(_, h)| h.bm25 > 0.0);
                for (key, coverage, rank) in
                    ranked(hot.chain(cold.map(|(i, h)| (Key::Cold(i), h.bm25, h.coverage))), candidates)
                {
                    add(key, rank, w, coverage, "text");
                }
            }
            if let Some(hits) = vector_hits {
                let w = if use_text { ratio } else { 1.0 };
                let hot = hits.into_iter().map(|(id, cos)| (Key::Doc(id), cos, cos));
                let cold = cold_hits.iter().enumerate().filter_map(|(i, h)| h.cosine.map(|c| (Key::Cold(i), c, c)));
                for (key, cos, rank) in ranked(hot.chain(cold), candidates) {
                    add(key, rank, w, cos, "vector");
                }
            }
            // With a query vector, every hit's similarity is its cosine when it has a
            // vector of the model, so thresholds mean the same for all hits.
            if let Some(q) = query_vector.as_deref() {
                let keyword_only = |c: &Candidate| !c.retrievers.contains(&"vector");
                let ids: Vec<DocId> = fused
                    .values()
                    .filter(|c| keyword_only(c))
                    .filter_map(|c| if let Key::Doc(id) = c.key { Some(id) } else { None })
                    .collect();
                let cosines: HashMap<DocId, f32> = self.indexes.similarities(&state, q, &ids).into_iter().collect();
                for (key, c) in fused.iter_mut().filter(|(_, c)| keyword_only(c)) {
                    let cosine = match key {
                        Key::Doc(id) => cosines.get(id).copied(),
                        Key::Cold(i) => cold_hits[*i].cosine,
                    };
                    if let Some(cosine) = cosine {
                        c.similarity = cosine;
                    }
                }
            }
            if let Some(half_life) = req.recency_half_life {
                for (key, c) in fused.iter_mut() {
                    let created_at = match key {
                        Key::Doc(id) => state.filters.get(*id).map(|d| d.created_at),
                        Key::Cold(i) => Some(cold_hits[*i].memory().created_at),
                    };
                    if let Some(created_at) = created_at {
                        let age_seconds = ((now - created_at).max(0) as f64) / 1e6;
                        c.score *= 0.5f64.powf(age_seconds / half_life) as f32;
                    }
                }
            }
        }
        let min = req.min_score.unwrap_or(f32::MIN);
        let mut ranked: Vec<Candidate> = fused.into_values().filter(|c| c.similarity >= min).collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.key.cmp(&a.key)));
        // Near-duplicates (same content) collapse to the best-ranked one.
        let mut seen = HashSet::new();
        ranked.retain(|c| seen.insert(c.content_key));
        ranked.truncate(limit);

        let seqs: Vec<i64> =
            ranked.iter().filter_map(|c| if let Key::Doc(id) = c.key { Some(i64::from(id)) } else { None }).collect();
        let mut loaded: HashMap<i64, Memory> = self.store.memories_by_row(&seqs)?.into_iter().collect();
        let results: Vec<SearchHit> = ranked
            .into_iter()
            .filter_map(|c| {
                let mut memory = match c.key {
                    Key::Doc(id) => loaded.remove(&i64::from(id))?,
                    // Each key is ranked once, so each cold hit is copied at most once.
                    Key::Cold(i) => cold_hits[i].memory().clone(),
                };
                if !req.include_embedding {
                    memory.embedding = None;
                }
                Some(SearchHit {
                    memory,
                    score: c.score,
                    similarity: c.similarity,
                    retrievers: c.retrievers.into_iter().map(String::from).collect(),
                })
            })
            .collect();
        telemetry::search(mode, tiers.contains(&Tier::Cold), started.elapsed().as_secs_f64());
        Ok(SearchResponse { query: req.query.clone(), total_results: results.len(), results, mode: mode.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::competition_ranks;

    #[test]
    fn tied_scores_share_a_rank() {
        assert_eq!(competition_ranks([3.0, 2.0, 2.0, 1.0].into_iter()), vec![1, 2, 2, 4]);
        assert_eq!(competition_ranks([5.0, 5.0, 5.0].into_iter()), vec![1, 1, 1]);
        assert_eq!(competition_ranks(std::iter::empty()), Vec::<usize>::new());
    }
}
