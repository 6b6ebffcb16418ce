//! A store's vectors in memory, for the dense scan.
//!
//! Vectors are L2-normalised when stored, so cosine similarity is a dot product. The scan
//! keeps the best `k` in a small sorted buffer; the dot products are written with independent
//! accumulators so the compiler vectorises them.
//!
//! A large store is scanned in 8 bits first: each vector also kept as i8 with its own scale
//! (a quarter of the memory to stream, which is what bounds a scan of 100k vectors), the
//! best [`RERANK`] candidates by that estimate rescored exactly in f32. Below
//! [`QUANTIZED_FROM`] vectors the exact scan is fast enough and exact.
//!
//! Ingestion changes a store one file at a time, so the vectors are kept up to date in
//! place: a file's old chunks are marked dead (by slot, since SQLite may reuse a rowid) and
//! its new ones appended; the arrays are compacted when half of them are dead. Reloading the
//! whole store from disk after every file would stall searches on a large store.

use std::collections::HashMap;

/// Stores at least this large are scanned in 8 bits, then reranked.
const QUANTIZED_FROM: usize = 20_000;
/// Candidates the 8-bit scan keeps for exact rescoring, at least; more when `k` is large.
const RERANK: usize = 200;

#[derive(Default)]
pub(crate) struct StoreVectors {
    ids: Vec<i64>,
    dims: usize,
    data: Vec<f32>,
    /// `data` quantized: each vector scaled so its largest component is ±127.
    quantized: Vec<i8>,
    scales: Vec<f32>,
    /// Slots whose chunk was replaced or removed.
    dead: Vec<bool>,
    dead_count: usize,
    slot_of: HashMap<i64, usize>,
}

pub(crate) fn decode(blob: &[u8]) -> Vec<f32> {
    blob.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

impl StoreVectors {
    pub(crate) fn push(&mut self, id: i64, v: &[f32]) {
        if self.ids.len() == self.dead_count {
            self.dims = v.len();
        }
        // A vector of another width (a changed embedding model) cannot be compared.
        if v.len() != self.dims {
            return;
        }
        self.remove(&[id]);
        self.slot_of.insert(id, self.ids.len());
        self.ids.push(id);
        self.dead.push(false);
        self.data.extend_from_slice(v);
        let scale = quantize(v, &mut self.quantized);
        self.scales.push(scale);
    }

    pub(crate) fn remove(&mut self, ids: &[i64]) {
        for id in ids {
            if let Some(slot) = self.slot_of.remove(id) {
                self.dead[slot] = true;
                self.dead_count += 1;
            }
        }
        if self.dead_count > 0 && self.dead_count * 2 >= self.ids.len() {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let dims = self.dims;
        let (mut ids, mut data, mut quantized, mut scales) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (slot, id) in self.ids.iter().enumerate() {
            if !self.dead[slot] {
                ids.push(*id);
                data.extend_from_slice(&self.data[slot * dims..(slot + 1) * dims]);
                quantized.extend_from_slice(&self.quantized[slot * dims..(slot + 1) * dims]);
                scales.push(self.scales[slot]);
            }
        }
        self.quantized = quantized;
        self.scales = scales;
        self.slot_of = ids
            .iter()
            .enumerate()
            .map(|(slot, id)| (*id, slot))
            .collect();
        self.dead = vec![false; ids.len()];
        self.dead_count = 0;
        self.ids = ids;
        self.data = data;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ids.len() - self.dead_count
    }

    /// The `k` ids most similar to `query` among those `allowed`, best first; ties go to
    /// the smaller id. Scores are exact; on a large store the set is the exact one unless a
    /// true top-`k` vector fell outside the 8-bit scan's candidates.
    pub(crate) fn top_k(
        &self,
        query: &[f32],
        k: usize,
        allowed: impl Fn(i64) -> bool,
    ) -> Vec<(i64, f32)> {
        if k == 0 || query.len() != self.dims || self.dims == 0 {
            return Vec::new();
        }
        let dims = self.dims;
        let exact = |slot: usize| dot(query, &self.data[slot * dims..(slot + 1) * dims]);
        if self.ids.len() - self.dead_count < QUANTIZED_FROM {
            return self.best(k, &allowed, exact);
        }
        let mut q8 = Vec::with_capacity(dims);
        let q_scale = quantize(query, &mut q8);
        let estimate = |slot: usize| {
            let row = &self.quantized[slot * dims..(slot + 1) * dims];
            dot_i8(&q8, row) as f32 * q_scale * self.scales[slot]
        };
        let candidates = self.best(RERANK.max(4 * k), &allowed, estimate);
        let mut out: Vec<(i64, f32)> = candidates
            .into_iter()
            .map(|(id, _)| (id, exact(self.slot_of[&id])))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(k);
        out
    }

    /// The `k` live, allowed slots with the highest `score`, as (id, score), best first.
    fn best(
        &self,
        k: usize,
        allowed: &impl Fn(i64) -> bool,
        score: impl Fn(usize) -> f32,
    ) -> Vec<(i64, f32)> {
        let mut best: Vec<(i64, f32)> = Vec::with_capacity(k + 1);
        for (slot, &id) in self.ids.iter().enumerate() {
            if self.dead[slot] || !allowed(id) {
                continue;
            }
            let score = score(slot);
            if best.len() == k && score <= best[k - 1].1 {
                continue;
            }
            let at = best.partition_point(|&(bid, s)| s > score || (s == score && bid < id));
            best.insert(at, (id, score));
            best.truncate(k);
        }
        best
    }
}

/// Appends `v` as i8 with its largest component at ±127; returns the scale back to f32.
fn quantize(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    out.extend(
        v.iter()
            .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8),
    );
    scale
}

#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            acc[j] += i32::from(x[j]) * i32::from(y[j]);
        }
    }
    let tail: i32 = ra
        .iter()
        .zip(rb)
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    acc.iter().sum::<i32>() + tail
}

#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn top_k_is_the_exact_order_and_respects_the_allowed_set() {
        let mut s = StoreVectors::default();
        let dims = 11;
        let mut all = Vec::new();
        for id in 0..50i64 {
            let v: Vec<f32> = (0..dims)
                .map(|j| ((id * 7 + j as i64 * 3) % 13) as f32 - 6.0)
                .collect();
            s.push(id, &decode(&blob(&v)));
            all.push((id, v));
        }
        let q: Vec<f32> = (0..dims).map(|j| j as f32 - 5.0).collect();
        let mut want: Vec<(i64, f32)> = all
            .iter()
            .map(|(id, v)| (*id, v.iter().zip(&q).map(|(a, b)| a * b).sum()))
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let got = s.top_k(&q, 10, |_| true);
        assert_eq!(
            got.iter().map(|x| x.0).collect::<Vec<_>>(),
            want[..10].iter().map(|x| x.0).collect::<Vec<_>>()
        );
        let odd = s.top_k(&q, 5, |id| id % 2 == 1);
        assert_eq!(odd.len(), 5);
        assert!(odd.iter().all(|(id, _)| id % 2 == 1));
        assert!(s.top_k(&q[..3], 5, |_| true).is_empty());
    }

    /// Deterministic pseudo-random unit vectors around a few centres, as embeddings of
    /// documents on a few topics are.
    fn clustered(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..8)
            .map(|_| (0..dims).map(|_| next()).collect())
            .collect();
        (0..n)
            .map(|i| {
                let c = &centres[i % centres.len()];
                let mut v: Vec<f32> = c.iter().map(|x| x + 0.8 * next()).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
                v
            })
            .collect()
    }

    #[test]
    fn a_large_store_scanned_in_8_bits_finds_the_exact_top_10() {
        let (n, dims) = (QUANTIZED_FROM + 5_000, 64);
        let mut s = StoreVectors::default();
        for (id, v) in clustered(n, dims, 7).iter().enumerate() {
            s.push(id as i64, v);
        }
        let queries = clustered(40, dims, 99);
        let (mut found, mut total) = (0, 0);
        for q in &queries {
            let got = s.top_k(q, 10, |_| true);
            let want = s.best(10, &|_| true, |slot| {
                dot(q, &s.data[slot * dims..(slot + 1) * dims])
            });
            // Scores are the exact ones, whatever the candidates were.
            for (id, score) in &got {
                let slot = s.slot_of[id];
                assert_eq!(*score, dot(q, &s.data[slot * dims..(slot + 1) * dims]));
            }
            total += want.len();
            found += want
                .iter()
                .filter(|w| got.iter().any(|g| g.0 == w.0))
                .count();
        }
        let recall = found as f64 / total as f64;
        assert!(recall >= 0.98, "recall@10 {recall}");
        // Removing is seen by the 8-bit scan as by the exact one.
        let top = s.top_k(&queries[0], 1, |_| true)[0].0;
        s.remove(&[top]);
        assert!(s
            .top_k(&queries[0], 10, |_| true)
            .iter()
            .all(|g| g.0 != top));
    }

    #[test]
    fn replaced_and_removed_vectors_never_come_back_and_compaction_keeps_the_rest() {
        let mut s = StoreVectors::default();
        for id in 0..10i64 {
            s.push(id, &[id as f32, 1.0]);
        }
        let q = [1.0, 0.0];
        assert_eq!(s.top_k(&q, 1, |_| true)[0].0, 9);
        // 9 is removed, then its rowid is reused by a new, weak vector.
        s.remove(&[9, 8]);
        assert_eq!(s.top_k(&q, 1, |_| true)[0].0, 7);
        s.push(9, &[-5.0, 1.0]);
        assert_eq!(s.top_k(&q, 10, |_| true).len(), 9);
        assert_eq!(s.top_k(&q, 10, |_| true).last().unwrap().0, 9);
        // Half dead: compacted, same answers.
        s.remove(&[0, 1, 2, 3]);
        assert_eq!(s.len(), 5);
        assert_eq!(s.ids.len(), 5, "compacted");
        let ids: Vec<i64> = s.top_k(&q, 10, |_| true).iter().map(|x| x.0).collect();
        assert_eq!(ids, [7, 6, 5, 4, 9]);
    }
}
