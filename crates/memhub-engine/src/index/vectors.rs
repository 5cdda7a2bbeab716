//! The persisted vector index: usearch HNSW graphs over L2-normalised vectors of
//! the engine's model (cosine), one per tier: hot vectors stored as f16, warm ones
//! as i8 codes quantised here with a per-vector scale (largest component = ±127,
//! rounded). usearch's own f32 → i8 cast divides by the L2 norm, which leaves the
//! ~0.05-sized components of a 384-d unit vector a handful of levels (recall@10
//! 0.82 in `bench tiers`); cosine ignores the scale, so the graph needs no scale
//! back. Saved
//! with a sidecar checkpoint so reopening loads the graphs and catches up from the
//! store instead of rebuilding.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use memhub_types::{Error, ErrorCode, Result, Tier};
use serde::{Deserialize, Serialize};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::filters::DocId;
use super::Checkpoint;

fn vector_error(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::InternalError, format!("vector index: {e}"))
}

/// HNSW parameters. Chosen with `memhub bench search` (recall@10 vs exact).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswParams {
    pub connectivity: usize,
    pub expansion_add: usize,
    pub expansion_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams { connectivity: 16, expansion_add: 128, expansion_search: 384 }
    }
}

impl HnswParams {
    /// Whether a graph built with `self` is the graph `other` would build: the
    /// search breadth is a search setting, so changing it keeps the saved graph.
    fn builds_like(&self, other: &HnswParams) -> bool {
        (self.connectivity, self.expansion_add) == (other.connectivity, other.expansion_add)
    }
}

/// What the sidecar file records next to the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sidecar {
    checkpoint: Checkpoint,
    dim: usize,
    model: String,
    quantization: String,
    params: HnswParams,
}

/// Concurrent searches usearch can serve at once; more callers fall back to exact.
const SEARCH_THREADS: usize = 64;

/// A contiguous copy of the graph's vectors as i8 with a per-vector scale, indexed
/// by id: exact scans (selective filters, similarity of text-only hits) read it at
/// memory speed instead of asking the graph one key at a time.
#[derive(Debug, Default)]
struct Arena {
    dim: usize,
    codes: Vec<i8>,
    scales: Vec<f32>,
    present: roaring::RoaringBitmap,
}

impl Arena {
    fn set(&mut self, id: DocId, v: Option<&[f32]>) {
        let i = id as usize;
        let Some(v) = v else {
            self.present.remove(id);
            return;
        };
        if self.scales.len() <= i {
            let len = (i + 1).next_power_of_two();
            self.scales.resize(len, 0.0);
            self.codes.resize(len * self.dim, 0);
        }
        self.scales[i] = quantise_i8_into(v, &mut self.codes[i * self.dim..(i + 1) * self.dim]);
        self.present.insert(id);
    }

    /// Quantise a query the way vectors are stored (i8 range, one scale).
    fn quantise(q: &[f32]) -> (Vec<i16>, f32) {
        let max = q.iter().fold(0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE);
        let scale = max / 127.0;
        (q.iter().map(|x| (x / scale).round() as i16).collect(), scale)
    }

    /// Approximate dot products of a quantised query with the vectors of `ids` that
    /// are present: integer multiply-adds, which vectorise on any x86-64 (no f32
    /// conversion per element).
    fn scan(&self, ids: impl Iterator<Item = DocId>, q: &[i16], q_scale: f32) -> Vec<(DocId, f32)> {
        let ids: Vec<DocId> = ids.filter(|id| self.present.contains(*id)).collect();
        // A filter's memories lie scattered through the array (390 MB at 1M), so each
        // vector is a cache and TLB miss: asking for the vectors a few ids ahead
        // overlaps those misses instead of waiting for each in turn.
        const AHEAD: usize = 8;
        for &id in ids.iter().take(AHEAD) {
            self.prefetch(id);
        }
        let mut scores = Vec::with_capacity(ids.len());
        for (j, &id) in ids.iter().enumerate() {
            if let Some(&next) = ids.get(j + AHEAD) {
                self.prefetch(next);
            }
            scores.push((id, self.dot(id, q, q_scale)));
        }
        scores
    }

    fn codes(&self, id: DocId) -> &[i8] {
        let i = id as usize;
        &self.codes[i * self.dim..(i + 1) * self.dim]
    }

    /// Hint the CPU to load vector `id` into cache; no effect on results.
    #[inline]
    fn prefetch(&self, id: DocId) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let codes = self.codes(id);
            for offset in (0..codes.len()).step_by(64).chain([codes.len().saturating_sub(1)]) {
                // SAFETY: a prefetch is a hint: it reads nothing into the program and
                // never faults; the address is inside `codes` anyway.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(codes.as_ptr().add(offset)) };
            }
            // SAFETY: as above; `id` indexes `scales` (it has a row in `codes`).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(self.scales.as_ptr().add(id as usize).cast()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = id;
    }

    fn dot(&self, id: DocId, q: &[i16], q_scale: f32) -> f32 {
        let codes = self.codes(id);
        let mut acc = [0i32; 16];
        let (code_chunks, q_chunks) = (codes.chunks_exact(16), q.chunks_exact(16));
        let tail: i32 =
            code_chunks.remainder().iter().zip(q_chunks.remainder()).map(|(c, x)| i32::from(*c) * i32::from(*x)).sum();
        for (c, x) in code_chunks.zip(q_chunks) {
            for k in 0..16 {
                acc[k] += i32::from(c[k]) * i32::from(x[k]);
            }
        }
        (acc.iter().sum::<i32>() + tail) as f32 * self.scales[id as usize] * q_scale
    }

    fn bytes(&self) -> usize {
        self.codes.capacity() + self.scales.capacity() * 4 + self.present.serialized_size()
    }
}

/// A drained vector change: the memory's new vector and its tier, or `None` (removed).
pub type VectorChange = (DocId, Option<(Box<[f32]>, Tier)>);

/// The quantisation each tier's graph stores.
const GRAPH_KINDS: [(Tier, ScalarKind); 2] = [(Tier::Hot, ScalarKind::F16), (Tier::Warm, ScalarKind::I8)];

/// What the sidecar's `quantization` says: both graphs' formats.
const FORMAT: &str = "hot:f16,warm:i8";

/// Write the i8 codes of `v` with its own scale (the largest component becomes
/// ±127, rounded) into `codes`; returns the scale (`v[i] ≈ codes[i] * scale`).
fn quantise_i8_into(v: &[f32], codes: &mut [i8]) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE);
    for (c, x) in codes.iter_mut().zip(v) {
        *c = (x * 127.0 / max).round().clamp(-127.0, 127.0) as i8;
    }
    max / 127.0
}

/// The i8 codes of `v` (see [`quantise_i8_into`]); the warm graph needs no scale.
fn quantise_i8(v: &[f32]) -> Vec<i8> {
    let mut codes = vec![0; v.len()];
    quantise_i8_into(v, &mut codes);
    codes
}

pub struct VectorIndex {
    /// The hot graph (f16) and the warm graph (i8). Each is write-locked only to
    /// grow capacity; adds and searches share the read lock (usearch supports
    /// concurrent add and search).
    graphs: [RwLock<Index>; 2],
    /// Each graph's `memory_usage()`, taken by the writer after each change batch.
    /// usearch walks every node slot to answer it, and a slot an add is filling
    /// may be null: asked during an add (a stats request while the maintainer
    /// inserts), it read through a null node and crashed the server.
    graph_bytes: [AtomicUsize; 2],
    arena: RwLock<Arena>,
    path: Option<PathBuf>,
    dim: usize,
    model: String,
    params: HnswParams,
}

impl VectorIndex {
    fn create(dim: usize, params: HnswParams, quantization: ScalarKind) -> Result<Index> {
        let options = IndexOptions {
            dimensions: dim,
            metric: MetricKind::Cos,
            quantization,
            connectivity: params.connectivity,
            expansion_add: params.expansion_add,
            expansion_search: params.expansion_search,
            multi: false,
        };
        let index = Index::new(&options).map_err(vector_error)?;
        index.reserve_capacity_and_threads(1024, SEARCH_THREADS).map_err(vector_error)?;
        Ok(index)
    }

    /// Open the graphs saved at `path` (hot) and beside it (warm) if the sidecar
    /// matches `dim`, `model` and `params`; otherwise empty ones. Returns the
    /// checkpoint they were saved at. Only a `writable` index saves.
    pub fn open(
        path: &Path,
        writable: bool,
        dim: usize,
        model: &str,
        params: HnswParams,
    ) -> Result<(VectorIndex, Option<Checkpoint>)> {
        let fresh = || -> Result<[Index; 2]> {
            Ok([Self::create(dim, params, GRAPH_KINDS[0].1)?, Self::create(dim, params, GRAPH_KINDS[1].1)?])
        };
        let mut loaded = None;
        if path.exists() {
            let sidecar: Option<Sidecar> =
                std::fs::read(sidecar_path(path)).ok().and_then(|b| serde_json::from_slice(&b).ok());
            match sidecar {
                Some(s)
                    if s.dim == dim
                        && s.model == model
                        && s.quantization == FORMAT
                        && s.params.builds_like(&params) =>
                {
                    let graphs = fresh()?;
                    let read = graphs.iter().zip(GRAPH_KINDS).try_for_each(|(g, (tier, _))| {
                        let p = graph_path(path, tier);
                        if !p.exists() {
                            return Ok(());
                        }
                        g.load(&p.to_string_lossy()).map_err(vector_error)?;
                        g.change_expansion_search(params.expansion_search);
                        let cap = g.size().max(1024) * 2;
                        g.reserve_capacity_and_threads(cap, SEARCH_THREADS).map_err(vector_error)
                    });
                    match read {
                        Ok(()) => loaded = Some((graphs, s.checkpoint)),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "vector index unreadable; rebuilding")
                        }
                    }
                }
                _ => tracing::info!(path = %path.display(), "vector index is of another model or format; rebuilding"),
            }
        }
        let ([hot, warm], checkpoint) = match loaded {
            Some((g, c)) => (g, Some(c)),
            None => (fresh()?, None),
        };
        let v = VectorIndex {
            graph_bytes: [AtomicUsize::new(hot.memory_usage()), AtomicUsize::new(warm.memory_usage())],
            graphs: [RwLock::new(hot), RwLock::new(warm)],
            arena: RwLock::new(Arena { dim, ..Arena::default() }),
            path: writable.then(|| path.to_path_buf()),
            dim,
            model: model.into(),
            params,
        };
        Ok((v, checkpoint))
    }

    fn graph(&self, tier: Tier) -> std::sync::RwLockReadGuard<'_, Index> {
        let i = usize::from(tier == Tier::Warm);
        self.graphs[i].read().unwrap_or_else(|p| p.into_inner())
    }

    fn each_graph(&self) -> impl Iterator<Item = (Tier, std::sync::RwLockReadGuard<'_, Index>)> {
        GRAPH_KINDS.into_iter().map(|(t, _)| (t, self.graph(t)))
    }

    /// Vectors in the graphs (all tiers).
    pub fn len(&self) -> usize {
        self.each_graph().map(|(_, g)| g.size()).sum()
    }

    /// Vectors in one tier's graph.
    pub fn tier_len(&self, tier: Tier) -> usize {
        self.graph(tier).size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate top `n` by cosine among ids `accept` allows, over the graphs of
    /// `tiers`: `(id, similarity)`, best first.
    pub fn search(
        &self,
        query: &[f32],
        n: usize,
        tiers: &[Tier],
        accept: &dyn Fn(DocId) -> bool,
    ) -> Result<Vec<(DocId, f32)>> {
        let mut hits = Vec::new();
        for (tier, graph) in self.each_graph().filter(|(t, _)| tiers.contains(t)) {
            if graph.size() == 0 || n == 0 {
                continue;
            }
            let filter = |key: u64| DocId::try_from(key).is_ok_and(accept);
            let found = match tier {
                Tier::Warm => graph.filtered_search(&quantise_i8(query), n, filter),
                _ => graph.filtered_search(query, n, filter),
            }
            .map_err(vector_error)?;
            hits.extend(found.keys.iter().zip(&found.distances).map(|(k, d)| (*k as DocId, 1.0 - d)));
        }
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(n);
        Ok(hits)
    }

    /// Refill the exact-scan copy from the graphs for `ids` (after a load).
    pub fn fill_arena(&self, ids: impl Iterator<Item = DocId>) {
        let graphs: Vec<_> = self.each_graph().collect();
        let mut arena = self.arena.write().unwrap_or_else(|p| p.into_inner());
        let mut buf = vec![0f32; self.dim];
        for id in ids {
            for (_, g) in &graphs {
                if let Ok(1) = g.get(u64::from(id), &mut buf) {
                    arena.set(id, super::normalized(&buf).as_deref());
                    break;
                }
            }
        }
    }

    fn arena(&self) -> std::sync::RwLockReadGuard<'_, Arena> {
        self.arena.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Cosine of `query` against the stored vectors of `ids` (an exact scan of 8-bit
    /// vectors and an 8-bit query: scores within ~1% of the f32 ones).
    pub fn exact(&self, query: &[f32], ids: impl Iterator<Item = DocId>) -> Vec<(DocId, f32)> {
        let (q, q_scale) = Arena::quantise(query);
        self.arena().scan(ids, &q, q_scale)
    }

    /// Change the search breadth at run time (benchmarks sweep it).
    pub fn set_expansion_search(&self, ef: usize) {
        for (_, g) in self.each_graph() {
            g.change_expansion_search(ef);
        }
    }

    /// The SIMD kernels usearch picked on this CPU.
    pub fn hardware_acceleration(&self) -> String {
        self.graph(Tier::Hot).hardware_acceleration()
    }

    /// Apply drained changes: replace or remove each id's vector; a vector goes into
    /// its tier's graph. Inserts run on `threads` threads.
    pub fn apply(&self, changes: &[VectorChange], threads: usize) -> Result<()> {
        for (_, graph) in self.each_graph() {
            for (id, _) in changes {
                if graph.contains(u64::from(*id)) {
                    graph.remove(u64::from(*id)).map_err(vector_error)?;
                }
            }
        }
        {
            let mut arena = self.arena.write().unwrap_or_else(|p| p.into_inner());
            for (id, v) in changes {
                arena.set(*id, v.as_ref().map(|(v, _)| &**v));
            }
        }
        let of_tier = |tier: Tier| {
            changes.iter().filter_map(move |(id, v)| v.as_ref().filter(|(_, t)| *t == tier).map(|(v, _)| (*id, v)))
        };
        let hot: Vec<(DocId, &[f32])> = of_tier(Tier::Hot).map(|(id, v)| (id, &**v)).collect();
        let warm: Vec<(DocId, Vec<i8>)> = of_tier(Tier::Warm).map(|(id, v)| (id, quantise_i8(v))).collect();
        let added = self.add_all(Tier::Hot, &hot, threads).and_then(|()| self.add_all(Tier::Warm, &warm, threads));
        // No add runs now (this is the only writer): the walk is safe.
        self.measure_graphs();
        added
    }

    /// Take each graph's memory figure; only while no add runs (the writer, between batches).
    fn measure_graphs(&self) {
        for (i, (_, graph)) in self.each_graph().enumerate() {
            self.graph_bytes[i].store(graph.memory_usage(), Ordering::Relaxed);
        }
    }

    fn add_all<T: usearch::VectorType + Sync, V: AsRef<[T]> + Sync>(
        &self,
        tier: Tier,
        adds: &[(DocId, V)],
        threads: usize,
    ) -> Result<()> {
        if adds.is_empty() {
            return Ok(());
        }
        let needed = self.graph(tier).size() + adds.len();
        if needed > self.graph(tier).capacity() {
            let i = usize::from(tier == Tier::Warm);
            let graph = self.graphs[i].write().unwrap_or_else(|p| p.into_inner());
            graph.reserve_capacity_and_threads(needed.next_power_of_two(), SEARCH_THREADS).map_err(vector_error)?;
        }
        let index = self.graph(tier);
        let threads = threads.clamp(1, 8);
        let chunk = adds.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let workers: Vec<_> = adds
                .chunks(chunk)
                .map(|part| {
                    let index = &*index;
                    s.spawn(move || -> Result<()> {
                        for (id, v) in part {
                            index.add(u64::from(*id), v.as_ref()).map_err(vector_error)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().unwrap_or_else(|_| Err(vector_error("insert thread panicked"))))
        })
    }

    /// Drop every vector (the graphs belonged to another store).
    pub fn clear(&self) -> Result<()> {
        for (slot, (_, kind)) in self.graphs.iter().zip(GRAPH_KINDS) {
            *slot.write().unwrap_or_else(|p| p.into_inner()) = Self::create(self.dim, self.params, kind)?;
        }
        self.measure_graphs();
        *self.arena.write().unwrap_or_else(|p| p.into_inner()) = Arena { dim: self.dim, ..Arena::default() };
        Ok(())
    }

    /// Save the graph and its checkpoint (graph first, each via a rename, so a crash
    /// leaves an older checkpoint at worst: catch-up then redoes a little more).
    pub fn save(&self, checkpoint: &Checkpoint) -> Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        for (tier, graph) in self.each_graph() {
            let target = graph_path(path, tier);
            let tmp = target.with_extension("usearch.tmp");
            graph.save(&tmp.to_string_lossy()).map_err(vector_error)?;
            sync_file(&tmp)?;
            std::fs::rename(&tmp, &target).map_err(vector_error)?;
        }
        let sidecar = Sidecar {
            checkpoint: checkpoint.clone(),
            dim: self.dim,
            model: self.model.clone(),
            quantization: FORMAT.into(),
            params: self.params,
        };
        let side = sidecar_path(path);
        let side_tmp = side.with_extension("json.tmp");
        std::fs::write(&side_tmp, serde_json::to_vec(&sidecar).map_err(vector_error)?).map_err(vector_error)?;
        sync_file(&side_tmp)?;
        std::fs::rename(&side_tmp, &side).map_err(vector_error)
    }

    /// Bytes the graphs (vectors and links) and the exact-scan copy take in memory.
    /// Safe while adds run: the graphs' share is the figure of the last change batch.
    pub fn memory_bytes(&self) -> usize {
        self.graph_bytes.iter().map(|b| b.load(Ordering::Relaxed)).sum::<usize>() + self.arena().bytes()
    }

    /// Bytes of one tier's graph in memory (as of the last change batch).
    pub fn tier_memory_bytes(&self, tier: Tier) -> usize {
        self.graph_bytes[usize::from(tier == Tier::Warm)].load(Ordering::Relaxed)
    }

    pub fn disk_bytes(&self) -> u64 {
        let Some(path) = &self.path else { return 0 };
        Tier::ALL.into_iter().filter_map(|t| std::fs::metadata(graph_path(path, t)).ok()).map(|m| m.len()).sum()
    }
}

/// Where a tier's graph is saved: the hot one at `path`, the warm one beside it.
fn graph_path(path: &Path, tier: Tier) -> PathBuf {
    match tier {
        Tier::Hot => path.to_path_buf(),
        _ => path.with_extension(format!("{}.usearch", tier.as_str())),
    }
}

fn sidecar_path(path: &Path) -> PathBuf {
    path.with_extension("json")
}

fn sync_file(p: &Path) -> Result<()> {
    std::fs::File::open(p).and_then(|f| f.sync_all()).map_err(vector_error)
}
