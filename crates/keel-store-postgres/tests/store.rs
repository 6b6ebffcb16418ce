//! The PostgreSQL store against a real PostgreSQL with pgvector: the contract every store
//! keeps, then what sharing a database between replicas adds, and BM25 scores equal to the
//! embedded store's (FTS5's) on the same chunks.
//!
//! Each test runs in a database of its own on the server `KEEL_TEST_DATABASE_URL` names.
//! They are `#[ignore]`d for a plain `cargo test`; `make test-rust` starts PostgreSQL
//! (tests/pg_server.py) and runs them with `--ignored`.

#[path = "../../keel-store-sqlite/tests/contract/mod.rs"]
mod contract;

use std::time::Duration;

use contract::{attach, chunk, unit, LEASE, ME};
use keel_rag::analyze::analyze_query;
use keel_rag::RagStore;
use keel_store_postgres::PgStore;
use keel_store_sqlite::SqliteStore;
use serde_json::{json, Map};
use sqlx::{Connection, Executor, PgConnection};
use tokio::runtime::Runtime;

const NEEDS_PG: &str =
    "KEEL_TEST_DATABASE_URL is unset: `make test-rust` starts PostgreSQL and sets it";

/// A new, empty database on the test server, and its URL.
fn fresh_database(rt: &Runtime) -> String {
    let url = std::env::var("KEEL_TEST_DATABASE_URL").expect(NEEDS_PG);
    let name = format!("keel_test_{}", uuid::Uuid::now_v7().simple());
    rt.block_on(async {
        let mut admin = PgConnection::connect(&url).await.unwrap();
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
    });
    let (base, _) = url.rsplit_once('/').expect("a URL ending in /database");
    format!("{base}/{name}")
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `test` against a store on a fresh database. The store's calls block on `rt`, from
/// this (non-runtime) thread, as they do on Keel's blocking pool.
fn with_store(test: impl FnOnce(&dyn RagStore)) {
    let rt = runtime();
    let url = fresh_database(&rt);
    let store = rt.block_on(PgStore::connect(&url, 4)).unwrap();
    test(&store);
}

#[test]
#[ignore = "needs PostgreSQL: make test-rust"]
fn files_are_scoped_to_their_owner_and_paged_newest_first() {
    with_store(contract::files_are_scoped_to_their_owner_and_paged_newest_first);
}

#[test]
#[ignore = "needs PostgreSQL: make test-rust"]
fn ingestion_replaces_chunks_whole_and_both_legs_find_them() {
    with_store(contract::ingestion_replaces_chunks_whole_and_both_legs_find_them);
}

#[test]
#[ignore = "needs PostgreSQL: make test-rust"]
fn filters_run_inside_both_legs_with_the_same_meaning_as_in_memory() {
    with_store(contract::filters_run_inside_both_legs_with_the_same_meaning_as_in_memory);
}

#[test]
#[ignore = "needs PostgreSQL: make test-rust"]
fn deleting_a_store_drops_its_chunks_and_index_but_keeps_the_files() {
    with_store(contract::deleting_a_store_drops_its_chunks_and_index_but_keeps_the_files);
}

#[test]
#[ignore = "needs PostgreSQL: make test-rust"]
fn a_batch_counts_its_files_by_status_and_cancelling_makes_late_work_a_no_op() {
    with_store(contract::a_batch_counts_its_files_by_status_and_cancelling_makes_late_work_a_no_op);
}

#[test]
#[ignore = "needs PostgreSQL: make test-rust"]
fn two_replicas_share_files_queue_and_search_and_migrate_once() {
    let rt = runtime();
    let url = fresh_database(&rt);
    // Both "replicas" start together: the migration runs once, under sqlx's lock.
    let (a, b) =
        rt.block_on(async { tokio::join!(PgStore::connect(&url, 4), PgStore::connect(&url, 4)) });
    let (a, b) = (a.unwrap(), b.unwrap());

    let vs = a.create_store(ME, "shared", &Map::new()).unwrap();
    let files: Vec<String> = (0..6)
        .map(|i| {
            a.put_file(ME, &format!("{i}.txt"), "assistants", b"x")
                .unwrap()
                .id
        })
        .collect();
    let attaches: Vec<_> = files.iter().map(|f| attach(f, json!({}))).collect();
    b.attach(ME, &vs.id, &attaches).unwrap();

    // Claims from both replicas at once never overlap, and between them take every file.
    let (ja, jb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.claim("a", 3, LEASE).unwrap());
        let tb = s.spawn(|| b.claim("b", 3, LEASE).unwrap());
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let mut taken: Vec<&String> = ja.iter().chain(&jb).map(|j| &j.file_id).collect();
    taken.sort();
    taken.dedup();
    assert_eq!(taken.len(), 6, "{ja:?} {jb:?}");
    assert!(a.claim("a", 10, LEASE).unwrap().is_empty());

    // A file ingested through one replica is searchable through the other.
    for (n, j) in ja.iter().enumerate() {
        let text = format!("alpha document {n}");
        a.complete(j, &[chunk(&text, unit(0, n as f32 / 10.0))])
            .unwrap();
    }
    for (n, j) in jb.iter().enumerate() {
        let text = format!("beta document {n}");
        b.complete(j, &[chunk(&text, unit(1, n as f32 / 10.0))])
            .unwrap();
    }
    let hits = b.bm25(&vs.id, &analyze_query("alpha"), 10, None).unwrap();
    assert_eq!(hits.len(), ja.len());
    let dense = a.dense(&vs.id, &unit(1, 0.0), 10, None).unwrap();
    let top = a.chunks(&[dense[0].0]).unwrap();
    assert!(top[0].text.starts_with("beta"), "{top:?}");
    assert_eq!(b.store(ME, &vs.id).unwrap().file_counts.completed, 6);
    assert_eq!(a.stats().unwrap().1, 6);

    // A replica that dies holding a lease: once it runs out, the other takes the file.
    let late = a.put_file(ME, "late.txt", "assistants", b"x").unwrap();
    a.attach(ME, &vs.id, &[attach(&late.id, json!({}))])
        .unwrap();
    assert_eq!(
        a.claim("dying", 1, Duration::from_millis(1)).unwrap().len(),
        1
    );
    std::thread::sleep(Duration::from_millis(20)); // let the 1 ms lease lapse
    let retry = b.claim("b", 1, LEASE).unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].file_id, late.id);
}

#[test]
#[ignore = "needs PostgreSQL: make test-rust"]
fn bm25_scores_equal_the_embedded_stores_fts5_scores() {
    let texts = [
        "Sessions keep cookies signed with the secret key.",
        "Blueprints group routes and templates of one part of an app.",
        "The session cookie is signed; the user can read it but not change it.",
        "Templates are rendered with Jinja, escaping HTML by default.",
        "Configure the secret key before using sessions or flashing messages.",
        "A blueprint registers its routes on the app when it is registered.",
        "Cookies, cookies, cookies: set them on the response object.",
    ];
    let dir = tempfile::tempdir().unwrap();
    let embedded = SqliteStore::open(dir.path()).unwrap();
    let rt = runtime();
    let url = fresh_database(&rt);
    let shared = rt.block_on(PgStore::connect(&url, 4)).unwrap();
    let stores: [&dyn RagStore; 2] = [&embedded, &shared];
    let ids: Vec<String> = stores
        .iter()
        .map(|s| {
            let vs = s.create_store(ME, "parity", &Map::new()).unwrap();
            for (i, t) in texts.iter().enumerate() {
                let f = s
                    .put_file(ME, &format!("{i}.txt"), "assistants", b"x")
                    .unwrap();
                s.attach(ME, &vs.id, &[attach(&f.id, json!({}))]).unwrap();
                let job = s.claim("w", 1, LEASE).unwrap().remove(0);
                assert!(s.complete(&job, &[chunk(t, unit(i % 3, 0.0))]).unwrap());
            }
            vs.id
        })
        .collect();
    for q in [
        "signed session cookies",
        "blueprint routes",
        "jinja",
        "secret key app",
        "nothing",
    ] {
        let terms = analyze_query(q);
        let ranked: Vec<Vec<(String, f64)>> = stores
            .iter()
            .zip(&ids)
            .map(|(s, vs)| {
                let hits = s.bm25(vs, &terms, 10, None).unwrap();
                let ids: Vec<i64> = hits.iter().map(|h| h.0).collect();
                let views = s.chunks(&ids).unwrap();
                views
                    .into_iter()
                    .zip(hits)
                    .map(|(v, h)| (v.text, h.1))
                    .collect()
            })
            .collect();
        assert_eq!(ranked[0].len(), ranked[1].len(), "{q}: {ranked:?}");
        for ((text_a, score_a), (text_b, score_b)) in ranked[0].iter().zip(&ranked[1]) {
            assert_eq!(text_a, text_b, "{q}: {ranked:?}");
            assert!(
                (score_a - score_b).abs() <= 1e-6 * score_a.abs().max(1.0),
                "{q}: {score_a} vs {score_b}"
            );
        }
    }
}
