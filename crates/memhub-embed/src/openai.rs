//! An OpenAI-compatible `/v1/embeddings` client (OpenAI, Ollama, llama.cpp server).

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::{l2_normalize, EmbedError, Embedder};

/// Calls `POST {base_url}/v1/embeddings` with `{"model", "input": [...]}`.
pub struct OpenAiEmbedder {
    client: reqwest::blocking::Client,
    url: String,
    model: String,
    api_key: Option<String>,
    dim: usize,
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    index: usize,
    embedding: Vec<f32>,
}

impl OpenAiEmbedder {
    /// `base_url` like `http://localhost:11434` (Ollama) or `https://api.openai.com`.
    /// Plain `http` is built in; `https` needs memhub built with TLS (the `tls` feature).
    pub fn new(base_url: &str, model: &str, api_key: Option<String>, dim: usize) -> Result<Self, EmbedError> {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| EmbedError::Remote(e.to_string()))?;
        let url = format!("{}/v1/embeddings", base_url.trim_end_matches('/').trim_end_matches("/v1"));
        Ok(OpenAiEmbedder { client, url, model: model.into(), api_key, dim })
    }
}

impl Embedder for OpenAiEmbedder {
    fn model_name(&self) -> &str {
        &self.model
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut req = self.client.post(&self.url).json(&json!({"model": self.model, "input": texts}));
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        // The error text names the URL, never the key.
        let resp = req.send().map_err(|e| EmbedError::Remote(format!("{}: {}", self.url, e.without_url())))?;
        let status = resp.status();
        if !status.is_success() {
            let body: String = resp.text().unwrap_or_default().chars().take(300).collect();
            return Err(EmbedError::Remote(format!("{} answered {status}: {body}", self.url)));
        }
        let mut data = resp
            .json::<Response>()
            .map_err(|e| EmbedError::Remote(format!("{}: unexpected answer: {e}", self.url)))?
            .data;
        if data.len() != texts.len() {
            return Err(EmbedError::Remote(format!(
                "{} returned {} vectors for {} texts",
                self.url,
                data.len(),
                texts.len()
            )));
        }
        data.sort_by_key(|d| d.index);
        data.into_iter()
            .map(|d| {
                if d.embedding.len() != self.dim {
                    return Err(EmbedError::Remote(format!(
                        "model {} returned {} dimensions; {} are configured",
                        self.model,
                        d.embedding.len(),
                        self.dim
                    )));
                }
                let mut v = d.embedding;
                l2_normalize(&mut v);
                Ok(v)
            })
            .collect()
    }
}
