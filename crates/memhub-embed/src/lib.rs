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

/// Scale to unit length (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
