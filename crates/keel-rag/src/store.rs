//! The one interface both storage backends implement: the embedded SQLite store and
//! PostgreSQL with pgvector. The RAG service and the HTTP routes see only this trait, so the
//! backend is a startup choice (`DATABASE_URL` set or not) and nothing above it changes.
//!
//! The methods are synchronous: SQLite's API is, and callers already run storage work on a
//! blocking pool so that it never stalls the async runtime. An async backend answers each
//! call by blocking that pool thread on its own runtime.
//!
//! Every read and write of a user's object takes its owner; another owner's object is
//! [`StoreError::NotFound`], as a missing one is.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::filter::{Attributes, Filter};
use crate::records::{
    Attach, BatchRecord, ChunkView, FileCounts, FileRecord, IngestJob, IngestStatus, LastError,
    ListQuery, NewChunk, Page, StoreError, StoreFileRecord, StoreRecord,
};

pub trait RagStore: Send + Sync {
    // ---- files ----

    /// Keeps an uploaded file's bytes; the record exists only once the bytes are safe.
    fn put_file(
        &self,
        owner: &str,
        filename: &str,
        purpose: &str,
        bytes: &[u8],
    ) -> Result<FileRecord, StoreError>;
    fn file(&self, owner: &str, id: &str) -> Result<FileRecord, StoreError>;
    fn file_bytes(&self, owner: &str, id: &str) -> Result<Vec<u8>, StoreError>;
    fn list_files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        q: &ListQuery,
    ) -> Result<Page<FileRecord>, StoreError>;
    /// Deletes a file, its bytes and its chunks in every store.
    fn delete_file(&self, owner: &str, id: &str) -> Result<(), StoreError>;

    // ---- vector stores ----

    fn create_store(
        &self,
        owner: &str,
        name: &str,
        metadata: &Map<String, Value>,
    ) -> Result<StoreRecord, StoreError>;
    fn store(&self, owner: &str, id: &str) -> Result<StoreRecord, StoreError>;
    /// Whether `owner` has the store: the search path's check, without the file counts.
    fn check_store(&self, owner: &str, id: &str) -> Result<(), StoreError>;
    fn list_stores(&self, owner: &str, q: &ListQuery) -> Result<Page<StoreRecord>, StoreError>;
    fn update_store(
        &self,
        owner: &str,
        id: &str,
        name: Option<&str>,
        metadata: Option<&Map<String, Value>>,
    ) -> Result<StoreRecord, StoreError>;
    /// Deletes a store, its attachments, chunks and index (the files themselves stay).
    fn delete_store(&self, owner: &str, id: &str) -> Result<(), StoreError>;
    /// Attachments by status across every store, and chunks stored: what the gauges show.
    fn stats(&self) -> Result<(FileCounts, u64), StoreError>;

    // ---- files in stores ----

    /// Attaches files (or re-attaches them: a new generation, status `in_progress`; the old
    /// chunks stay searchable until the new ones replace them). One unknown file attaches none.
    fn attach(
        &self,
        owner: &str,
        store_id: &str,
        files: &[Attach],
    ) -> Result<Vec<StoreFileRecord>, StoreError>;
    fn store_file(
        &self,
        owner: &str,
        store_id: &str,
        file_id: &str,
    ) -> Result<StoreFileRecord, StoreError>;
    fn list_store_files(
        &self,
        owner: &str,
        store_id: &str,
        status: Option<IngestStatus>,
        q: &ListQuery,
    ) -> Result<Page<StoreFileRecord>, StoreError>;
    fn set_attributes(
        &self,
        owner: &str,
        store_id: &str,
        file_id: &str,
        attributes: &Attributes,
    ) -> Result<StoreFileRecord, StoreError>;
    /// Removes a file from a store with its chunks (the file itself stays).
    fn detach(&self, owner: &str, store_id: &str, file_id: &str) -> Result<(), StoreError>;

    // ---- file batches ----

    /// Attaches `files` as one batch, atomically: every file is queued, or none is.
    fn create_batch(
        &self,
        owner: &str,
        store_id: &str,
        files: &[Attach],
    ) -> Result<BatchRecord, StoreError>;
    fn batch(&self, owner: &str, store_id: &str, batch_id: &str)
        -> Result<BatchRecord, StoreError>;
    /// Cancels the batch: its files still queued or being ingested become `cancelled`.
    fn cancel_batch(
        &self,
        owner: &str,
        store_id: &str,
        batch_id: &str,
    ) -> Result<BatchRecord, StoreError>;
    fn list_batch_files(
        &self,
        owner: &str,
        store_id: &str,
        batch_id: &str,
        status: Option<IngestStatus>,
        q: &ListQuery,
    ) -> Result<Page<StoreFileRecord>, StoreError>;

    // ---- the ingestion queue ----

    /// Leases up to `n` in_progress files whose lease is free or has run out, oldest first.
    /// Two workers, in one process or in two replicas, never lease the same file.
    fn claim(&self, worker: &str, n: usize, lease: Duration) -> Result<Vec<IngestJob>, StoreError>;
    /// Called once at startup: voids the leases that this process's previous run held and can
    /// no longer finish (a store shared by replicas leaves them to run out).
    fn release_leases(&self) -> Result<(), StoreError>;
    /// The raw bytes of a job's file.
    fn job_bytes(&self, job: &IngestJob) -> Result<Vec<u8>, StoreError>;
    /// Replaces the file's chunks with `chunks` and marks it completed, in one transaction.
    /// False (and nothing written) when the attachment is gone or was re-attached since.
    fn complete(&self, job: &IngestJob, chunks: &[NewChunk]) -> Result<bool, StoreError>;
    /// Marks the file failed and removes its earlier chunks, so that a failed file is never
    /// half-searchable. False when the job is stale.
    fn fail(&self, job: &IngestJob, error: &LastError) -> Result<bool, StoreError>;

    // ---- search ----

    /// The `k` chunks most similar to `query` (cosine; vectors are normalised), best first,
    /// among those whose file passes `filter`.
    fn dense(
        &self,
        store_id: &str,
        query: &[f32],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<(i64, f32)>, StoreError>;
    /// The `k` best BM25 matches (k1 = 1.2, b = 0.75, as FTS5 and Lucene) for the analyzed
    /// query `terms`, best first, among those whose file passes `filter`.
    fn bm25(
        &self,
        store_id: &str,
        terms: &[String],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<(i64, f64)>, StoreError>;
    /// The chunks with these ids, in the order given, with their file's name and attributes;
    /// ids deleted since are left out.
    fn chunks(&self, ids: &[i64]) -> Result<Vec<ChunkView>, StoreError>;
}
