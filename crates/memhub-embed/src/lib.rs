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

/// Why embedding failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model files are missing or unreadable.
    #[error("cannot load the model from {path}: {reason}")]
    Load { path: String, reason: String },
    /// The model ran and failed.
    #[error("the encoder failed: {0}")]
    Inference(String),
    /// The remote embedding service failed or answered something unexpected.
    #[error("the embedding service failed: {0}")]
    Remote(String),
}

/// Something that turns texts into vectors of one model.
pub trait Embedder: Send + Sync {
    /// The model's name, recorded next to every vector it makes.
    fn model_name(&self) -> &str;
    /// The vectors' dimension.
    fn dim(&self) -> usize;
    /// One L2-normalised vector per text, in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Scale to unit length (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
