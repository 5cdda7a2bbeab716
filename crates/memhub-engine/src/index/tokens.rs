//! Text analysis shared by indexing and querying: one tokenizer, so a query term
//! and an indexed term always agree.

use std::collections::HashSet;

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

/// A content term is common when it is in more than this share of the memories...
const COMMON_SHARE: f64 = 0.05;
/// ...and in at least this many: below it, postings are short enough to score whole.
pub const COMMON_MIN_DOCS: u64 = 50_000;

/// Treat very frequent content terms like stop words (as Lucene's CommonTermsQuery
/// does): when the query also has a rarer content term, a common one only adds to
/// the score of memories that match a rarer one. Its postings cover much of the
/// corpus, and a union with them scores most memories to find the few that matter
/// (~20 ms at 1M memories for three such terms). Returns whether every content term
/// is common (and there are several): the search should then ask for memories that
/// hold all of them, and fall back to any of them when too few do.
pub fn mark_common_terms(terms: &mut [(String, bool)], doc_freq: &dyn Fn(&str) -> u64, docs: u64) -> bool {
    if docs < COMMON_MIN_DOCS {
        return false; // no term can be common: skip the term lookups
    }
    let common: Vec<bool> = terms
        .iter()
        .map(|(t, content)| {
            *content && {
                let df = doc_freq(t);
                df >= COMMON_MIN_DOCS && df as f64 > COMMON_SHARE * docs as f64
            }
        })
        .collect();
    let content = terms.iter().filter(|t| t.1).count();
    let common_count = common.iter().filter(|c| **c).count();
    if common_count < content {
        for (term, common) in terms.iter_mut().zip(common) {
            term.1 &= !common;
        }
        false
    } else {
        content > 1
    }
}

/// L2-normalise; `None` for a zero or non-finite vector.
pub fn normalized(v: &[f32]) -> Option<Box<[f32]>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm.is_finite() && norm > 0.0 {
        return Some(v.iter().map(|x| x / norm).collect());
    }
    // The squares overflowed (components near f32::MAX) or underflowed (tiny ones):
    // the norm in f64 still tells a real direction from the zero vector.
    let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    (norm.is_finite() && norm > 0.0).then(|| v.iter().map(|&x| (f64::from(x) / norm) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_at_the_ends_of_f32_normalise() {
        let mut big = vec![0.0f32; 4];
        big[0] = -f32::MAX;
        assert_eq!(normalized(&big).as_deref(), Some(&[-1.0, 0.0, 0.0, 0.0][..]));
        let tiny = [1e-30f32, 0.0, 1e-30, 0.0];
        let n = normalized(&tiny).unwrap();
        assert!((n[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6, "{n:?}");
        assert_eq!(normalized(&[0.0; 4]), None);
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
    fn stop_words_are_kept_but_are_not_content_terms() {
        let content = |q: &str| query_terms(q).into_iter().filter(|t| t.1).map(|t| t.0).collect::<Vec<_>>();
        assert_eq!(content("Is the cat on a mat?"), vec!["cat", "mat"]);
        assert_eq!(query_terms("Is the cat on a mat?").len(), 6, "stop words stay in the query");
        assert_eq!(
            content("to be or not to be"),
            vec!["to", "be", "or", "not"],
            "all-stop-word queries keep every term"
        );
    }

    #[test]
    fn common_terms_count_only_beside_rarer_ones() {
        let docs = 1_000_000;
        // "alpha" and "beta" are in 60% of the memories, "gamma" in 0.1%, "delta" in
        // 6% (but in 0.6% of a corpus ten times larger).
        let df = |t: &str| match t {
            "alpha" | "beta" => 600_000,
            "gamma" => 1_000,
            "delta" => 60_000,
            _ => 0,
        };
        let marked = |q: &str, docs: u64| {
            let mut terms = query_terms(q);
            let all = mark_common_terms(&mut terms, &df, docs);
            (terms.into_iter().filter(|t| t.1).map(|t| t.0).collect::<Vec<_>>(), all)
        };
        assert_eq!(marked("alpha gamma beta", docs), (vec!["gamma".to_string()], false));
        assert_eq!(marked("the alpha beta", docs), (vec!["alpha".to_string(), "beta".to_string()], true));
        assert_eq!(marked("alpha", docs), (vec!["alpha".to_string()], false), "one common term is searched alone");
        assert_eq!(marked("alpha delta", docs), (vec!["alpha".to_string(), "delta".to_string()], true));
        assert_eq!(
            marked("alpha delta", 10 * docs),
            (vec!["delta".to_string()], false),
            "delta is in under 5% of 10M memories: a rarer term"
        );
        let small = |_: &str| COMMON_MIN_DOCS - 1;
        let mut terms = query_terms("alpha beta gamma");
        assert!(!mark_common_terms(&mut terms, &small, COMMON_MIN_DOCS));
        assert!(terms.iter().all(|t| t.1), "short postings are never common, whatever their share");
    }
}
