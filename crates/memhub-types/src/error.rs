//! The error catalogue: every user-facing failure has a stable code, an HTTP status
//! and a message that names the offending field. Transports map [`Error`] once
//! (REST in `memhub-server::rest::error`, MCP in `memhub-server::mcp`).

use serde::Serialize;

/// Result alias used across memhub.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Stable machine-readable error codes. The string form (`as_str`) is part of the
/// public API: clients match on it, so never rename a variant's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body is not valid JSON.
    InvalidJson,
    /// A field has the wrong type, is missing, or has a value out of range.
    InvalidField,
    /// An embedding's length is not the configured dimension.
    InvalidEmbeddingDimension,
    /// `attributes` do not satisfy the kind's JSON Schema.
    SchemaValidationFailed,
    /// The kind (or kind version) is not registered.
    UnknownKind,
    /// A schema being registered is not a valid JSON Schema, or the version exists.
    InvalidSchema,
    /// A schema version that already exists was registered again with other content.
    SchemaVersionExists,
    /// No memory with that id (or key) is visible to the caller.
    MemoryNotFound,
    /// `memory_id` matches memories in several systems; the caller must name one.
    AmbiguousMemoryId,
    /// The request body exceeds the configured size limit.
    PayloadTooLarge,
    /// A memory's content exceeds the configured length limit.
    ContentTooLong,
    /// A batch holds more memories than allowed.
    BatchTooLarge,
    /// A pagination cursor could not be decoded.
    InvalidCursor,
    /// The MCP tool or route does not exist.
    NotFound,
    /// The route exists but not with this HTTP method (the `Allow` header lists those it has).
    MethodNotAllowed,
    /// The data directory is locked by another process.
    DataDirLocked,
    /// The store failed (disk full, I/O error, corruption).
    StorageError,
    /// A bug: something that should not happen did.
    InternalError,
    /// No credentials: no `Authorization: Bearer ...` header.
    MissingCredentials,
    /// The API key or token is unknown, malformed or has a bad signature.
    InvalidCredentials,
    /// The API key or token has expired (or is not valid yet).
    CredentialsExpired,
    /// The API key was revoked.
    CredentialsRevoked,
    /// The token is signed with an algorithm that is not accepted (e.g. `none`).
    TokenAlgorithmRejected,
    /// A required claim is missing or wrong (`exp`, `sub`, `tenant`, `role`, `iss`, `aud`).
    TokenClaimsInvalid,
    /// Authenticated, but the role or scope does not allow this.
    Forbidden,
    /// Too many requests from this caller; retry after the `Retry-After` seconds.
    RateLimited,
    /// The cold tier's object storage failed or cannot be reached.
    ObjectStoreUnavailable,
    /// The database (a PostgreSQL backend) cannot be reached, or no connection came
    /// free within the pool timeout; retry once it is back.
    StorageUnavailable,
    /// This replica has not yet applied the change the request asked to see
    /// (`X-Memhub-Seq` / `min_seq`) within the wait bound; retry, here or elsewhere.
    ReplicaBehind,
}

impl ErrorCode {
    /// The stable code string, e.g. `invalid_embedding_dimension`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidEmbeddingDimension => "invalid_embedding_dimension",
            ErrorCode::SchemaValidationFailed => "schema_validation_failed",
            ErrorCode::UnknownKind => "unknown_kind",
            ErrorCode::InvalidSchema => "invalid_schema",
            ErrorCode::SchemaVersionExists => "schema_version_exists",
            ErrorCode::MemoryNotFound => "memory_not_found",
            ErrorCode::AmbiguousMemoryId => "ambiguous_memory_id",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ContentTooLong => "content_too_long",
            ErrorCode::BatchTooLarge => "batch_too_large",
            ErrorCode::InvalidCursor => "invalid_cursor",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::DataDirLocked => "data_dir_locked",
            ErrorCode::StorageError => "storage_error",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::MissingCredentials => "missing_credentials",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::CredentialsExpired => "credentials_expired",
            ErrorCode::CredentialsRevoked => "credentials_revoked",
            ErrorCode::TokenAlgorithmRejected => "token_algorithm_rejected",
            ErrorCode::TokenClaimsInvalid => "token_claims_invalid",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ObjectStoreUnavailable => "object_store_unavailable",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::ReplicaBehind => "replica_behind",
        }
    }

    /// The HTTP status this code maps to.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson
            | ErrorCode::InvalidField
            | ErrorCode::InvalidEmbeddingDimension
            | ErrorCode::UnknownKind
            | ErrorCode::InvalidSchema
            | ErrorCode::InvalidCursor => 400,
            ErrorCode::SchemaValidationFailed => 422,
            ErrorCode::MemoryNotFound | ErrorCode::NotFound => 404,
            ErrorCode::AmbiguousMemoryId | ErrorCode::SchemaVersionExists => 409,
            ErrorCode::PayloadTooLarge | ErrorCode::ContentTooLong | ErrorCode::BatchTooLarge => 413,
            ErrorCode::DataDirLocked
            | ErrorCode::ObjectStoreUnavailable
            | ErrorCode::StorageUnavailable
            | ErrorCode::ReplicaBehind => 503,
            ErrorCode::MissingCredentials
            | ErrorCode::InvalidCredentials
            | ErrorCode::CredentialsExpired
            | ErrorCode::CredentialsRevoked
            | ErrorCode::TokenAlgorithmRejected
            | ErrorCode::TokenClaimsInvalid => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RateLimited => 429,
            ErrorCode::StorageError | ErrorCode::InternalError => 500,
        }
    }

    /// The coarse error type, for grouping in clients and dashboards.
    pub fn error_type(self) -> &'static str {
        match self.http_status() {
            500..=599 => "internal",
            404 => "not_found",
            401 => "authentication",
            403 => "permission",
            429 => "rate_limit",
            409 => "conflict",
            _ => "invalid_request",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user-facing error: a code from the catalogue, a detail message, and (when one
/// field is to blame) the path of that field, e.g. `attributes.confidence` or
/// `memories[3].embedding`. The full message is `"{field}: {detail}"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub code: ErrorCode,
    pub field: Option<String>,
    pub detail: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.detail),
            None => f.write_str(&self.detail),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Error { code, field: None, detail: detail.into() }
    }

    /// An error blamed on one field.
    pub fn field(code: ErrorCode, field: impl Into<String>, detail: impl Into<String>) -> Self {
        Error { code, field: Some(field.into()), detail: detail.into() }
    }

    /// Prefix the field path: `embedding` within `memories[3]` is `memories[3].embedding`.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = Some(match self.field.take() {
            Some(f) if !f.is_empty() => format!("{prefix}.{f}"),
            _ => prefix.to_string(),
        });
        self
    }

    /// The full message, with the field path in front when there is one.
    pub fn message(&self) -> String {
        self.to_string()
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Error::new(ErrorCode::MemoryNotFound, detail)
    }

    pub fn storage(e: impl std::fmt::Display) -> Self {
        Error::new(ErrorCode::StorageError, format!("storage error: {e}"))
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Error::new(ErrorCode::Forbidden, detail)
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::new(ErrorCode::InternalError, format!("internal error: {e}"))
    }

    /// The JSON body used by every transport: `{"error":{"code","type","message","field"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "code": self.code.as_str(),
            "type": self.code.error_type(),
            "message": self.message(),
        });
        if let Some(field) = &self.field {
            body["field"] = serde_json::Value::String(field.clone());
        }
        serde_json::json!({ "error": body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_errors_name_the_field_and_nest() {
        let e = Error::field(ErrorCode::InvalidEmbeddingDimension, "embedding", "expected 384 floats, got 3");
        assert_eq!(e.message(), "embedding: expected 384 floats, got 3");
        let e = e.within("memories[2]");
        assert_eq!(e.field.as_deref(), Some("memories[2].embedding"));
        assert_eq!(e.message(), "memories[2].embedding: expected 384 floats, got 3");
        let json = e.to_json();
        assert_eq!(json["error"]["code"], "invalid_embedding_dimension");
        assert_eq!(json["error"]["field"], "memories[2].embedding");
    }

    #[test]
    fn every_code_has_a_client_or_server_status() {
        for code in
            [ErrorCode::InvalidJson, ErrorCode::MemoryNotFound, ErrorCode::PayloadTooLarge, ErrorCode::StorageError]
        {
            assert!((400..600).contains(&code.http_status()), "{code}");
        }
        assert_eq!(ErrorCode::PayloadTooLarge.http_status(), 413);
        assert_eq!(ErrorCode::SchemaValidationFailed.http_status(), 422);
    }
}
