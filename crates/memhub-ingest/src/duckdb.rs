//! Session-Buddy's DuckDB databases, opened read-only.
//!
//! `reflection.duckdb` holds `conversations_v2` and `reflections_v2` (or, in older
//! files, `conversations` and `reflections`); every row becomes a memory of kind
//! `conversation` / `reflection`. `knowledge_graph.duckdb` holds `kg_entities` and
//! `kg_relationships`, which become the hub's entities and relations.
//!
//! Columns are found by name, not position, so files from older or newer
//! Session-Buddy versions read as long as `id` and `content` exist: the columns
//! memhub has fields for fill them, the kind's typed columns become attributes,
//! the `metadata` JSON stays metadata, and any column memhub does not know is kept
//! in the attributes too. Rows are read a page at a time (by `rowid`), so memory
//! stays bounded whatever the size of the file. A persisted `vss` HNSW index does
//! not need the extension: read-only scans never touch it. Files are untrusted:
//! only base tables are read (never views), with external access and extensions off.

use std::path::Path;

use duckdb::types::{TimeUnit, Value as Duck};
use duckdb::{AccessMode, Config, Connection};
use memhub_types::memory::{NewEntity, NewRelation};
use memhub_types::time::{format_micros, parse_timestamp};
use memhub_types::NewMemory;
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use crate::{Row, Source};

/// Rows fetched per query.
const PAGE: i64 = 2048;

/// A table's columns: (name, DuckDB type).
type Columns = Vec<(String, String)>;

/// A DuckDB file opened read-only.
pub struct Database {
    conn: Connection,
    path: String,
}

impl Database {
    /// Open `path` read-only, without loading or installing any extension (the
    /// hub is offline and must not run code a file asks for).
    pub fn open(path: &Path) -> Result<Database, String> {
        let shown = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        // An upload is untrusted: no extensions, no access to other files (a view
        // calling read_text('/etc/...') fails), bounded memory.
        let config = Config::default()
            .access_mode(AccessMode::ReadOnly)
            .and_then(|c| c.enable_autoload_extension(false))
            .and_then(|c| c.enable_external_access(false))
            .and_then(|c| c.max_memory("512MB"))
            .map_err(|e| format!("{shown}: {e}"))?;
        let conn = Connection::open_with_flags(path, config).map_err(|e| explain_open_error(&shown, &e.to_string()))?;
        Ok(Database { conn, path: shown })
    }

    fn err(&self, e: impl std::fmt::Display) -> String {
        format!("{}: {e}", self.path)
    }

    /// The columns of `table` in the main schema, with their DuckDB types; empty
    /// when there is no such table.
    pub fn columns(&self, table: &str) -> Result<Columns, String> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT column_name, data_type FROM duckdb_columns() \
                 WHERE database_name = current_database() AND schema_name = 'main' AND table_name = ? \
                 ORDER BY column_index",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([table], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)));
        rows.and_then(|r| r.collect()).map_err(|e| self.err(e))
    }

    /// The first of `tables` that exists as a base table (never a view: a view is
    /// code the uploader wrote), with its columns.
    fn pick(&self, tables: &[&'static str]) -> Result<Option<(&'static str, Columns)>, String> {
        for t in tables {
            let is_table: bool = self
                .conn
                .query_row(
                    "SELECT count(*) > 0 FROM duckdb_tables() \
                     WHERE database_name = current_database() AND schema_name = 'main' AND table_name = ?",
                    [t],
                    |r| r.get(0),
                )
                .map_err(|e| self.err(e))?;
            if is_table {
                return Ok(Some((t, self.columns(t)?)));
            }
        }
        Ok(None)
    }

    /// Every row of `table` as a JSON object (the `embedding` column, if any, as
    /// floats beside it), `PAGE` rows per query, handed to `f`.
    fn scan(
        &self,
        table: &str,
        columns: &[(String, String)],
        mut f: impl FnMut(Map<String, Value>, Option<Vec<f32>>) -> Result<(), String>,
    ) -> Result<(), String> {
        let select: Vec<String> = columns
            .iter()
            .map(|(name, ty)| if native(ty) { quote(name) } else { format!("CAST({} AS VARCHAR)", quote(name)) })
            .collect();
        let max: Option<i64> = self
            .conn
            .query_row(&format!("SELECT max(rowid) FROM {}", quote(table)), [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let Some(max) = max else { return Ok(()) };
        let sql =
            format!("SELECT {} FROM {} WHERE rowid >= ? AND rowid < ? ORDER BY rowid", select.join(", "), quote(table));
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let mut start = 0i64;
        while start <= max {
            let mut rows = stmt.query([start, start + PAGE]).map_err(|e| self.err(e))?;
            while let Some(row) = rows.next().map_err(|e| self.err(e))? {
                let mut map = Map::new();
                let mut embedding = None;
                for (i, (name, ty)) in columns.iter().enumerate() {
                    let v: Duck = row.get(i).map_err(|e| self.err(format!("{table}.{name}: {e}")))?;
                    if name == "embedding" {
                        embedding = floats(&v);
                    } else if let Some(j) = to_json(v, ty == "JSON" || JSON_TEXT.contains(&name.as_str())) {
                        map.insert(name.clone(), j);
                    }
                }
                f(map, embedding)?;
            }
            start += PAGE;
        }
        Ok(())
    }
}

/// DuckDB's message for a file from a newer DuckDB names storage versions; say
/// what it means for the uploader.
fn explain_open_error(file: &str, e: &str) -> String {
    if e.contains("version number") || e.contains("newer version") {
        format!(
            "{file}: written by a newer DuckDB than this memhub reads (DuckDB 1.5): {e}. \
             Write the file with DuckDB 1.5.x, or sync it over HTTP (`memhub sync --method http` reads it \
             on the uploading machine)"
        )
    } else if e.contains("not a valid DuckDB database") || e.contains("Unable to open") || e.contains("IO Error") {
        format!("{file}: not a readable DuckDB database: {e}")
    } else {
        format!("{file}: {e}")
    }
}

/// Columns holding JSON even when declared as plain text (older files).
const JSON_TEXT: [&str; 2] = ["metadata", "properties"];

/// Whether a column of type `ty` is read as itself; the rest (JSON, UUID,
/// STRUCT, MAP, INTERVAL, ...) are read as their text.
fn native(ty: &str) -> bool {
    const NATIVE: [&str; 17] = [
        "BOOLEAN",
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "FLOAT",
        "DOUBLE",
        "DECIMAL",
        "VARCHAR",
        "TIMESTAMP",
        "DATE",
        "TIMESTAMP_NS",
        "TIMESTAMP_MS",
    ];
    ty.ends_with(']')
        || NATIVE.iter().any(|n| ty == *n || ty.starts_with(&format!("{n}(")) || ty.starts_with(&format!("{n} ")))
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A vector column's floats (FLOAT[n], FLOAT[], DOUBLE[]); `None` for NULL.
fn floats(v: &Duck) -> Option<Vec<f32>> {
    match v {
        Duck::Array(items) | Duck::List(items) => items
            .iter()
            .map(|x| match x {
                Duck::Float(f) => Some(*f),
                Duck::Double(d) => Some(*d as f32),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn micros(unit: TimeUnit, v: i64) -> i64 {
    match unit {
        TimeUnit::Second => v.saturating_mul(1_000_000),
        TimeUnit::Millisecond => v.saturating_mul(1000),
        TimeUnit::Microsecond => v,
        TimeUnit::Nanosecond => v / 1000,
    }
}

/// A DuckDB value as JSON; `None` for NULL and for what has no JSON form.
fn to_json(v: Duck, json_text: bool) -> Option<Value> {
    let number = |f: f64| Number::from_f64(f).map(Value::Number);
    Some(match v {
        Duck::Null => return None,
        Duck::Boolean(b) => Value::Bool(b),
        Duck::TinyInt(i) => i.into(),
        Duck::SmallInt(i) => i.into(),
        Duck::Int(i) => i.into(),
        Duck::BigInt(i) => i.into(),
        Duck::UTinyInt(i) => i.into(),
        Duck::USmallInt(i) => i.into(),
        Duck::UInt(i) => i.into(),
        Duck::UBigInt(i) => i.into(),
        Duck::HugeInt(i) => i64::try_from(i).map_or_else(|_| Value::String(i.to_string()), Value::from),
        Duck::Float(f) => number(f64::from(f))?,
        Duck::Double(f) => number(f)?,
        Duck::Decimal(d) => number(d.to_string().parse().ok()?)?,
        Duck::Timestamp(unit, t) => Value::String(format_micros(micros(unit, t))),
        Duck::Date32(days) => Value::String(format_micros(i64::from(days) * 86_400_000_000)),
        Duck::Text(s) if json_text => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        Duck::Text(s) => Value::String(s),
        Duck::Enum(s) => Value::String(s),
        Duck::List(items) | Duck::Array(items) => {
            Value::Array(items.into_iter().map(|x| to_json(x, false).unwrap_or(Value::Null)).collect())
        }
        _ => return None,
    })
}

/// Read `reflection.duckdb`: conversations then reflections, `batch` rows at a
/// time handed to `f` (its error stops the read). Returns the rows read.
pub fn read_reflection(
    path: &Path,
    system_id: &str,
    dim: usize,
    batch: usize,
    mut f: impl FnMut(Vec<Row>) -> Result<(), String>,
) -> Result<u64, String> {
    let db = Database::open(path)?;
    let mut total = 0u64;
    let sources = [
        (Source::Conversations, ["conversations_v2", "conversations"], "conversation"),
        (Source::Reflections, ["reflections_v2", "reflections"], "reflection"),
    ];
    for (source, tables, kind) in sources {
        let Some((table, columns)) = db.pick(&tables)? else { continue };
        for need in ["id", "content"] {
            if !columns.iter().any(|(c, _)| c == need) {
                return Err(db.err(format!("table {table} has no {need} column")));
            }
        }
        let mut rows = Vec::with_capacity(batch);
        db.scan(table, &columns, |map, embedding| {
            rows.push(to_row(source, table, kind, system_id, dim, map, embedding));
            if rows.len() >= batch {
                total += rows.len() as u64;
                f(std::mem::take(&mut rows))?;
            }
            Ok(())
        })?;
        if !rows.is_empty() {
            total += rows.len() as u64;
            f(rows)?;
        }
    }
    Ok(total)
}

fn to_row(
    source: Source,
    table: &str,
    kind: &str,
    system_id: &str,
    dim: usize,
    mut map: Map<String, Value>,
    embedding: Option<Vec<f32>>,
) -> Row {
    let mut h = Sha256::new();
    h.update(serde_json::to_string(&map).expect("JSON values serialize").as_bytes());
    for x in embedding.iter().flatten() {
        h.update(x.to_le_bytes());
    }
    h.update(crate::MAPPING_VERSION.to_le_bytes());
    let hash = hex::encode(h.finalize());
    let text = |map: &mut Map<String, Value>, k: &str| match map.remove(k) {
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
        None => None,
    };
    let row_id = text(&mut map, "id").unwrap_or_default();
    let content = text(&mut map, "content").unwrap_or_default();
    let times = [text(&mut map, "timestamp"), text(&mut map, "created_at")];
    let created_at = times.iter().flatten().find_map(|t| parse_timestamp(t));
    let mut metadata = match map.remove("metadata") {
        Some(Value::Object(m)) => m,
        Some(other) => Map::from_iter([("metadata".to_string(), other)]),
        None => Map::new(),
    };
    // A column wins; files without one (older tables) keep these in the metadata
    // JSON, where the push path (`store_memory`, `store_reflection`) reads them too.
    let field = |map: &mut Map<String, Value>, k: &str| text(map, k).or_else(|| crate::meta_text(&metadata, k));
    let user_id = field(&mut map, "user_id");
    let agent_id = field(&mut map, "agent_id");
    let session_id = field(&mut map, "session_id");
    let project = field(&mut map, "project");
    let tags = match map.remove("tags") {
        Some(column) => crate::strings(&column),
        None => metadata.get("tags").map(crate::strings).unwrap_or_default(),
    };
    metadata.insert("source_table".into(), Value::String(table.into()));
    let memory = NewMemory {
        system_id: Some(system_id.to_string()),
        memory_id: Some(row_id.clone()),
        kind: Some(kind.to_string()),
        content,
        attributes: Some(Value::Object(map)),
        metadata: Some(metadata),
        tags,
        user_id,
        agent_id,
        session_id,
        project,
        created_at,
        embedding: embedding.filter(|v| v.len() == dim),
        ..Default::default()
    };
    Row { source, row_id, hash, memory: Ok(memory) }
}

/// A knowledge graph's entities and relations (relations name their entities,
/// as the hub's graph does, not Session-Buddy's entity ids). Each comes with a
/// hash of its source row, for the ledger.
#[derive(Debug, Default)]
pub struct Graph {
    pub entities: Vec<(String, String, NewEntity)>,
    pub relations: Vec<(String, String, NewRelation)>,
}

/// Read `knowledge_graph.duckdb`'s `kg_entities` and `kg_relationships`.
pub fn read_knowledge_graph(path: &Path, system_id: &str) -> Result<Graph, String> {
    let db = Database::open(path)?;
    let mut graph = Graph::default();
    let mut names = std::collections::HashMap::new();
    let hash = |m: &Map<String, Value>| {
        hex::encode(Sha256::digest(serde_json::to_string(m).expect("JSON values serialize").as_bytes()))
    };
    let object = |v: Option<Value>| match v {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let string = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    if let Some((table, columns)) = db.pick(&["kg_entities"])? {
        db.scan(table, &columns, |mut m, _| {
            let h = hash(&m);
            let id = string(m.get("id"));
            let name = string(m.get("name"));
            names.insert(id.clone(), name.clone());
            let observations = match m.remove("observations") {
                Some(Value::Array(items)) => items.into_iter().filter_map(|o| o.as_str().map(String::from)).collect(),
                _ => Vec::new(),
            };
            let mut metadata = object(m.remove("metadata"));
            metadata.insert("source_system".into(), Value::String(system_id.into()));
            let entity = NewEntity {
                name,
                entity_type: string(m.get("entity_type")),
                observations,
                properties: object(m.remove("properties")),
                metadata,
            };
            graph.entities.push((id, h, entity));
            Ok(())
        })?;
    }
    if let Some((table, columns)) = db.pick(&["kg_relationships"])? {
        db.scan(table, &columns, |mut m, _| {
            let h = hash(&m);
            let end = |k: &str| {
                let id = string(m.get(k));
                names.get(&id).cloned().unwrap_or(id)
            };
            let (from_entity, to_entity) = (end("from_entity"), end("to_entity"));
            let mut metadata = object(m.remove("metadata"));
            metadata.insert("source_system".into(), Value::String(system_id.into()));
            let relation = NewRelation {
                from_entity,
                to_entity,
                relation_type: string(m.get("relation_type")),
                properties: object(m.remove("properties")),
                metadata,
            };
            graph.relations.push((string(m.get("id")), h, relation));
            Ok(())
        })?;
    }
    Ok(graph)
}
