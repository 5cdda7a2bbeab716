//! Hybrid search: the keyword and vector retrievers over the indexes and the cold
//! scan, fused by reciprocal rank ([`fusion`]).

use super::fusion::{self, Facts, Ranking, Source};
use super::*;
use crate::cold::ColdHit;
use crate::index::IndexState;

/// A search candidate: a memory in the indexes (hot or warm) or the `i`th scanned
/// cold memory. Only this file tells them apart; fusion sees keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Doc(DocId),
    Cold(usize),
}

/// The vector retriever's weight in fusion when a search names none (the keyword
/// retriever gets the rest). Below 0.5 because stemmed BM25 is the stronger retriever
/// on conversational recall with all-MiniLM-L6-v2: on LoCoMo, evidence recall@10 was
/// 0.548 at 0.5, 0.574 at 0.35 and 0.614 at 0.2 (BENCHMARKS.md).
pub const DEFAULT_SEMANTIC_RATIO: f32 = 0.3;

impl Engine {
    /// Hybrid search: BM25 and the vector graphs (and the cold scan), fused by reciprocal rank.
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
                    let (v, found) = self
                        .query_vectors
                        .get(embedder.as_ref(), &req.query)
                        .map_err(|e| Error::new(ErrorCode::InternalError, format!("cannot embed the query: {e}")))?;
                    metrics::counter!(crate::telemetry::QUERY_VECTORS, "found" => found.as_str()).increment(1);
                    normalized(&v)
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

        let ranked = {
            let state = self.indexes.read();
            let mut plan = state.filters.plan(scope, &req.filter, now);
            plan.restrict_tiers(&tiers);
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
            // Each retriever reads the indexes and the cold scan: two sources of one list.
            let mut sources = Vec::new();
            if let Some(hits) = text_hits {
                let weight = if use_vector { 1.0 - ratio } else { 1.0 };
                let hot = hits.into_iter().map(|h| (Key::Doc(h.id), h.bm25, h.coverage)).collect();
                let cold = cold_hits.iter().enumerate().filter(|(_, h)| h.bm25 > 0.0);
                let cold = cold.map(|(i, h)| (Key::Cold(i), h.bm25, h.coverage)).collect();
                sources.push(Source { retriever: "text", weight, hits: hot });
                sources.push(Source { retriever: "text", weight, hits: cold });
            }
            if let Some(hits) = vector_hits {
                let weight = if use_text { ratio } else { 1.0 };
                let hot = hits.into_iter().map(|(id, cos)| (Key::Doc(id), cos, cos)).collect();
                let cold = cold_hits.iter().enumerate().filter_map(|(i, h)| h.cosine.map(|c| (Key::Cold(i), c, c)));
                sources.push(Source { retriever: fusion::VECTOR, weight, hits: hot });
                sources.push(Source { retriever: fusion::VECTOR, weight, hits: cold.collect() });
            }
            let fused = fusion::fuse(sources, candidates);

            let facts = self.facts(&state, &fused, &cold_hits, query_vector.as_deref());
            let how = Ranking {
                limit,
                min_similarity: req.min_score.unwrap_or(f32::MIN),
                recency_half_life: req.recency_half_life,
                now,
            };
            fusion::rank(fused, &facts, &how)
        };

        let seqs: Vec<i64> =
            ranked.iter().filter_map(|c| if let Key::Doc(id) = c.key { Some(i64::from(id)) } else { None }).collect();
        let mut loaded: HashMap<i64, Memory> = self.hits.get(&seqs, |rows| self.store.memories_by_row(rows))?;
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

    /// What ranking needs beyond the hits, looked up once per candidate: content
    /// identity, age, and for keyword-only hits their cosine to the query vector.
    fn facts(
        &self,
        state: &IndexState,
        fused: &[fusion::Candidate<Key>],
        cold_hits: &[ColdHit],
        query_vector: Option<&[f32]>,
    ) -> Vec<Facts> {
        let keyword_only: Vec<DocId> = fused
            .iter()
            .filter(|c| c.keyword_only())
            .filter_map(|c| if let Key::Doc(id) = c.key { Some(id) } else { None })
            .collect();
        let cosines: HashMap<DocId, f32> = match query_vector {
            Some(q) => self.indexes.similarities(state, q, &keyword_only).into_iter().collect(),
            None => HashMap::new(),
        };
        fused
            .iter()
            .map(|c| match c.key {
                Key::Doc(id) => {
                    let doc = state.filters.get(id);
                    Facts {
                        content_key: doc.map_or(0, |d| d.content_key),
                        created_at: doc.map(|d| d.created_at),
                        cosine: cosines.get(&id).copied(),
                    }
                }
                Key::Cold(i) => {
                    let m = cold_hits[i].memory();
                    Facts {
                        content_key: content_key(&m.content_hash),
                        created_at: Some(m.created_at),
                        cosine: cold_hits[i].cosine,
                    }
                }
            })
            .collect()
    }
}
