//! What every [`RagStore`] must do, written once and run against each backend: the
//! embedded store's tests call these with a fresh SQLite folder, the PostgreSQL store's with
//! a fresh database (keel-store-postgres/tests/store.rs includes this file).

#![allow(dead_code)]

use std::time::Duration;

use keel_rag::analyze::analyze_query;
use keel_rag::filter::{parse_attributes, Filter};
use keel_rag::records::{Attach, IngestStatus, LastError, ListQuery, NewChunk, StoreError};
use keel_rag::{Attributes, ChunkStrategy, RagStore};
use serde_json::{json, Map, Value};

pub const ME: &str = "key-aaaa";
pub const OTHER: &str = "key-bbbb";

pub fn attrs(v: Value) -> Attributes {
    parse_attributes(&v, "attributes").unwrap()
}

pub fn attach(file_id: &str, a: Value) -> Attach {
    Attach {
        file_id: file_id.into(),
        attributes: attrs(a),
        strategy: ChunkStrategy::auto(254),
    }
}

/// A unit vector along axis `i` (of 4), nudged towards axis 3 by `w`.
pub fn unit(i: usize, w: f32) -> Vec<f32> {
    let mut v = [0.0f32; 4];
    v[i] = 1.0;
    v[3] += w;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

pub fn chunk(text: &str, embedding: Vec<f32>) -> NewChunk {
    NewChunk {
        text: text.into(),
        headings: String::new(),
        tokens: 10,
        embedding,
    }
}

pub const LEASE: Duration = Duration::from_secs(30);

pub fn files_are_scoped_to_their_owner_and_paged_newest_first(store: &dyn RagStore) {
    let ids: Vec<String> = (0..5)
        .map(|i| {
            store
                .put_file(ME, &format!("f{i}.txt"), "assistants", b"hello")
                .unwrap()
                .id
        })
        .collect();
    store
        .put_file(OTHER, "theirs.txt", "assistants", b"x")
        .unwrap();
    assert_eq!(store.file_bytes(ME, &ids[0]).unwrap(), b"hello");
    assert!(matches!(
        store.file(OTHER, &ids[0]),
        Err(StoreError::NotFound { .. })
    ));

    let q = ListQuery {
        limit: 2,
        ..Default::default()
    };
    let first = store.list_files(ME, None, &q).unwrap();
    assert!(first.has_more);
    assert_eq!(
        first.items.iter().map(|f| &f.id).collect::<Vec<_>>(),
        [&ids[4], &ids[3]]
    );
    let next = store
        .list_files(
            ME,
            None,
            &ListQuery {
                after: Some(ids[3].clone()),
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        next.items.iter().map(|f| &f.id).collect::<Vec<_>>(),
        [&ids[2], &ids[1], &ids[0]]
    );
    assert!(!next.has_more);
    let back = store
        .list_files(
            ME,
            None,
            &ListQuery {
                before: Some(ids[1].clone()),
                limit: 2,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        back.items.iter().map(|f| &f.id).collect::<Vec<_>>(),
        [&ids[3], &ids[2]]
    );

    store.delete_file(ME, &ids[0]).unwrap();
    assert!(store.file(ME, &ids[0]).is_err());
    assert!(store.file_bytes(ME, &ids[0]).is_err());
    assert!(
        store.delete_file(OTHER, &ids[1]).is_err(),
        "another owner cannot delete it"
    );
}

pub fn ingestion_replaces_chunks_whole_and_both_legs_find_them(store: &dyn RagStore) {
    let vs = store.create_store(ME, "docs", &Map::new()).unwrap();
    let a = store.put_file(ME, "a.md", "assistants", b"...").unwrap();
    let b = store.put_file(ME, "b.md", "assistants", b"...").unwrap();
    store
        .attach(
            ME,
            &vs.id,
            &[attach(&a.id, json!({})), attach(&b.id, json!({}))],
        )
        .unwrap();
    assert_eq!(store.store(ME, &vs.id).unwrap().file_counts.in_progress, 2);

    let jobs = store.claim("w1", 10, LEASE).unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(
        store.claim("w2", 10, LEASE).unwrap().is_empty(),
        "leased jobs are not handed out twice"
    );
    let ja = jobs.iter().find(|j| j.file_id == a.id).unwrap();
    let jb = jobs.iter().find(|j| j.file_id == b.id).unwrap();
    assert!(store
        .complete(
            ja,
            &[
                chunk("Sessions keep cookies signed.", unit(0, 0.0)),
                chunk("Blueprints group routes.", unit(1, 0.0))
            ]
        )
        .unwrap());
    assert!(store
        .complete(jb, &[chunk("Templates use Jinja.", unit(2, 0.0))])
        .unwrap());
    let counts = store.store(ME, &vs.id).unwrap().file_counts;
    assert_eq!((counts.completed, counts.in_progress), (2, 0));

    let dense = store.dense(&vs.id, &unit(1, 0.1), 3, None).unwrap();
    let top = store.chunks(&[dense[0].0]).unwrap();
    assert_eq!(top[0].text, "Blueprints group routes.");
    let bm25 = store
        .bm25(&vs.id, &analyze_query("signed cookie sessions"), 5, None)
        .unwrap();
    assert_eq!(bm25.len(), 1);
    assert_eq!(store.chunks(&[bm25[0].0]).unwrap()[0].file_id, a.id);

    // Re-attach a: a new generation; the old job's result is now stale and ignored.
    store
        .attach(ME, &vs.id, &[attach(&a.id, json!({}))])
        .unwrap();
    assert!(!store.complete(ja, &[chunk("stale", unit(0, 0.0))]).unwrap());
    // Until the new result lands, the old chunks still answer.
    assert_eq!(
        store
            .bm25(&vs.id, &analyze_query("blueprints"), 5, None)
            .unwrap()
            .len(),
        1
    );
    let again = store.claim("w1", 10, LEASE).unwrap();
    assert_eq!(again.len(), 1);
    assert!(store
        .complete(&again[0], &[chunk("Sessions, rewritten.", unit(0, 0.0))])
        .unwrap());
    assert!(
        store
            .bm25(&vs.id, &analyze_query("blueprints"), 5, None)
            .unwrap()
            .is_empty(),
        "no stale tail"
    );
    assert_eq!(
        store
            .bm25(&vs.id, &analyze_query("sessions"), 5, None)
            .unwrap()
            .len(),
        1,
        "no duplicates"
    );
    assert_eq!(
        store.dense(&vs.id, &unit(0, 0.0), 10, None).unwrap().len(),
        2
    );

    // Failing a re-attached file removes its chunks: never half-searchable.
    store
        .attach(ME, &vs.id, &[attach(&b.id, json!({}))])
        .unwrap();
    let jb2 = store.claim("w1", 10, LEASE).unwrap();
    let err = LastError {
        code: "invalid_file".into(),
        message: "no text".into(),
    };
    assert!(store.fail(&jb2[0], &err).unwrap());
    let rec = store.store_file(ME, &vs.id, &b.id).unwrap();
    assert_eq!(rec.status, IngestStatus::Failed);
    assert_eq!(rec.last_error, Some(err));
    assert!(store
        .bm25(&vs.id, &analyze_query("jinja templates"), 5, None)
        .unwrap()
        .is_empty());

    // Deleting the file removes its chunks from the store.
    store.delete_file(ME, &a.id).unwrap();
    assert!(store
        .dense(&vs.id, &unit(0, 0.0), 10, None)
        .unwrap()
        .is_empty());
    assert!(store
        .bm25(&vs.id, &analyze_query("sessions"), 5, None)
        .unwrap()
        .is_empty());
}

pub fn filters_run_inside_both_legs_with_the_same_meaning_as_in_memory(store: &dyn RagStore) {
    let vs = store.create_store(ME, "", &Map::new()).unwrap();
    let attr_sets = [
        json!({"lang": "en", "year": 2024, "draft": false}),
        json!({"lang": "de", "year": 2019}),
        json!({"lang": "en", "year": "2024", "draft": true}),
        json!({}),
        json!({"lang": "fr", "year": 2024.5, "k\u{e9}y": "x"}),
    ];
    let mut files = Vec::new();
    for (i, a) in attr_sets.iter().enumerate() {
        let f = store
            .put_file(ME, &format!("{i}.txt"), "assistants", b".")
            .unwrap();
        store
            .attach(ME, &vs.id, &[attach(&f.id, a.clone())])
            .unwrap();
        files.push(f.id);
    }
    // Many chunks per file, all matching the query, so a post-filter on the top hits would
    // return too few.
    for job in store.claim("w", 10, LEASE).unwrap() {
        let chunks: Vec<NewChunk> = (0..30)
            .map(|k| chunk(&format!("routing guide part {k}"), unit(k % 3, 0.2)))
            .collect();
        store.complete(&job, &chunks).unwrap();
    }
    let filters = [
        json!({"type": "eq", "key": "lang", "value": "en"}),
        json!({"type": "ne", "key": "lang", "value": "en"}),
        json!({"type": "gt", "key": "year", "value": 2020}),
        json!({"type": "lte", "key": "year", "value": 2024}),
        json!({"type": "in", "key": "lang", "value": ["de", "fr"]}),
        json!({"type": "nin", "key": "lang", "value": ["de", "fr"]}),
        json!({"type": "eq", "key": "draft", "value": false}),
        json!({"type": "eq", "key": "year", "value": "2024"}),
        json!({"type": "eq", "key": "k\u{e9}y", "value": "x"}),
        json!({"type": "or", "filters": [{"type": "eq", "key": "lang", "value": "de"}, {"type": "and", "filters": [{"type": "eq", "key": "lang", "value": "en"}, {"type": "eq", "key": "draft", "value": true}]}]}),
    ];
    for f in filters {
        let filter = Filter::parse(&f, "filters").unwrap();
        let want: Vec<&String> = files
            .iter()
            .zip(&attr_sets)
            .filter(|(_, a)| filter.matches(&attrs((*a).clone())))
            .map(|(id, _)| id)
            .collect();
        for leg in ["dense", "bm25"] {
            let hits: Vec<i64> = if leg == "dense" {
                store
                    .dense(&vs.id, &unit(0, 0.0), 200, Some(&filter))
                    .unwrap()
                    .into_iter()
                    .map(|h| h.0)
                    .collect()
            } else {
                store
                    .bm25(&vs.id, &analyze_query("routing guide"), 200, Some(&filter))
                    .unwrap()
                    .into_iter()
                    .map(|h| h.0)
                    .collect()
            };
            assert_eq!(hits.len(), 30 * want.len(), "{leg} {f}");
            let views = store.chunks(&hits).unwrap();
            assert!(
                views.iter().all(|v| want.contains(&&v.file_id)),
                "{leg} {f}"
            );
        }
    }
}

pub fn deleting_a_store_drops_its_chunks_and_index_but_keeps_the_files(store: &dyn RagStore) {
    let vs = store.create_store(ME, "gone", &Map::new()).unwrap();
    let f = store.put_file(ME, "a.txt", "assistants", b"x").unwrap();
    store
        .attach(ME, &vs.id, &[attach(&f.id, json!({}))])
        .unwrap();
    let j = store.claim("w", 1, LEASE).unwrap();
    store
        .complete(&j[0], &[chunk("words", unit(0, 0.0))])
        .unwrap();
    assert!(store.delete_store(OTHER, &vs.id).is_err());
    store.delete_store(ME, &vs.id).unwrap();
    assert!(store.store(ME, &vs.id).is_err());
    assert!(store.file(ME, &f.id).is_ok());
    assert!(store
        .attach(ME, &vs.id, &[attach(&f.id, json!({}))])
        .is_err());
    assert!(store.claim("w", 5, LEASE).unwrap().is_empty());
}

pub fn a_batch_counts_its_files_by_status_and_cancelling_makes_late_work_a_no_op(
    store: &dyn RagStore,
) {
    let vs = store.create_store(ME, "batched", &Map::new()).unwrap();
    let ids: Vec<String> = (0..4)
        .map(|i| {
            store
                .put_file(ME, &format!("{i}.txt"), "assistants", b"words")
                .unwrap()
                .id
        })
        .collect();
    // An unknown file undoes the whole batch: nothing is attached.
    let mut with_unknown: Vec<Attach> = ids.iter().map(|id| attach(id, json!({}))).collect();
    with_unknown.push(attach("file-missing", json!({})));
    assert!(matches!(
        store.create_batch(ME, &vs.id, &with_unknown),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.store(ME, &vs.id).unwrap().file_counts.total(), 0);

    // The same file twice is one member.
    let mut files: Vec<Attach> = ids[..3].iter().map(|id| attach(id, json!({}))).collect();
    files.push(attach(&ids[0], json!({})));
    let batch = store.create_batch(ME, &vs.id, &files).unwrap();
    assert_eq!(batch.file_counts.in_progress, 3);
    assert_eq!(batch.file_counts.total(), 3);
    assert_eq!(batch.status(), "in_progress");
    assert!(matches!(
        store.batch(OTHER, &vs.id, &batch.id),
        Err(StoreError::NotFound { .. })
    ));

    let jobs = store.claim("w", 3, LEASE).unwrap();
    assert_eq!(jobs.len(), 3);
    let job = |id: &str| jobs.iter().find(|j| j.file_id == id).unwrap();
    assert!(store
        .complete(job(&ids[0]), &[chunk("done words", unit(0, 0.0))])
        .unwrap());
    let error = LastError {
        code: "invalid_file".into(),
        message: "bad".into(),
    };
    assert!(store.fail(job(&ids[1]), &error).unwrap());
    let cancelled = store.cancel_batch(ME, &vs.id, &batch.id).unwrap();
    assert_eq!(
        (
            cancelled.file_counts.completed,
            cancelled.file_counts.failed,
            cancelled.file_counts.cancelled,
            cancelled.file_counts.in_progress
        ),
        (1, 1, 1, 0)
    );
    assert_eq!(cancelled.status(), "cancelled");
    // The worker still holding the cancelled file finishes late: nothing changes.
    assert!(!store
        .complete(job(&ids[2]), &[chunk("late words", unit(1, 0.0))])
        .unwrap());
    assert!(store
        .bm25(&vs.id, &analyze_query("late"), 10, None)
        .unwrap()
        .is_empty());

    let failed = store
        .list_batch_files(
            ME,
            &vs.id,
            &batch.id,
            Some(IngestStatus::Failed),
            &ListQuery::default(),
        )
        .unwrap();
    assert_eq!(failed.items.len(), 1);
    assert_eq!(failed.items[0].file_id, ids[1]);
    // A file outside the batch is not listed under it.
    store
        .attach(ME, &vs.id, &[attach(&ids[3], json!({}))])
        .unwrap();
    let all = store
        .list_batch_files(ME, &vs.id, &batch.id, None, &ListQuery::default())
        .unwrap();
    assert_eq!(all.items.len(), 3);

    // Ten thousand files attach in one transaction and are all queued.
    let many: Vec<String> = (0..10_000)
        .map(|i| {
            store
                .put_file(ME, &format!("tiny-{i}.txt"), "assistants", b"t")
                .unwrap()
                .id
        })
        .collect();
    let files: Vec<Attach> = many.iter().map(|id| attach(id, json!({}))).collect();
    let big = store.create_batch(ME, &vs.id, &files).unwrap();
    assert_eq!(big.file_counts.in_progress, 10_000);
    // Deleting the store drops its batches with it.
    store.delete_store(ME, &vs.id).unwrap();
    assert!(store.batch(ME, &vs.id, &big.id).is_err());
}
