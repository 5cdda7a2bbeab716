//! Reciprocal-rank fusion as pure functions over retrievers' hit lists.
//!
//! A search asks each retriever (BM25 over the text index, the vector graphs, and
//! the cold scan, which scores the same two ways) for its hits; [`fuse`] turns the
//! lists into candidates and [`rank`] orders them. Neither knows where a hit came
//! from: a candidate is any key, and what fusion needs beyond the hits (content
//! identity for collapsing, age for recency, a cosine for keyword-only hits) comes
//! in as [`Facts`]. So a new source (another tier, another backend) is one more list.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// The reciprocal-rank-fusion constant (Cormack et al.: 60).
pub(super) const RRF_K: f32 = 60.0;

/// The retriever that scores by vector similarity: its similarity is a cosine, so it
/// wins over any other's.
pub(super) const VECTOR: &str = "vector";

/// One source's hits for one retriever. Sources of the same retriever (the text
/// index and the cold scan's BM25, say) are merged by score before ranking, so the
/// retriever ranks over all of them as one list.
pub(super) struct Source<K> {
    pub retriever: &'static str,
    /// The retriever's share of the fused score.
    pub weight: f32,
    /// `(key, score, similarity)`: the score orders the retriever's list; the
    /// similarity is what a caller's `min_score` is compared with.
    pub hits: Vec<(K, f32, f32)>,
}

/// A candidate after fusion.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Candidate<K> {
    pub key: K,
    /// Weighted reciprocal-rank sum.
    pub score: f32,
    pub similarity: f32,
    /// Retrievers that found it, in the order they were fused.
    pub retrievers: Vec<&'static str>,
}

impl<K> Candidate<K> {
    /// Found by keywords alone: its similarity is not yet a cosine.
    pub fn keyword_only(&self) -> bool {
        !self.retrievers.contains(&VECTOR)
    }
}

/// What ranking needs to know of a candidate that its hits do not say.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Facts {
    /// Identifies the content: candidates with equal keys collapse to the best one.
    pub content_key: u64,
    /// µs since the epoch, for recency decay.
    pub created_at: Option<i64>,
    /// Cosine to the query vector, for a keyword-only candidate that has a vector:
    /// with a query vector every hit's similarity is then a cosine, so one
    /// threshold means the same for all.
    pub cosine: Option<f32>,
}

/// How [`rank`] orders and cuts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ranking {
    pub limit: usize,
    /// Candidates below this similarity are dropped.
    pub min_similarity: f32,
    /// Halve a candidate's score every this many seconds of age (`None`: no decay).
    pub recency_half_life: Option<f64>,
    /// µs since the epoch.
    pub now: i64,
}

/// Fuse sources into candidates: per retriever, its sources merged by score and
/// cut to the best `depth`, each hit adding `weight / (RRF_K + rank)`. Ties within a
/// retriever share a rank, so they do not decide the fused order. Candidates come
/// out in first-seen order.
pub(super) fn fuse<K: Copy + Eq + Hash>(sources: Vec<Source<K>>, depth: usize) -> Vec<Candidate<K>> {
    // One list per retriever, in the order retrievers first appear.
    let mut retrievers: Vec<Source<K>> = Vec::new();
    for source in sources {
        match retrievers.iter_mut().find(|r| r.retriever == source.retriever) {
            Some(r) => r.hits.extend(source.hits),
            None => retrievers.push(source),
        }
    }
    let mut at: HashMap<K, usize> = HashMap::new();
    let mut out: Vec<Candidate<K>> = Vec::new();
    for Source { retriever, weight, mut hits } in retrievers {
        // Stable: equal scores keep the order the sources gave them.
        hits.sort_by(|a, b| b.1.total_cmp(&a.1));
        hits.truncate(depth);
        let ranks = competition_ranks(hits.iter().map(|h| h.1));
        for ((key, _, similarity), rank) in hits.into_iter().zip(ranks) {
            let i = *at.entry(key).or_insert_with(|| {
                out.push(Candidate { key, score: 0.0, similarity, retrievers: Vec::new() });
                out.len() - 1
            });
            let c = &mut out[i];
            c.score += weight / (RRF_K + rank as f32);
            c.retrievers.push(retriever);
            if retriever == VECTOR {
                c.similarity = similarity;
            }
        }
    }
    out
}

/// Order fused candidates best first and cut to `limit`: keyword-only candidates
/// take their cosine from `facts`, scores decay with age, those below the threshold
/// leave, and candidates with the same content collapse to the best-ranked one.
/// `facts[i]` belongs to `candidates[i]`. Equal scores are ordered by key, highest
/// first, so the order never depends on hashing.
pub(super) fn rank<K: Ord>(candidates: Vec<Candidate<K>>, facts: &[Facts], how: &Ranking) -> Vec<Candidate<K>> {
    debug_assert_eq!(candidates.len(), facts.len());
    let mut ranked: Vec<(Candidate<K>, u64)> = candidates
        .into_iter()
        .zip(facts)
        .map(|(mut c, f)| {
            if let Some(cosine) = f.cosine.filter(|_| c.keyword_only()) {
                c.similarity = cosine;
            }
            if let (Some(half_life), Some(created_at)) = (how.recency_half_life, f.created_at) {
                let age_seconds = ((how.now - created_at).max(0) as f64) / 1e6;
                c.score *= 0.5f64.powf(age_seconds / half_life) as f32;
            }
            (c, f.content_key)
        })
        .filter(|(c, _)| c.similarity >= how.min_similarity)
        .collect();
    ranked.sort_by(|(a, _), (b, _)| b.score.total_cmp(&a.score).then(b.key.cmp(&a.key)));
    let mut seen = HashSet::new();
    ranked.retain(|(_, content)| seen.insert(*content));
    ranked.truncate(how.limit);
    ranked.into_iter().map(|(c, _)| c).collect()
}

/// 1-based ranks of scores sorted best first, equal scores sharing a rank
/// ("1224" ranking).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn source(retriever: &'static str, weight: f32, hits: &[(u32, f32, f32)]) -> Source<u32> {
        Source { retriever, weight, hits: hits.to_vec() }
    }

    fn facts(n: usize) -> Vec<Facts> {
        (0..n).map(|i| Facts { content_key: i as u64, ..Facts::default() }).collect()
    }

    fn order(c: &[Candidate<u32>]) -> Vec<u32> {
        c.iter().map(|c| c.key).collect()
    }

    const ANY: Ranking = Ranking { limit: 100, min_similarity: f32::MIN, recency_half_life: None, now: 0 };

    #[test]
    fn tied_scores_share_a_rank() {
        assert_eq!(competition_ranks([3.0, 2.0, 2.0, 1.0].into_iter()), vec![1, 2, 2, 4]);
        assert_eq!(competition_ranks([5.0, 5.0, 5.0].into_iter()), vec![1, 1, 1]);
        assert_eq!(competition_ranks(std::iter::empty()), Vec::<usize>::new());
    }

    #[test]
    fn a_hit_of_both_retrievers_beats_a_top_hit_of_one() {
        let fused = fuse(
            vec![
                source("text", 0.5, &[(1, 9.0, 1.0), (2, 5.0, 0.5)]),
                source(VECTOR, 0.5, &[(3, 0.9, 0.9), (2, 0.8, 0.8)]),
            ],
            100,
        );
        let n = fused.len();
        let ranked = rank(fused, &facts(n), &ANY);
        assert_eq!(order(&ranked), vec![2, 3, 1]);
        let two = &ranked[0];
        assert_eq!(two.retrievers, vec!["text", VECTOR]);
        assert!((two.score - (0.5 / 62.0 + 0.5 / 62.0)).abs() < 1e-6);
        // The vector retriever's cosine replaces the text retriever's coverage.
        assert_eq!(two.similarity, 0.8);
    }

    #[test]
    fn sources_of_one_retriever_merge_by_score_before_ranking() {
        // The cold scan's hit scores between the index's two: it ranks second.
        let fused = fuse(
            vec![source("text", 1.0, &[(1, 9.0, 1.0), (2, 3.0, 1.0)]), source("text", 1.0, &[(7, 5.0, 1.0)])],
            100,
        );
        let n = fused.len();
        let ranked = rank(fused, &facts(n), &ANY);
        assert_eq!(order(&ranked), vec![1, 7, 2]);
        assert!((ranked[1].score - 1.0 / 62.0).abs() < 1e-6);
        assert_eq!(ranked[1].retrievers, vec!["text"], "one retriever, however many sources");
    }

    #[test]
    fn depth_cuts_each_retriever_after_merging() {
        let fused = fuse(vec![source("text", 1.0, &[(1, 1.0, 1.0)]), source("text", 1.0, &[(2, 2.0, 1.0)])], 1);
        assert_eq!(order(&fused), vec![2]);
    }

    #[test]
    fn ties_are_broken_by_key_not_by_input_order() {
        let a = fuse(vec![source("text", 1.0, &[(4, 1.0, 1.0), (9, 1.0, 1.0)])], 100);
        let b = fuse(vec![source("text", 1.0, &[(9, 1.0, 1.0), (4, 1.0, 1.0)])], 100);
        assert_eq!(order(&rank(a, &facts(2), &ANY)), vec![9, 4]);
        assert_eq!(order(&rank(b, &facts(2), &ANY)), vec![9, 4]);
    }

    #[test]
    fn keyword_only_hits_take_their_cosine_and_the_threshold_applies_to_it() {
        let fused = fuse(vec![source("text", 1.0, &[(1, 9.0, 1.0), (2, 5.0, 1.0)])], 100);
        let facts = vec![
            Facts { content_key: 1, cosine: Some(0.2), ..Facts::default() },
            Facts { content_key: 2, cosine: Some(0.7), ..Facts::default() },
        ];
        let ranked = rank(fused, &facts, &Ranking { min_similarity: 0.5, ..ANY });
        assert_eq!(order(&ranked), vec![2]);
        assert_eq!(ranked[0].similarity, 0.7);
    }

    #[test]
    fn a_vector_hits_cosine_is_not_replaced() {
        let fused = fuse(vec![source(VECTOR, 1.0, &[(1, 0.9, 0.9)])], 100);
        let facts = vec![Facts { cosine: Some(0.1), ..Facts::default() }];
        assert_eq!(rank(fused, &facts, &ANY)[0].similarity, 0.9);
    }

    #[test]
    fn recency_decay_can_reorder() {
        let day = 86_400_000_000i64;
        let fused = fuse(vec![source("text", 1.0, &[(1, 9.0, 1.0), (2, 5.0, 1.0)])], 100);
        let facts = vec![
            Facts { content_key: 1, created_at: Some(0), ..Facts::default() },
            Facts { content_key: 2, created_at: Some(10 * day), ..Facts::default() },
        ];
        let how = Ranking { recency_half_life: Some(86_400.0), now: 10 * day, ..ANY };
        let ranked = rank(fused, &facts, &how);
        assert_eq!(order(&ranked), vec![2, 1]);
        assert!((ranked[0].score - 1.0 / 62.0).abs() < 1e-6, "a memory made now keeps its score");
        assert!((ranked[1].score - (1.0 / 61.0) / 1024.0).abs() < 1e-7, "ten half-lives: 1/1024");
    }

    #[test]
    fn equal_content_collapses_to_the_best_and_limit_cuts_after() {
        let fused = fuse(vec![source("text", 1.0, &[(1, 9.0, 1.0), (2, 8.0, 1.0), (3, 7.0, 1.0)])], 100);
        let facts = vec![
            Facts { content_key: 5, ..Facts::default() },
            Facts { content_key: 5, ..Facts::default() },
            Facts { content_key: 6, ..Facts::default() },
        ];
        assert_eq!(order(&rank(fused.clone(), &facts, &ANY)), vec![1, 3]);
        assert_eq!(order(&rank(fused, &facts, &Ranking { limit: 1, ..ANY })), vec![1]);
    }
}
