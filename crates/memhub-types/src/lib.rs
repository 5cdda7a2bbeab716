//! Shared types for memhub: the memory data model, the schema registry of memory
//! kinds, and the one catalogue of user-facing errors.
//!
//! Every other memhub crate speaks in these types. Nothing here knows about HTTP,
//! MCP or storage; the transports map [`Error`] to their wire formats once.

pub mod access;
pub mod change;
pub mod embed;
pub mod error;
pub mod memory;
pub mod retention;
pub mod schema;
pub mod time;

pub use access::{Access, Scope, Selection};
pub use change::{Change, ChangeFilter, ChangeOp, ChangePage, RenderedChange};
pub use embed::{EmbedError, Embedder};
pub use error::{Error, ErrorCode, Result};
pub use memory::{
    BatchItemError, Entity, IngestionMethod, Memory, MemoryFilter, MemoryPatch, NewEntity, NewMemory, NewRelation,
    Relation, SearchHit, SearchRequest, SearchResponse, StoreOutcome, Stored, Tier, DEFAULT_SYSTEM_ID, DEFAULT_TENANT,
};
pub use retention::RetentionPolicy;
pub use schema::{KindSchema, SchemaRegistry};
