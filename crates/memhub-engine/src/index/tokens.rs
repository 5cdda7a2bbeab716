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

/// L2-normalise; `None` for a zero or non-finite vector.
pub fn normalized(v: &[f32]) -> Option<Box<[f32]>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm.is_finite() && norm > 0.0).then(|| v.iter().map(|x| x / norm).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
