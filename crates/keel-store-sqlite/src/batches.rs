//! File batches: many files attached by one request, followed and cancelled together.
//!
//! A batch only records which files it attached. Their status is the attachment's own row,
//! so the counts are always current and a later re-attach or detach shows in them. Cancelling
//! moves the batch's queued files to `cancelled` with a new generation, which turns a worker's
//! late `complete` into a no-op.

use keel_rag::records::{
    Attach, BatchRecord, FileCounts, IngestStatus, ListQuery, Page, StoreError, StoreFileRecord,
};
use rusqlite::{params, OptionalExtension, Row};

use crate::{attach_in, backend, new_id, not_found, now, SqliteStore};

const BATCH_SELECT: &str = "SELECT b.id, b.store_id, b.created_at, b.cancelled, \
    count(f.file_id) FILTER (WHERE f.status = 'in_progress'), \
    count(f.file_id) FILTER (WHERE f.status = 'completed'), \
    count(f.file_id) FILTER (WHERE f.status = 'failed'), \
    count(bf.file_id) - count(f.file_id) FILTER (WHERE f.status <> 'cancelled') \
    FROM file_batches b JOIN stores s ON s.id = b.store_id \
    LEFT JOIN batch_files bf ON bf.batch_id = b.id \
    LEFT JOIN store_files f ON f.store_id = b.store_id AND f.file_id = bf.file_id";

/// A file detached since the batch attached it counts as cancelled: the batch's work on it
/// will not happen.
fn batch_row(row: &Row) -> rusqlite::Result<BatchRecord> {
    Ok(BatchRecord {
        id: row.get(0)?,
        store_id: row.get(1)?,
        created_at: row.get(2)?,
        cancelled: row.get::<_, i64>(3)? != 0,
        file_counts: FileCounts {
            in_progress: row.get::<_, i64>(4)? as u64,
            completed: row.get::<_, i64>(5)? as u64,
            failed: row.get::<_, i64>(6)? as u64,
            cancelled: row.get::<_, i64>(7)? as u64,
        },
    })
}

/// Attaches `files` to the store as one batch, in one transaction: every file is queued,
/// or (one unknown file) none is.
pub(crate) fn create(
    store: &SqliteStore,
    owner: &str,
    store_id: &str,
    files: &[Attach],
) -> Result<BatchRecord, StoreError> {
    let id = new_id("vsfb_");
    {
        let mut conn = store.conn();
        let tx = conn.transaction().map_err(backend)?;
        attach_in(&tx, owner, store_id, files)?;
        tx.execute(
            "INSERT INTO file_batches (id, store_id, created_at) VALUES (?1, ?2, ?3)",
            params![id, store_id, now()],
        )
        .map_err(backend)?;
        {
            // The same file twice in one request is one attachment.
            let mut member = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO batch_files (batch_id, file_id) VALUES (?1, ?2)",
                )
                .map_err(backend)?;
            for a in files {
                member.execute(params![id, a.file_id]).map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)?;
    }
    get(store, owner, store_id, &id)
}

pub(crate) fn get(
    store: &SqliteStore,
    owner: &str,
    store_id: &str,
    batch_id: &str,
) -> Result<BatchRecord, StoreError> {
    store
        .conn()
        .query_row(
            &format!(
                "{BATCH_SELECT} WHERE b.id = ?1 AND b.store_id = ?2 AND s.owner = ?3 GROUP BY b.id"
            ),
            params![batch_id, store_id, owner],
            batch_row,
        )
        .optional()
        .map_err(backend)?
        .ok_or_else(|| not_found("file batch", batch_id))
}

/// Cancels the batch: its files still queued or being ingested become `cancelled`, and
/// their old chunks (from an earlier attach) stay as they were.
pub(crate) fn cancel(
    store: &SqliteStore,
    owner: &str,
    store_id: &str,
    batch_id: &str,
) -> Result<BatchRecord, StoreError> {
    get(store, owner, store_id, batch_id)?;
    {
        let mut conn = store.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.execute(
            "UPDATE store_files SET status = 'cancelled', generation = generation + 1, \
             lease_owner = NULL, lease_until = NULL \
             WHERE store_id = ?1 AND status = 'in_progress' \
             AND file_id IN (SELECT file_id FROM batch_files WHERE batch_id = ?2)",
            params![store_id, batch_id],
        )
        .map_err(backend)?;
        tx.execute(
            "UPDATE file_batches SET cancelled = 1 WHERE id = ?1",
            [batch_id],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    get(store, owner, store_id, batch_id)
}

/// The batch's files that are still attached, by status as the store's file list is.
pub(crate) fn list_files(
    store: &SqliteStore,
    owner: &str,
    store_id: &str,
    batch_id: &str,
    status: Option<IngestStatus>,
    q: &ListQuery,
) -> Result<Page<StoreFileRecord>, StoreError> {
    get(store, owner, store_id, batch_id)?;
    store.page_store_files(
        "f.store_id = ?1 AND f.file_id IN (SELECT file_id FROM batch_files WHERE batch_id = ?2)"
            .into(),
        vec![store_id.to_owned().into(), batch_id.to_owned().into()],
        status,
        q,
    )
}
