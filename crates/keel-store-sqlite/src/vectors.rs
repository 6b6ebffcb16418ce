//! A store's vectors in memory, for the exact dense scan.
//!
//! Vectors are L2-normalised when stored, so cosine similarity is a dot product. The scan
//! keeps the best `k` in a small sorted buffer; the dot product is written with independent
//! accumulators so the compiler vectorises it.
//!
//! Ingestion changes a store one file at a time, so the vectors are kept up to date in
//! place: a file's old chunks are marked dead (by slot, since SQLite may reuse a rowid) and
//! its new ones appended; the arrays are compacted when half of them are dead. Reloading the
//! whole store from disk after every file would stall searches on a large store.

use std::collections::HashMap;

#[derive(Default)]
pub(crate) struct StoreVectors {
    ids: Vec<i64>,
    dims: usize,
    data: Vec<f32>,
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
        let (mut ids, mut data) = (Vec::new(), Vec::new());
        for (slot, id) in self.ids.iter().enumerate() {
            if !self.dead[slot] {
                ids.push(*id);
                data.extend_from_slice(&self.data[slot * dims..(slot + 1) * dims]);
            }
        }
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
    /// the smaller id.
    pub(crate) fn top_k(
        &self,
        query: &[f32],
        k: usize,
        allowed: impl Fn(i64) -> bool,
    ) -> Vec<(i64, f32)> {
        if k == 0 || query.len() != self.dims || self.dims == 0 {
            return Vec::new();
        }
        let mut best: Vec<(i64, f32)> = Vec::with_capacity(k + 1);
        for (i, row) in self.data.chunks_exact(self.dims).enumerate() {
            let id = self.ids[i];
            if self.dead[i] || !allowed(id) {
                continue;
            }
            let score = dot(query, row);
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
