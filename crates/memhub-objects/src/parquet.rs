//! The cold tier's file format: memories as Parquet (zstd), one row per memory.
//!
//! The columns a query engine filters on are typed (`id`, `tenant`, `system_id`,
//! `memory_id`, `kind`, `user_id`, `session_id`, `created_at` as a UTC timestamp,
//! `content`, `embedding` as a list of float32), and `record` holds the rest of the
//! memory as JSON, so a file can be read by DuckDB or pandas and still round-trips
//! to memhub exactly: nothing is thrown away.

use std::sync::Arc;

use arrow_array::builder::{Float32Builder, ListBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use bytes::Bytes;
use memhub_types::Memory;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::{ObjectError, Result};

fn format_error(e: impl std::fmt::Display) -> ObjectError {
    ObjectError::Format(format!("cold Parquet file: {e}"))
}

fn schema() -> Arc<Schema> {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("id", false),
        text("tenant", false),
        text("system_id", false),
        text("memory_id", false),
        text("kind", false),
        text("user_id", true),
        text("session_id", true),
        Field::new("created_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        text("content", false),
        Field::new("embedding", DataType::List(Arc::new(Field::new("item", DataType::Float32, true))), true),
        text("record", false),
    ]))
}

/// Encode memories as one Parquet file (zstd, row groups of 8 192).
pub fn encode(memories: &[Memory]) -> Result<Vec<u8>> {
    let strings =
        |f: &dyn Fn(&Memory) -> Option<&str>| -> ArrayRef { Arc::new(memories.iter().map(f).collect::<StringArray>()) };
    let mut embeddings = ListBuilder::new(Float32Builder::new());
    for m in memories {
        match &m.embedding {
            Some(v) => {
                embeddings.values().append_slice(v);
                embeddings.append(true);
            }
            None => embeddings.append(false),
        }
    }
    let records: Vec<String> = memories
        .iter()
        .map(|m| {
            let rest = Memory { content: String::new(), embedding: None, ..m.clone() };
            serde_json::to_string(&rest).map_err(format_error)
        })
        .collect::<Result<_>>()?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(memories.iter().map(|m| Some(m.id.to_string())).collect::<StringArray>()),
        strings(&|m| Some(&m.tenant)),
        strings(&|m| Some(&m.system_id)),
        strings(&|m| Some(&m.memory_id)),
        strings(&|m| Some(&m.kind)),
        strings(&|m| m.user_id.as_deref()),
        strings(&|m| m.session_id.as_deref()),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(memories.iter().map(|m| m.created_at)).with_timezone("UTC"),
        ),
        strings(&|m| Some(&m.content)),
        Arc::new(embeddings.finish()),
        Arc::new(records.iter().map(|r| Some(r.as_str())).collect::<StringArray>()),
    ];
    let batch = RecordBatch::try_new(schema(), columns).map_err(format_error)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(format_error)?))
        .set_max_row_group_row_count(Some(8192))
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema(), Some(props)).map_err(format_error)?;
    writer.write(&batch).map_err(format_error)?;
    writer.close().map_err(format_error)?;
    Ok(out)
}

/// Decode every memory of a file written by [`encode`].
pub fn decode(bytes: Bytes) -> Result<Vec<Memory>> {
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(format_error)?.build().map_err(format_error)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(format_error)?;
        let column = |name: &str| batch.column_by_name(name).ok_or_else(|| format_error(format!("no column {name}")));
        let content = column("content")?.as_string::<i32>().clone();
        let records = column("record")?.as_string::<i32>().clone();
        let created = column("created_at")?.as_primitive::<TimestampMicrosecondType>().clone();
        let embeddings = column("embedding")?.as_list::<i32>().clone();
        for i in 0..batch.num_rows() {
            let mut m: Memory = serde_json::from_str(records.value(i)).map_err(format_error)?;
            m.content = content.value(i).to_string();
            m.created_at = created.value(i);
            m.embedding =
                (!embeddings.is_null(i)).then(|| embeddings.value(i).as_primitive::<Float32Type>().values().to_vec());
            out.push(m);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use memhub_types::memory::IngestionMethod;
    use memhub_types::Tier;

    fn memory(i: u32, embedding: Option<Vec<f32>>) -> Memory {
        Memory {
            id: uuid::Uuid::now_v7(),
            tenant: "acme".into(),
            system_id: "mac.local".into(),
            memory_id: format!("m{i}"),
            kind: "conversation".into(),
            schema_version: 1,
            content: format!("résumé #{i} 🚀 deploys on Tuesdays"),
            attributes: serde_json::json!({"importance": 0.5}),
            metadata: serde_json::json!({"speaker": "Ann", "n": i}).as_object().unwrap().clone(),
            tags: vec!["a".into(), "b".into()],
            user_id: i.is_multiple_of(2).then(|| "ann".into()),
            agent_id: None,
            session_id: Some("s1".into()),
            project: None,
            created_at: 1_700_000_000_000_000 + i64::from(i),
            ingested_at: 1_700_000_000_000_001,
            updated_at: 1_700_000_000_000_002,
            expires_at: None,
            embedding,
            embedding_model: Some("all-MiniLM-L6-v2".into()),
            content_hash: "ab".repeat(32),
            version: 3,
            ingestion_method: IngestionMethod::CloudPull,
            tier: Tier::Cold,
        }
    }

    #[test]
    fn memories_round_trip_exactly() {
        let ms = vec![memory(1, Some(vec![0.25, -1.5, 3.0])), memory(2, None), memory(3, Some(vec![]))];
        let bytes = encode(&ms).unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        assert_eq!(decode(Bytes::from(bytes)).unwrap(), ms);
    }

    #[test]
    fn a_file_that_is_not_parquet_is_a_clear_error() {
        let e = decode(Bytes::from_static(b"not parquet at all")).unwrap_err().to_string();
        assert!(e.contains("cold Parquet file"), "{e}");
    }
}
