//! The local encoder against golden vectors from an independent implementation,
//! and the OpenAI-compatible client against a stub server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;

use memhub_embed::{test_model_dir, Embedder, MiniLmEncoder, OpenAiEmbedder};
use serde_json::{json, Value};

/// The golden vectors, kept in the repository (`tests/data/README.md` says where
/// they come from). Read at run time: the target dir is shared between checkouts,
/// so a compile-time path could name a checkout that is gone.
fn reference() -> Value {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let path = crate_dir.unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()).join("tests/data/minilm_reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_matches_the_golden_vectors() {
    let encoder = MiniLmEncoder::load(&test_model_dir()).unwrap();
    assert_eq!((encoder.dim(), encoder.model_name()), (384, "all-MiniLM-L6-v2"));
    let reference = reference();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    // All at once: dynamic padding must not change any vector.
    let batch = encoder.embed(&texts).unwrap();
    for (case, got) in cases.iter().zip(&batch) {
        let text = case["text"].as_str().unwrap();
        let want: Vec<f32> = case["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(
            encoder.token_count(text).unwrap() as u64,
            case["tokens"].as_u64().unwrap(),
            "token count of {text:?}"
        );
        let cos = cosine(got, &want);
        assert!(cos >= 0.9999, "cosine {cos} for {:?}", &text[..text.len().min(60)]);
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        let single = encoder.embed(&[text]).unwrap().pop().unwrap();
        assert!(cosine(&single, got) > 0.99999, "batching changed the vector of {text:?}");
    }
    // More texts than one batch per worker: batches are dealt to the workers in turn
    // and every vector still comes back in its caller's place.
    let many: Vec<&str> = texts.iter().cycle().take(texts.len() * 7).copied().collect();
    assert!(many.len() > 64);
    for (i, got) in encoder.embed(&many).unwrap().iter().enumerate() {
        assert!(cosine(got, &batch[i % texts.len()]) > 0.99999, "text {i} of {} came back out of place", many.len());
    }
    let long = cases.iter().find(|c| c["tokens"] == 256).expect("a case longer than 256 tokens");
    assert!(long["text"].as_str().unwrap().len() > 1000, "the truncation case is really long");
}

/// Answer `n` HTTP requests with `reply(request_json, authorization)`.
fn stub_server(n: usize, reply: fn(&Value, Option<&str>) -> (u16, Value)) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(n) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut len, mut auth) = (0usize, None);
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if lower.starts_with("authorization:") {
                    auth = Some(line["authorization:".len()..].trim().to_string());
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let request: Value = serde_json::from_slice(&body).unwrap();
            let (status, answer) = reply(&request, auth.as_deref());
            let answer = answer.to_string();
            write!(stream, "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}", answer.len()).unwrap();
        }
    });
    format!("http://{addr}")
}

#[test]
fn openai_compatible_client_orders_normalises_and_authenticates() {
    let url = stub_server(1, |req, auth| {
        assert_eq!(req["model"], "nomic-embed-text");
        assert_eq!(req["input"], json!(["first", "second"]));
        assert_eq!(auth, Some("Bearer sk-test"));
        // Out of order, not normalised: the client must fix both.
        (200, json!({"data": [{"index": 1, "embedding": [0.0, 2.0, 0.0]}, {"index": 0, "embedding": [3.0, 0.0, 4.0]}]}))
    });
    let e = OpenAiEmbedder::new(&format!("{url}/v1/"), "nomic-embed-text", Some("sk-test".into()), 3).unwrap();
    let v = e.embed(&["first", "second"]).unwrap();
    assert_eq!(v, vec![vec![0.6, 0.0, 0.8], vec![0.0, 1.0, 0.0]]);
}

#[test]
fn openai_compatible_client_reports_failures_without_the_key() {
    let url = stub_server(2, |req, _| {
        if req["input"][0] == "boom" {
            (500, json!({"error": "model not loaded"}))
        } else {
            (200, json!({"data": [{"index": 0, "embedding": [1.0, 0.0]}]}))
        }
    });
    let e = OpenAiEmbedder::new(&url, "m", Some("sk-secret".into()), 3).unwrap();
    let err = e.embed(&["boom"]).unwrap_err().to_string();
    assert!(err.contains("500") && err.contains("model not loaded"), "{err}");
    assert!(!err.contains("sk-secret"));
    let err = e.embed(&["ok"]).unwrap_err().to_string();
    assert!(err.contains("2 dimensions"), "{err}");
}
