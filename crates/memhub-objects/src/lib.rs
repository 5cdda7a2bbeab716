//! Object storage for memhub: one [`Bucket`] type over the `object_store` crate
//! (S3 and S3-compatible endpoints such as R2 and MinIO, GCS, Azure, the local
//! filesystem), and the Parquet format of the cold tier ([`parquet`]).
//!
//! A bucket is named by a URL (`s3://bucket/prefix`, `gs://…`, `az://…`,
//! `file:///path`) plus options: the usual `AWS_*` / `GOOGLE_*` / `AZURE_*`
//! environment variables and config keys such as `aws_endpoint` or `region`.
//! Credentials live only inside the store client: [`Bucket::url`] and every error
//! name the bucket without them.

pub mod parquet;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload, RetryConfig};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use url::Url;

/// An object storage error, with the bucket named but never its credentials.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("invalid object storage URL {url:?}: {detail}")]
    InvalidUrl { url: String, detail: String },
    #[error("object {key:?} not found in {bucket}")]
    NotFound { bucket: String, key: String },
    #[error("object storage {bucket}: {detail}")]
    Store { bucket: String, detail: String },
    #[error("{0}")]
    Format(String),
}

pub type Result<T, E = ObjectError> = std::result::Result<T, E>;

/// Where a bucket is and how to reach it (a config section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BucketConfig {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`, `file:///path`.
    pub url: String,
    /// Store options (`aws_endpoint`, `aws_region`, `aws_access_key_id`, ...); they
    /// override the environment. Values are never logged.
    #[serde(skip_serializing)]
    pub options: BTreeMap<String, String>,
    /// Retries of a failed request (connection refused, 5xx) before giving up.
    pub max_retries: usize,
    /// Give up retrying a request after this long.
    pub retry_timeout_seconds: u64,
}

impl Default for BucketConfig {
    fn default() -> Self {
        BucketConfig { url: String::new(), options: BTreeMap::new(), max_retries: 5, retry_timeout_seconds: 60 }
    }
}

/// What a listing or a `head` knows about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key relative to the bucket's prefix.
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Last modification, microseconds since the epoch.
    pub modified: i64,
}

/// A bucket (or a prefix in one): every key is relative to the prefix.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("url", &self.url).finish()
    }
}

/// The environment variables the store builders understand.
fn env_options() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| ["AWS_", "GOOGLE_", "AZURE_"].iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

impl Bucket {
    /// Open the bucket a config names (the environment supplies what it omits).
    pub fn open(config: &BucketConfig) -> Result<Bucket> {
        let invalid = |detail: String| ObjectError::InvalidUrl { url: redact(&config.url), detail };
        let url = Url::parse(&config.url).map_err(|e| invalid(e.to_string()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("put credentials in options or the environment, not in the URL".into()));
        }
        let mut options: BTreeMap<String, String> = env_options().into_iter().collect();
        options.extend(config.options.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())));
        // A plain-HTTP endpoint (MinIO or a test server on loopback) needs explicit consent.
        let endpoint =
            ["aws_endpoint", "aws_endpoint_url", "endpoint", "endpoint_url"].iter().find_map(|k| options.get(*k));
        if endpoint.is_some_and(|e| e.starts_with("http://")) {
            options.entry("aws_allow_http".into()).or_insert_with(|| "true".into());
        }
        let (scheme, prefix) = ObjectStoreScheme::parse(&url).map_err(|e| invalid(e.to_string()))?;
        let retry = RetryConfig {
            max_retries: config.max_retries,
            retry_timeout: Duration::from_secs(config.retry_timeout_seconds),
            ..Default::default()
        };
        macro_rules! cloud {
            ($builder:ty) => {{
                let builder =
                    options.iter().fold(<$builder>::new().with_url(url.as_str()), |b, (k, v)| match k.parse() {
                        Ok(k) => b.with_config(k, v),
                        Err(_) => b,
                    });
                Arc::new(builder.with_retry(retry).build().map_err(|e| invalid(e.to_string()))?) as Arc<dyn ObjectStore>
            }};
        }
        let store = match scheme {
            ObjectStoreScheme::Local => {
                std::fs::create_dir_all(url.path())
                    .map_err(|e| invalid(format!("cannot create the directory: {e}")))?;
                Arc::new(object_store::local::LocalFileSystem::new()) as Arc<dyn ObjectStore>
            }
            ObjectStoreScheme::AmazonS3 => cloud!(object_store::aws::AmazonS3Builder),
            ObjectStoreScheme::GoogleCloudStorage => cloud!(object_store::gcp::GoogleCloudStorageBuilder),
            ObjectStoreScheme::MicrosoftAzure => cloud!(object_store::azure::MicrosoftAzureBuilder),
            other => {
                return Err(invalid(format!("unsupported scheme ({other:?}): use s3://, gs://, az:// or file://")))
            }
        };
        Ok(Bucket { store, prefix, url: redact(&config.url) })
    }

    /// The bucket's URL (no credentials), for logs and errors.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, key: &str) -> Path {
        let mut parts: Vec<String> = self.prefix.parts().map(|p| p.as_ref().to_string()).collect();
        parts.extend(key.split('/').filter(|p| !p.is_empty()).map(String::from));
        Path::from_iter(parts)
    }

    fn relative(&self, path: &Path) -> String {
        let n = self.prefix.parts().count();
        path.parts().skip(n).map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/")
    }

    fn error(&self, key: &str, e: object_store::Error) -> ObjectError {
        match e {
            object_store::Error::NotFound { .. } => ObjectError::NotFound { bucket: self.url.clone(), key: key.into() },
            e => ObjectError::Store { bucket: self.url.clone(), detail: e.to_string() },
        }
    }

    /// Write an object whole (atomic: readers see the old object or the new one).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.store.put(&self.path(key), PutPayload::from(bytes)).await.map_err(|e| self.error(key, e))?;
        Ok(())
    }

    /// Upload a local file in `part_size` parts (multipart upload on cloud stores),
    /// reading it in parts so memory stays bounded; `progress` gets bytes sent.
    pub async fn put_file(
        &self,
        key: &str,
        file: &std::path::Path,
        part_size: usize,
        mut progress: impl FnMut(u64),
    ) -> Result<u64> {
        use tokio::io::AsyncReadExt;
        let io = |e: std::io::Error| ObjectError::Store { bucket: self.url.clone(), detail: e.to_string() };
        let mut f = tokio::fs::File::open(file).await.map_err(io)?;
        let mut upload = self.store.put_multipart(&self.path(key)).await.map_err(|e| self.error(key, e))?;
        let mut sent = 0u64;
        let result: Result<()> = async {
            loop {
                let mut buf = vec![0u8; part_size];
                let mut filled = 0;
                while filled < part_size {
                    let n = f.read(&mut buf[filled..]).await.map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    break;
                }
                buf.truncate(filled);
                upload.put_part(PutPayload::from(buf)).await.map_err(|e| self.error(key, e))?;
                sent += filled as u64;
                progress(filled as u64);
                if filled < part_size {
                    break;
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                upload.complete().await.map_err(|e| self.error(key, e))?;
                Ok(sent)
            }
            Err(e) => {
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    /// Read an object whole.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let got = self.store.get(&self.path(key)).await.map_err(|e| self.error(key, e))?;
        got.bytes().await.map_err(|e| self.error(key, e))
    }

    /// Stream an object into a local file (never whole in memory); returns its size.
    pub async fn get_to_file(&self, key: &str, file: &std::path::Path) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let io = |e: std::io::Error| ObjectError::Store { bucket: self.url.clone(), detail: e.to_string() };
        let got = self.store.get(&self.path(key)).await.map_err(|e| self.error(key, e))?;
        let mut out = tokio::fs::File::create(file).await.map_err(io)?;
        let mut stream = got.into_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.error(key, e))?;
            size += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        Ok(size)
    }

    /// What the store knows of an object; `None` if it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        match self.store.head(&self.path(key)).await {
            Ok(m) => Ok(Some(self.info(m))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(key, e)),
        }
    }

    fn info(&self, m: object_store::ObjectMeta) -> ObjectInfo {
        ObjectInfo {
            key: self.relative(&m.location),
            size: m.size,
            etag: m.e_tag,
            modified: m.last_modified.timestamp_micros(),
        }
    }

    /// Delete an object; deleting a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// Every object under `prefix` (relative to the bucket's), recursively.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = self.path(prefix);
        let found: Vec<object_store::ObjectMeta> =
            self.store.list(Some(&root)).try_collect().await.map_err(|e| self.error(prefix, e))?;
        Ok(found.into_iter().map(|m| self.info(m)).collect())
    }
}

/// A URL for logs: no user, password or query string.
fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "<unparsable URL>".into(),
    }
}

/// A [`Bucket`] for synchronous callers (the engine): each call runs on the
/// bucket's own small runtime. Call it from a plain or `spawn_blocking` thread,
/// never from inside an async task.
pub struct BlockingBucket {
    bucket: Bucket,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for BlockingBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.bucket.fmt(f)
    }
}

impl BlockingBucket {
    pub fn open(config: &BucketConfig) -> Result<BlockingBucket> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("memhub-objects")
            .enable_all()
            .build()
            .map_err(|e| ObjectError::Store { bucket: redact(&config.url), detail: e.to_string() })?;
        // Building some clients needs a runtime context.
        let bucket = {
            let _enter = runtime.enter();
            Bucket::open(config)?
        };
        Ok(BlockingBucket { bucket, runtime })
    }

    pub fn url(&self) -> &str {
        self.bucket.url()
    }

    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    pub fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.runtime.block_on(self.bucket.put(key, bytes))
    }

    pub fn get(&self, key: &str) -> Result<Bytes> {
        self.runtime.block_on(self.bucket.get(key))
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.runtime.block_on(self.bucket.delete(key))
    }

    pub fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.runtime.block_on(self.bucket.list(prefix))
    }

    /// Read several objects at once (up to 8 in flight).
    pub fn get_many(&self, keys: &[String]) -> Vec<Result<Bytes>> {
        self.runtime
            .block_on(futures::stream::iter(keys.iter().map(|k| self.bucket.get(k))).buffered(8).collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_bucket_puts_lists_gets_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let config = BucketConfig { url: format!("file://{}/archive", dir.path().display()), ..Default::default() };
        let b = BlockingBucket::open(&config).unwrap();
        b.put("tenant=a/x.bin", Bytes::from_static(b"hello")).unwrap();
        b.put("tenant=b/y.bin", Bytes::from_static(b"world!")).unwrap();
        assert_eq!(b.get("tenant=a/x.bin").unwrap(), Bytes::from_static(b"hello"));
        let mut listed: Vec<(String, u64)> = b.list("").unwrap().into_iter().map(|o| (o.key, o.size)).collect();
        listed.sort();
        assert_eq!(listed, vec![("tenant=a/x.bin".to_string(), 5), ("tenant=b/y.bin".to_string(), 6)]);
        assert_eq!(b.list("tenant=b").unwrap().len(), 1);
        assert!(dir.path().join("archive/tenant=a/x.bin").exists(), "keys live under the URL's path");
        b.delete("tenant=a/x.bin").unwrap();
        b.delete("tenant=a/x.bin").unwrap();
        assert!(matches!(b.get("tenant=a/x.bin"), Err(ObjectError::NotFound { .. })));
    }

    #[test]
    fn a_file_uploads_in_parts_and_streams_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = BucketConfig { url: format!("file://{}/b", dir.path().display()), ..Default::default() };
        let b = BlockingBucket::open(&config).unwrap();
        let src = dir.path().join("big.bin");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let mut progress = Vec::new();
        let sent =
            b.runtime.block_on(b.bucket().put_file("up/big.bin", &src, 32 * 1024, |n| progress.push(n))).unwrap();
        assert_eq!(sent, data.len() as u64);
        assert_eq!(progress, vec![32768, 32768, 32768, 1696], "four parts, the last one short");
        let back = dir.path().join("back.bin");
        assert_eq!(b.runtime.block_on(b.bucket().get_to_file("up/big.bin", &back)).unwrap(), data.len() as u64);
        assert_eq!(std::fs::read(&back).unwrap(), data);
        let missing = b.runtime.block_on(b.bucket().put_file("x", &dir.path().join("nope"), 1024, |_| {}));
        assert!(missing.is_err(), "a missing source file is an error, not an empty object");
    }

    #[test]
    fn credentials_never_appear_in_names_or_errors() {
        let config = BucketConfig {
            url: "s3://user:hunter2@bucket/p".into(),
            options: [("aws_secret_access_key".to_string(), "hunter2".to_string())].into(),
            ..Default::default()
        };
        let e = Bucket::open(&config).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let config = BucketConfig {
            url: "s3://bucket/p".into(),
            options: [
                ("aws_secret_access_key".to_string(), "hunter2".to_string()),
                ("aws_access_key_id".to_string(), "AKIA".to_string()),
                ("aws_region".to_string(), "auto".to_string()),
                // Nothing listens here: the request fails and its error must not leak the secret.
                ("aws_endpoint".to_string(), "http://127.0.0.1:9".to_string()),
            ]
            .into(),
            max_retries: 0,
            ..Default::default()
        };
        let b = BlockingBucket::open(&config).unwrap();
        assert_eq!(b.url(), "s3://bucket/p");
        let e = b.get("k").unwrap_err().to_string();
        assert!(!e.contains("hunter2") && e.contains("s3://bucket/p"), "{e}");
        assert!(!format!("{b:?}").contains("hunter2"));
    }
}
