//! Recall@10 of the embedded store's dense search against an exact scan, on a real store.
//!
//!     cargo run --release --example dense_recall -p keel-store-sqlite -- DIR STORE_ID QUERIES.json
//!
//! DIR is a stopped Keel's PERSISTENT_STORAGE_DIR; QUERIES.json a list of query embeddings
//! (as /v1/embeddings returns them, normalised). The exact answer is computed here from the
//! vectors as stored, in f64; the store answers through [`RagStore::dense`], which scans in
//! 8 bits and reranks once a store is large. Prints one JSON line: recall@10 and the mean
//! time per query of each.

use std::time::Instant;

use keel_rag::RagStore;
use keel_store_sqlite::SqliteStore;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, store_id, queries] = args.as_slice() else {
        panic!("usage: dense_recall DIR STORE_ID QUERIES.json");
    };
    let queries: Vec<Vec<f32>> =
        serde_json::from_str(&std::fs::read_to_string(queries).unwrap()).unwrap();
    let exact_rows: Vec<(i64, Vec<f32>)> = {
        let db = rusqlite::Connection::open(std::path::Path::new(dir).join("rag.sqlite3")).unwrap();
        let mut stmt = db
            .prepare("SELECT id, embedding FROM chunks WHERE store_id = ?1")
            .unwrap();
        stmt.query_map([store_id], |r| {
            let blob: Vec<u8> = r.get(1)?;
            let v = blob
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((r.get(0)?, v))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    };
    let store = SqliteStore::open(std::path::Path::new(dir)).unwrap();
    store.dense(store_id, &queries[0], 10, None).unwrap(); // loads the vectors

    let (mut found, mut total) = (0usize, 0usize);
    let (mut exact_s, mut store_s) = (0f64, 0f64);
    for q in &queries {
        let t = Instant::now();
        let mut scored: Vec<(i64, f64)> = exact_rows
            .iter()
            .map(|(id, v)| {
                let s = v.iter().zip(q).map(|(a, b)| *a as f64 * *b as f64).sum();
                (*id, s)
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        exact_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let got = store.dense(store_id, q, 10, None).unwrap();
        store_s += t.elapsed().as_secs_f64();
        total += 10;
        found += scored[..10]
            .iter()
            .filter(|(id, _)| got.iter().any(|g| g.0 == *id))
            .count();
    }
    let n = queries.len() as f64;
    println!(
        "{}",
        serde_json::json!({
            "vectors": exact_rows.len(),
            "queries": queries.len(),
            "recall_at_10": found as f64 / total as f64,
            "store_dense_ms": (store_s / n * 1e3 * 100.0).round() / 100.0,
            "exact_f64_ms": (exact_s / n * 1e3 * 100.0).round() / 100.0,
        })
    );
}
