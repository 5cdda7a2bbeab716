//! The embedder seam: the engine asks an [`Embedder`] for vectors; `memhub-embed`
//! provides the implementations (local MiniLM, OpenAI-compatible HTTP).

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
