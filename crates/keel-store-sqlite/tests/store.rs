//! The embedded store against a real SQLite database in a temporary folder: the shared
//! contract, then what only the embedded store does (the folder lock, the in-memory vectors).

mod contract;

use std::time::Duration;

use contract::{attach, chunk, unit, LEASE, ME};
use keel_rag::analyze::analyze_query;
use keel_rag::records::{Attach, LastError, NewChunk};
use keel_rag::RagStore;
use keel_store_sqlite::SqliteStore;
use serde_json::{json, Map};

#[test]
fn files_are_scoped_to_their_owner_and_paged_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    contract::files_are_scoped_to_their_owner_and_paged_newest_first(&store);
    // A deleted file's bytes are gone from disk too: every file left there has its row.
    for entry in std::fs::read_dir(dir.path().join("files")).unwrap() {
        let id = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            store.file(ME, &id).is_ok() || store.file(contract::OTHER, &id).is_ok(),
            "{id} has no row"
        );
    }
}

#[test]
fn ingestion_replaces_chunks_whole_and_both_legs_find_them() {
    let dir = tempfile::tempdir().unwrap();
    contract::ingestion_replaces_chunks_whole_and_both_legs_find_them(
        &SqliteStore::open(dir.path()).unwrap(),
    );
}

#[test]
fn filters_run_inside_both_legs_with_the_same_meaning_as_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    contract::filters_run_inside_both_legs_with_the_same_meaning_as_in_memory(
        &SqliteStore::open(dir.path()).unwrap(),
    );
}

#[test]
fn everything_survives_reopening_and_a_dead_workers_lease_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let (vs, file) = {
        let store = SqliteStore::open(dir.path()).unwrap();
        // A second process on the same directory would search stale vectors: refused.
        let Err(second) = SqliteStore::open(dir.path()) else {
            panic!("a second open of a locked store succeeded");
        };
        assert!(second.to_string().contains("another process"), "{second}");
        let vs = store.create_store(ME, "kept", &Map::new()).unwrap();
        let done = store.put_file(ME, "done.txt", "assistants", b"x").unwrap();
        let pending = store
            .put_file(ME, "pending.txt", "assistants", b"y")
            .unwrap();
        store
            .attach(ME, &vs.id, &[attach(&done.id, json!({}))])
            .unwrap();
        let j = store.claim("w", 1, LEASE).unwrap();
        store
            .complete(&j[0], &[chunk("persistent words", unit(0, 0.0))])
            .unwrap();
        store
            .attach(ME, &vs.id, &[attach(&pending.id, json!({}))])
            .unwrap();
        // A worker takes the job with a short lease, then dies.
        assert_eq!(
            store
                .claim("dead", 1, Duration::from_millis(1))
                .unwrap()
                .len(),
            1
        );
        (vs, pending)
    };
    // Bytes with no row (a crash between the write and the insert) are swept.
    std::fs::write(dir.path().join("files").join("file-orphan"), b"junk").unwrap();
    std::thread::sleep(Duration::from_millis(5)); // let the 1 ms lease lapse
    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(!dir.path().join("files").join("file-orphan").exists());
    assert_eq!(store.store(ME, &vs.id).unwrap().name, "kept");
    assert_eq!(
        store
            .bm25(&vs.id, &analyze_query("persistent"), 5, None)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store.dense(&vs.id, &unit(0, 0.0), 5, None).unwrap().len(),
        1
    );
    let retry = store.claim("alive", 5, LEASE).unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].file_id, file.id);
}

#[test]
fn deleting_a_store_drops_its_chunks_and_index_but_keeps_the_files() {
    let dir = tempfile::tempdir().unwrap();
    contract::deleting_a_store_drops_its_chunks_and_index_but_keeps_the_files(
        &SqliteStore::open(dir.path()).unwrap(),
    );
}

#[test]
fn a_batch_counts_its_files_by_status_and_cancelling_makes_late_work_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    contract::a_batch_counts_its_files_by_status_and_cancelling_makes_late_work_a_no_op(
        &SqliteStore::open(dir.path()).unwrap(),
    );
}

#[test]
fn vectors_kept_up_to_date_in_memory_equal_a_fresh_load_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let q = unit(0, 0.3);
    let (vs, before) = {
        let store = SqliteStore::open(dir.path()).unwrap();
        let vs = store.create_store(ME, "cached", &Map::new()).unwrap();
        let files: Vec<String> = (0..12)
            .map(|i| {
                store
                    .put_file(ME, &format!("{i}.txt"), "assistants", b"x")
                    .unwrap()
                    .id
            })
            .collect();
        let attach_all = |ids: &[String]| {
            let a: Vec<Attach> = ids.iter().map(|id| attach(id, json!({}))).collect();
            store.attach(ME, &vs.id, &a).unwrap();
        };
        let ingest = |round: usize| {
            for (n, job) in store
                .claim("w", 100, LEASE)
                .unwrap()
                .into_iter()
                .enumerate()
            {
                let w = (round * 7 + n) as f32 / 20.0;
                if n % 5 == 4 {
                    let e = LastError {
                        code: "invalid_file".into(),
                        message: "x".into(),
                    };
                    store.fail(&job, &e).unwrap();
                } else {
                    let chunks: Vec<NewChunk> = (0..3)
                        .map(|k| chunk("words", unit(k % 3, w + k as f32 / 10.0)))
                        .collect();
                    store.complete(&job, &chunks).unwrap();
                }
            }
        };
        attach_all(&files);
        ingest(0);
        // The first search loads the vectors; every write after it updates them in place.
        assert!(!store.dense(&vs.id, &q, 100, None).unwrap().is_empty());
        attach_all(&files[..6]);
        ingest(1);
        store.detach(ME, &vs.id, &files[7]).unwrap();
        store.delete_file(ME, &files[8]).unwrap();
        attach_all(&files[9..]);
        ingest(2);
        let after = store.dense(&vs.id, &q, 100, None).unwrap();
        (vs, after)
    };
    let reopened = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(reopened.dense(&vs.id, &q, 100, None).unwrap(), before);
    assert!(before.len() > 10);
}
