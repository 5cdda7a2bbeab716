//! The persisted BM25 index: tantivy, fed memhub's own analysis (pre-tokenised, so
//! the index and queries share [`tokenize`](super::tokens::tokenize)). Each commit
//! records the store change it has applied up to, so reopening catches up from
//! there instead of rebuilding.

use std::path::Path;
use std::sync::Mutex;

use memhub_types::{Error, ErrorCode, Result};
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery, Weight};
use tantivy::schema::{Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions};
use tantivy::tokenizer::{PreTokenizedString, Token};
use tantivy::{
    Directory, DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, Score, Searcher, SegmentReader, TantivyDocument,
    Term,
};

use super::filters::DocId;
use super::pending::{Analysed, CorpusStats, TextHit};
use super::Checkpoint;

fn text_error(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::InternalError, format!("text index: {e}"))
}

/// The tantivy index over memory content.
pub struct TextIndex {
    reader: IndexReader,
    /// `None` when opened read-only.
    writer: Option<Mutex<IndexWriter>>,
    content: Field,
    seq: Field,
    /// Equality-filter terms (`s:slack`, `t:acme`, ...), to drive selective searches.
    filters: Field,
    dir: Option<std::path::PathBuf>,
    /// The checkpoint of the last commit; a commit of part of the pending changes
    /// records it again (re-applying changes is harmless, skipping them is not).
    checkpoint: Mutex<Option<Checkpoint>>,
}

fn schema() -> (Schema, Field, Field, Field) {
    let mut b = Schema::builder();
    let indexing = TextFieldIndexing::default().set_index_option(IndexRecordOption::WithFreqs).set_fieldnorms(true);
    let content = b.add_text_field("content", TextOptions::default().set_indexing_options(indexing));
    let seq = b.add_u64_field("seq", NumericOptions::default().set_indexed().set_fast());
    let filters = b.add_text_field("filters", tantivy::schema::STRING);
    (b.build(), content, seq, filters)
}

impl TextIndex {
    /// Open the index in `dir` (created if missing or unreadable when `writable`);
    /// returns it with the checkpoint of its last commit. Read-only without an index
    /// on disk gives an empty in-memory one (everything is then caught up in memory).
    pub fn open(dir: &Path, writable: bool) -> Result<(TextIndex, Option<Checkpoint>)> {
        let (schema, content, seq, filters) = schema();
        let existing = Index::open_in_dir(dir).ok().filter(|i| i.schema() == schema);
        let (index, checkpoint) = match existing {
            Some(index) => {
                let payload = index.load_metas().map_err(text_error)?.payload;
                let checkpoint = payload.and_then(|p| serde_json::from_str::<Checkpoint>(&p).ok());
                (index, checkpoint)
            }
            None if writable => {
                if dir.exists() {
                    tracing::warn!(path = %dir.display(), "text index unreadable or of another format; rebuilding");
                    std::fs::remove_dir_all(dir).map_err(text_error)?;
                }
                std::fs::create_dir_all(dir).map_err(text_error)?;
                (Index::create_in_dir(dir, schema).map_err(text_error)?, None)
            }
            None => (Index::create_in_ram(schema), None),
        };
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(text_error)?;
        let writer = if writable {
            Some(Mutex::new(index.writer_with_num_threads(1, 32 * 1024 * 1024).map_err(text_error)?))
        } else {
            None
        };
        let dir = index.directory().exists(Path::new("meta.json")).unwrap_or(false).then(|| dir.to_path_buf());
        Ok((
            TextIndex { reader, writer, content, seq, filters, dir, checkpoint: Mutex::new(checkpoint.clone()) },
            checkpoint,
        ))
    }

    pub fn searcher(&self) -> Searcher {
        self.reader.searcher()
    }

    fn term(&self, t: &str) -> Term {
        Term::from_field_text(self.content, t)
    }

    /// Corpus size and total length, for BM25 over pending texts.
    pub fn stats(&self, searcher: &Searcher) -> CorpusStats {
        let mut tokens = 0;
        for r in searcher.segment_readers() {
            tokens += r.inverted_index(self.content).map(|i| i.total_num_tokens()).unwrap_or(0);
        }
        CorpusStats { docs: searcher.num_docs(), tokens }
    }

    pub fn doc_freq(&self, searcher: &Searcher, term: &str) -> u64 {
        searcher.doc_freq(&self.term(term)).unwrap_or(0)
    }

    /// BM25 top `n` over committed memories for which `accept` holds. A hit must
    /// match a content term (every one with `match_all`); other terms only add to
    /// the score.
    pub fn search(
        &self,
        searcher: &Searcher,
        terms: &[(String, bool)],
        match_all: bool,
        narrow: Option<&str>,
        accept: &(dyn Fn(DocId) -> bool + Sync),
        n: usize,
    ) -> Result<Vec<TextHit>> {
        if terms.is_empty() || n == 0 {
            return Ok(Vec::new());
        }
        // A selective filter drives the search: each term is intersected with the
        // filter's postings, so a term is read only where the filter's memories are
        // (skipping through its postings), and the union of the terms stays as small
        // as the filter. (A union of the terms intersected with the filter afterwards
        // scores every posting of the commonest term: ~4 ms at 1M memories.)
        let filter = narrow.map(|t| Term::from_field_text(self.filters, t));
        let term_query = |t: &str| -> Box<dyn Query> {
            let term: Box<dyn Query> = Box::new(TermQuery::new(self.term(t), IndexRecordOption::WithFreqs));
            match &filter {
                None => term,
                Some(f) => {
                    let filter = TermQuery::new(f.clone(), IndexRecordOption::Basic);
                    Box::new(BooleanQuery::new(vec![
                        (Occur::Must, term),
                        (Occur::Must, Box::new(BoostQuery::new(Box::new(filter), 0.0))),
                    ]))
                }
            }
        };
        let query_of = |content: bool, occur: Occur| -> Vec<(Occur, Box<dyn Query>)> {
            terms.iter().filter(|t| t.1 == content).map(|(t, _)| (occur, term_query(t))).collect()
        };
        // Only content terms, all required: tantivy's block-max intersection.
        let content = query_of(true, if match_all { Occur::Must } else { Occur::Should });
        let stop = query_of(false, Occur::Should);
        let query: Box<dyn Query> = if stop.is_empty() {
            Box::new(BooleanQuery::new(content))
        } else {
            let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, Box::new(BooleanQuery::new(content)))];
            clauses.extend(stop);
            Box::new(BooleanQuery::new(clauses))
        };
        let found = searcher.search(&*query, &FilteredTopN { n, accept }).map_err(text_error)?;
        // Coverage: which query terms each hit contains, by seeking the postings.
        let mut hits = Vec::with_capacity(found.len());
        let mut by_segment: Vec<&Found> = found.iter().collect();
        by_segment.sort_by_key(|f| (f.segment, f.doc));
        let mut matched = vec![0u32; found.len()];
        for chunk in by_segment.chunk_by(|a, b| a.segment == b.segment) {
            let inverted =
                searcher.segment_reader(chunk[0].segment).inverted_index(self.content).map_err(text_error)?;
            for (t, _) in terms {
                let Some(mut postings) =
                    inverted.read_postings(&self.term(t), IndexRecordOption::Basic).map_err(text_error)?
                else {
                    continue;
                };
                for f in chunk {
                    if postings.doc() <= f.doc && postings.seek(f.doc) == f.doc {
                        matched[f.rank] += 1;
                    }
                }
            }
        }
        for f in &found {
            hits.push(TextHit { id: f.id, bm25: f.score, coverage: matched[f.rank] as f32 / terms.len() as f32 });
        }
        Ok(hits)
    }

    /// Apply drained changes (`None` removes) and commit. With `checkpoint`, the
    /// commit records it: every change up to it is in the index.
    /// Each change is a memory's analysed text with its filter terms, or `None`.
    pub fn apply<'a>(
        &self,
        changes: impl Iterator<Item = (DocId, Option<&'a (Analysed, Vec<String>)>)>,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<()> {
        let Some(writer) = &self.writer else {
            return Err(Error::new(ErrorCode::InternalError, "text index: opened read-only"));
        };
        let mut writer = writer.lock().unwrap_or_else(|p| p.into_inner());
        for (id, text) in changes {
            writer.delete_term(Term::from_field_u64(self.seq, u64::from(id)));
            let Some((text, filter_terms)) = text else { continue };
            let mut tokens = Vec::with_capacity(text.len as usize);
            for (term, tf) in &text.terms {
                for _ in 0..*tf {
                    let position = tokens.len();
                    tokens.push(Token { position, text: term.clone(), ..Token::default() });
                }
            }
            let mut doc = TantivyDocument::new();
            doc.add_u64(self.seq, u64::from(id));
            doc.add_pre_tokenized_text(self.content, PreTokenizedString { text: String::new(), tokens });
            for t in filter_terms {
                doc.add_text(self.filters, t);
            }
            writer.add_document(doc).map_err(text_error)?;
        }
        let mut last = self.checkpoint.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = checkpoint {
            *last = Some(c.clone());
        }
        let mut commit = writer.prepare_commit().map_err(text_error)?;
        if let Some(c) = &*last {
            commit.set_payload(&serde_json::to_string(c).map_err(text_error)?);
        }
        commit.commit().map_err(text_error)?;
        drop(writer);
        self.reader.reload().map_err(text_error)
    }

    /// Merge every segment into one, dropping deleted documents, and remove the old
    /// segment files: after this, terms of deleted memories are gone from disk.
    pub fn compact(&self) -> Result<()> {
        let Some(writer) = &self.writer else { return Ok(()) };
        let mut writer = writer.lock().unwrap_or_else(|p| p.into_inner());
        // The segment list is read from the last commit, and tantivy's own background
        // merges may still replace some of those segments: then the merge is refused
        // ("segments ... could not be found") and is tried again on a fresh list.
        let mut attempt = 0;
        loop {
            let segments = writer.index().searchable_segment_ids().map_err(text_error)?;
            if segments.is_empty() {
                break;
            }
            match writer.merge(&segments).wait() {
                Ok(_) => break,
                Err(e) if attempt < 10 => {
                    tracing::debug!(error = %e, "segment merge raced a background merge; retrying");
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(text_error(e)),
            }
        }
        writer.garbage_collect_files().wait().map_err(text_error)?;
        drop(writer);
        self.reader.reload().map_err(text_error)
    }

    /// Remove every document (the index belonged to another store) and forget the
    /// checkpoint.
    pub fn clear(&self) -> Result<()> {
        let Some(writer) = &self.writer else { return Ok(()) };
        let mut writer = writer.lock().unwrap_or_else(|p| p.into_inner());
        writer.delete_all_documents().map_err(text_error)?;
        *self.checkpoint.lock().unwrap_or_else(|p| p.into_inner()) = None;
        writer.commit().map_err(text_error)?;
        drop(writer);
        self.reader.reload().map_err(text_error)
    }

    /// Bytes the index takes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.dir.as_deref().map_or(0, super::dir_bytes)
    }
}

/// One collected hit.
#[derive(Debug, Clone, Copy)]
struct Found {
    id: DocId,
    score: Score,
    segment: u32,
    doc: u32,
    /// Position in the merged result.
    rank: usize,
}

/// Top `n` by score among documents `accept` allows, collected inside the query's
/// own (block-max pruning) loop: the filter shapes the candidates, it does not trim
/// a fixed top-k afterwards.
struct FilteredTopN<'a> {
    n: usize,
    accept: &'a (dyn Fn(DocId) -> bool + Sync),
}

/// Unused: [`FilteredTopN`] collects in `collect_segment`.
struct NoSegmentCollector;

impl SegmentCollector for NoSegmentCollector {
    type Fruit = Vec<Found>;
    fn collect(&mut self, _: tantivy::DocId, _: Score) {}
    fn harvest(self) -> Vec<Found> {
        Vec::new()
    }
}

impl Collector for FilteredTopN<'_> {
    type Fruit = Vec<Found>;
    type Child = NoSegmentCollector;

    fn for_segment(&self, _: u32, _: &SegmentReader) -> tantivy::Result<NoSegmentCollector> {
        Ok(NoSegmentCollector)
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(&self, fruits: Vec<Vec<Found>>) -> tantivy::Result<Vec<Found>> {
        let mut all: Vec<Found> = fruits.into_iter().flatten().collect();
        super::pending::top_n(&mut all, self.n, |f| (f.score, f.id));
        for (rank, f) in all.iter_mut().enumerate() {
            f.rank = rank;
        }
        Ok(all)
    }

    fn collect_segment(
        &self,
        weight: &dyn Weight,
        segment: u32,
        reader: &SegmentReader,
    ) -> tantivy::Result<Vec<Found>> {
        let seqs = reader.fast_fields().u64("seq")?;
        let alive = reader.alive_bitset();
        // A min-heap of the best n: (score, id, doc).
        let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(OrdF32, DocId, u32)>> =
            std::collections::BinaryHeap::with_capacity(self.n + 1);
        let mut threshold = f32::MIN;
        weight.for_each_pruning(threshold, reader, &mut |doc, score| {
            if alive.is_some_and(|a| !a.is_alive(doc)) {
                return threshold;
            }
            let Some(id) = seqs.first(doc).and_then(|s| DocId::try_from(s).ok()) else { return threshold };
            if !(self.accept)(id) {
                return threshold;
            }
            heap.push(std::cmp::Reverse((OrdF32(score), id, doc)));
            if heap.len() > self.n {
                heap.pop();
            }
            if heap.len() == self.n {
                threshold = heap.peek().map_or(f32::MIN, |r| r.0 .0 .0);
            }
            threshold
        })?;
        Ok(heap
            .into_iter()
            .map(|std::cmp::Reverse((s, id, doc))| Found { id, score: s.0, segment, doc, rank: 0 })
            .collect())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdF32(f32);
impl Eq for OrdF32 {}
impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF32 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
