//! The embedded RAG store: what Keel keeps with nothing to start.
//!
//! Records live in one SQLite database (WAL, so a reader never waits on the writer and a
//! `kill -9` loses nothing committed); raw file bytes live beside it under `files/`, written
//! to a temporary name, synced and renamed before their row exists. Each vector store has its
//! own FTS5 table of the analyzer's terms (so BM25's statistics are the store's own), keyed by
//! the chunk's rowid. Dense search scans the store's vectors, held in memory and kept up to
//! date by every write: exactly below 20k vectors, in 8 bits with exact reranking above.
//!
//! A file's chunks are replaced in one transaction ([`SqliteStore::complete`]), so a search
//! sees a file's old chunks or its new ones, never a mix, and a crash mid-ingest leaves the
//! file `in_progress` for a worker to take again once its lease runs out.
//!
//! The API is synchronous; async callers run it on a blocking pool.

mod batches;
mod filter_sql;
mod vectors;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_rag::analyze::analyze;
use keel_rag::records::BatchRecord;
use keel_rag::records::{
    Attach, ChunkView, FileCounts, FileRecord, IngestJob, IngestStatus, LastError, ListQuery,
    NewChunk, Page, StoreError, StoreFileRecord, StoreRecord,
};
use keel_rag::{Attributes, ChunkStrategy, Filter, RagStore};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row, Transaction};
use serde_json::{Map, Value};

use vectors::StoreVectors;

/// The schema, one script per version: a database at version v runs the scripts after v,
/// each in its own transaction with the version it reaches.
const MIGRATIONS: [&str; 2] = [include_str!("schema.sql"), include_str!("schema_v2.sql")];

pub struct SqliteStore {
    /// Held open for the store's life: its exclusive lock keeps a second process out.
    _lock: fs::File,
    conn: Mutex<Connection>,
    files_dir: PathBuf,
    /// Loaded on a store's first dense search, then kept up to date by every write.
    vectors: Mutex<HashMap<String, Arc<RwLock<StoreVectors>>>>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A new id: a time-ordered UUIDv7, so id order is creation order and cursors are ids.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// The FTS5 table of a store. Store ids are made by [`new_id`], so they are safe in SQL;
/// anything else is refused rather than spliced.
fn fts_table(store_id: &str) -> Result<String, StoreError> {
    let hex = store_id.strip_prefix("vs_").unwrap_or("");
    if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(format!("fts_{hex}"))
    } else {
        Err(StoreError::NotFound {
            kind: "vector store",
            id: store_id.into(),
        })
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(backend)?
        .try_into()
        .map_err(backend)?;
    if version > MIGRATIONS.len() {
        return Err(backend(format!(
            "database schema version {version} is newer than this Keel ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, script) in MIGRATIONS.iter().enumerate().skip(version) {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {script} PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))
        .map_err(backend)?;
    }
    Ok(())
}

/// Takes `dir/lock` exclusively; the kernel drops the lock when the process ends, however
/// it ends, so a `kill -9` never leaves the directory locked.
fn lock_dir(dir: &Path) -> Result<fs::File, StoreError> {
    let path = dir.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| backend(format!("{}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(backend(format!(
            "another process is using {}: the embedded store serves one Keel process; give \
             each its own directory, or share PostgreSQL between replicas",
            dir.display()
        ))),
        Err(fs::TryLockError::Error(e)) => Err(backend(format!("{}: {e}", path.display()))),
    }
}

fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.into(),
    }
}

fn json_map(text: &str) -> Map<String, Value> {
    serde_json::from_str(text).unwrap_or_default()
}

impl SqliteStore {
    /// Opens (or creates) the store under `dir`.
    ///
    /// One process at a time: the vectors are cached in memory, so a second process writing
    /// the same database would leave this one's searches stale. Replicas share PostgreSQL.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let files_dir = dir.join("files");
        fs::create_dir_all(&files_dir)
            .map_err(|e| backend(format!("{}: {e}", files_dir.display())))?;
        let lock = lock_dir(dir)?;
        let conn = Connection::open(dir.join("rag.sqlite3")).map_err(backend)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(backend)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(backend)?;
        migrate(&conn)?;
        let store = Self {
            _lock: lock,
            conn: Mutex::new(conn),
            files_dir,
            vectors: Mutex::default(),
        };
        store.sweep_orphan_files()?;
        Ok(store)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes bytes on disk with no row: a crash between writing a file and inserting its
    /// row, or between deleting the row and the bytes.
    fn sweep_orphan_files(&self) -> Result<(), StoreError> {
        let entries = fs::read_dir(&self.files_dir).map_err(backend)?;
        let conn = self.conn();
        let mut known = conn
            .prepare("SELECT 1 FROM files WHERE id = ?1")
            .map_err(backend)?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan = name.ends_with(".tmp") || !known.exists([&name]).map_err(backend)?;
            if orphan {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    fn file_row(row: &Row) -> rusqlite::Result<FileRecord> {
        Ok(FileRecord {
            id: row.get(0)?,
            owner: row.get(1)?,
            filename: row.get(2)?,
            bytes: row.get::<_, i64>(3)? as u64,
            purpose: row.get(4)?,
            created_at: row.get(5)?,
        })
    }

    fn store_row(row: &Row) -> rusqlite::Result<StoreRecord> {
        Ok(StoreRecord {
            id: row.get(0)?,
            owner: row.get(1)?,
            name: row.get(2)?,
            metadata: json_map(&row.get::<_, String>(3)?),
            created_at: row.get(4)?,
            last_active_at: row.get(5)?,
            file_counts: FileCounts {
                in_progress: row.get::<_, i64>(6)? as u64,
                completed: row.get::<_, i64>(7)? as u64,
                failed: row.get::<_, i64>(8)? as u64,
                cancelled: row.get::<_, i64>(9)? as u64,
            },
            usage_bytes: row.get::<_, i64>(10)? as u64,
        })
    }

    const STORE_SELECT: &'static str =
        "SELECT s.id, s.owner, s.name, s.metadata, s.created_at, s.last_active_at, \
        (SELECT count(*) FROM store_files f WHERE f.store_id = s.id AND f.status = 'in_progress'), \
        (SELECT count(*) FROM store_files f WHERE f.store_id = s.id AND f.status = 'completed'), \
        (SELECT count(*) FROM store_files f WHERE f.store_id = s.id AND f.status = 'failed'), \
        (SELECT count(*) FROM store_files f WHERE f.store_id = s.id AND f.status = 'cancelled'), \
        (SELECT coalesce(sum(f.usage_bytes), 0) FROM store_files f WHERE f.store_id = s.id) \
        FROM stores s";

    fn store_file_row(row: &Row) -> rusqlite::Result<StoreFileRecord> {
        let code: Option<String> = row.get(7)?;
        let message: Option<String> = row.get(8)?;
        Ok(StoreFileRecord {
            store_id: row.get(0)?,
            file_id: row.get(1)?,
            status: IngestStatus::parse(&row.get::<_, String>(2)?).unwrap_or(IngestStatus::Failed),
            attributes: json_map(&row.get::<_, String>(3)?),
            strategy: ChunkStrategy {
                max_tokens: row.get(4)?,
                overlap_tokens: row.get(5)?,
            },
            generation: row.get(6)?,
            last_error: code.map(|code| LastError {
                code,
                message: message.unwrap_or_default(),
            }),
            usage_bytes: row.get::<_, i64>(9)? as u64,
            created_at: row.get(10)?,
        })
    }

    const STORE_FILE_SELECT: &'static str =
        "SELECT f.store_id, f.file_id, f.status, f.attributes, f.max_tokens, \
        f.overlap_tokens, f.generation, f.error_code, f.error_message, f.usage_bytes, f.created_at \
        FROM store_files f JOIN stores s ON s.id = f.store_id";

    /// A page of attachments matching `where_sql`, narrowed to `status` when given.
    fn page_store_files(
        &self,
        mut where_sql: String,
        mut args: Vec<SqlValue>,
        status: Option<IngestStatus>,
        q: &ListQuery,
    ) -> Result<Page<StoreFileRecord>, StoreError> {
        if let Some(s) = status {
            args.push(s.as_str().to_owned().into());
            where_sql.push_str(&format!(" AND f.status = ?{}", args.len()));
        }
        self.page_by(
            Self::STORE_FILE_SELECT,
            "f.file_id",
            where_sql,
            args,
            q,
            Self::store_file_row,
        )
    }

    /// Chunk ids of files in the store that pass `filter`, as an SQL condition on `c`.
    fn filter_clause(filter: Option<&Filter>, args: &mut Vec<SqlValue>) -> String {
        match filter {
            None => String::new(),
            Some(f) => {
                let mut sql = String::from(
                    " AND EXISTS (SELECT 1 FROM store_files sf WHERE sf.store_id = c.store_id AND sf.file_id = c.file_id AND ",
                );
                filter_sql::compile(f, "sf.attributes", &mut sql, args);
                sql.push(')');
                sql
            }
        }
    }

    /// The store's vectors, loaded on first use. Loading and inserting happen under the
    /// connection's lock, as every write's update does, so no write slips in between.
    fn vectors(&self, store_id: &str) -> Result<Arc<RwLock<StoreVectors>>, StoreError> {
        let conn = self.conn();
        let mut cache = self.vectors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = cache.get(store_id) {
            return Ok(v.clone());
        }
        let mut stmt = conn
            .prepare("SELECT id, embedding FROM chunks WHERE store_id = ?1 ORDER BY id")
            .map_err(backend)?;
        let rows = stmt
            .query_map([store_id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(backend)?;
        let mut v = StoreVectors::default();
        for row in rows {
            let (id, blob) = row.map_err(backend)?;
            v.push(id, &vectors::decode(&blob));
        }
        let loaded = Arc::new(RwLock::new(v));
        cache.insert(store_id.to_owned(), loaded.clone());
        Ok(loaded)
    }

    /// Applies a committed write to the store's cached vectors, if they are loaded. Called
    /// with the connection's lock held.
    fn update_vectors(&self, store_id: &str, removed: &[i64], added: &[(i64, &[f32])]) {
        let cache = self.vectors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = cache.get(store_id) {
            let mut v = v.write().unwrap_or_else(|p| p.into_inner());
            v.remove(removed);
            for (id, vector) in added {
                v.push(*id, vector);
            }
        }
    }

    fn forget_vectors(&self, store_id: &str) {
        self.vectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(store_id);
    }

    /// One page of `select` rows ordered by `id_column` (OpenAI's cursor lists).
    fn page_by<T>(
        &self,
        select: &str,
        id_column: &str,
        mut where_sql: String,
        mut args: Vec<SqlValue>,
        q: &ListQuery,
        map: fn(&Row) -> rusqlite::Result<T>,
    ) -> Result<Page<T>, StoreError> {
        let plan = q.plan();
        if let Some(c) = plan.cursor {
            args.push(c.to_owned().into());
            let op = if plan.descending { "<" } else { ">" };
            where_sql.push_str(&format!(" AND {id_column} {op} ?{}", args.len()));
        }
        let order = if plan.descending { "DESC" } else { "ASC" };
        args.push((plan.fetch as i64).into());
        let sql = format!(
            "{select} WHERE {where_sql} ORDER BY {id_column} {order} LIMIT ?{}",
            args.len()
        );
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql).map_err(backend)?;
        let items: Vec<T> = stmt
            .query_map(params_from_iter(args), map)
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        Ok(plan.page(items))
    }
}

impl RagStore for SqliteStore {
    fn put_file(
        &self,
        owner: &str,
        filename: &str,
        purpose: &str,
        bytes: &[u8],
    ) -> Result<FileRecord, StoreError> {
        let record = FileRecord {
            id: new_id("file-"),
            owner: owner.into(),
            filename: filename.into(),
            bytes: bytes.len() as u64,
            purpose: purpose.into(),
            created_at: now(),
        };
        let path = self.files_dir.join(&record.id);
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| backend(format!("writing {}: {e}", path.display())))?;
        self.conn()
            .execute(
                "INSERT INTO files (id, owner, filename, bytes, purpose, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![record.id, owner, filename, record.bytes as i64, purpose, record.created_at],
            )
            .map_err(backend)?;
        Ok(record)
    }

    fn file(&self, owner: &str, id: &str) -> Result<FileRecord, StoreError> {
        self.conn()
            .query_row(
                "SELECT id, owner, filename, bytes, purpose, created_at FROM files WHERE id = ?1 AND owner = ?2",
                params![id, owner],
                Self::file_row,
            )
            .optional()
            .map_err(backend)?
            .ok_or_else(|| not_found("file", id))
    }

    fn file_bytes(&self, owner: &str, id: &str) -> Result<Vec<u8>, StoreError> {
        self.file(owner, id)?;
        fs::read(self.files_dir.join(id)).map_err(backend)
    }

    fn list_files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        q: &ListQuery,
    ) -> Result<Page<FileRecord>, StoreError> {
        let mut where_sql = "owner = ?1".to_string();
        let mut args: Vec<SqlValue> = vec![owner.to_owned().into()];
        if let Some(p) = purpose {
            args.push(p.to_owned().into());
            where_sql.push_str(&format!(" AND purpose = ?{}", args.len()));
        }
        self.page_by(
            "SELECT id, owner, filename, bytes, purpose, created_at FROM files",
            "id",
            where_sql,
            args,
            q,
            Self::file_row,
        )
    }

    /// Deletes a file, its bytes and its chunks in every store.
    fn delete_file(&self, owner: &str, id: &str) -> Result<(), StoreError> {
        {
            let mut conn = self.conn();
            let tx = conn.transaction().map_err(backend)?;
            let exists = tx
                .query_row(
                    "SELECT 1 FROM files WHERE id = ?1 AND owner = ?2",
                    params![id, owner],
                    |_| Ok(()),
                )
                .optional()
                .map_err(backend)?;
            if exists.is_none() {
                return Err(not_found("file", id));
            }
            let stores: Vec<String> = {
                let mut stmt = tx
                    .prepare("SELECT store_id FROM store_files WHERE file_id = ?1")
                    .map_err(backend)?;
                let rows = stmt.query_map([id], |r| r.get(0)).map_err(backend)?;
                rows.collect::<Result<_, _>>().map_err(backend)?
            };
            let mut removed = Vec::with_capacity(stores.len());
            for store in &stores {
                removed.push(delete_chunks(&tx, store, id)?);
            }
            tx.execute("DELETE FROM store_files WHERE file_id = ?1", [id])
                .map_err(backend)?;
            tx.execute("DELETE FROM files WHERE id = ?1", [id])
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            for (store, removed) in stores.iter().zip(&removed) {
                self.update_vectors(store, removed, &[]);
            }
        }
        let _ = fs::remove_file(self.files_dir.join(id));
        Ok(())
    }

    fn create_store(
        &self,
        owner: &str,
        name: &str,
        metadata: &Map<String, Value>,
    ) -> Result<StoreRecord, StoreError> {
        let id = new_id("vs_");
        let fts = fts_table(&id)?;
        let t = now();
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.execute(
            "INSERT INTO stores (id, owner, name, metadata, created_at, last_active_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![id, owner, name, Value::Object(metadata.clone()).to_string(), t],
        )
        .map_err(backend)?;
        // Terms are the analyzer's, already lowercased and split: unicode61 only has to
        // split them at the spaces.
        tx.execute_batch(&format!(
            "CREATE VIRTUAL TABLE {fts} USING fts5(terms, content='', contentless_delete=1, tokenize='unicode61 remove_diacritics 0')"
        ))
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        drop(conn);
        self.store(owner, &id)
    }

    fn store(&self, owner: &str, id: &str) -> Result<StoreRecord, StoreError> {
        self.conn()
            .query_row(
                &format!("{} WHERE s.id = ?1 AND s.owner = ?2", Self::STORE_SELECT),
                params![id, owner],
                Self::store_row,
            )
            .optional()
            .map_err(backend)?
            .ok_or_else(|| not_found("vector store", id))
    }

    /// Whether `owner` has the store: the search path's check, without the file counts that
    /// [`SqliteStore::store`] adds up.
    fn check_store(&self, owner: &str, id: &str) -> Result<(), StoreError> {
        owned_store(&self.conn(), owner, id)
    }

    fn list_stores(&self, owner: &str, q: &ListQuery) -> Result<Page<StoreRecord>, StoreError> {
        self.page_by(
            Self::STORE_SELECT,
            "s.id",
            "s.owner = ?1".into(),
            vec![owner.to_owned().into()],
            q,
            Self::store_row,
        )
    }

    fn update_store(
        &self,
        owner: &str,
        id: &str,
        name: Option<&str>,
        metadata: Option<&Map<String, Value>>,
    ) -> Result<StoreRecord, StoreError> {
        let changed = self
            .conn()
            .execute(
                "UPDATE stores SET name = coalesce(?3, name), metadata = coalesce(?4, metadata), last_active_at = ?5 \
                 WHERE id = ?1 AND owner = ?2",
                params![
                    id,
                    owner,
                    name,
                    metadata.map(|m| Value::Object(m.clone()).to_string()),
                    now()
                ],
            )
            .map_err(backend)?;
        if changed == 0 {
            return Err(not_found("vector store", id));
        }
        self.store(owner, id)
    }

    /// Deletes a store, its attachments, chunks and index (the files themselves stay).
    fn delete_store(&self, owner: &str, id: &str) -> Result<(), StoreError> {
        let fts = fts_table(id)?;
        {
            let mut conn = self.conn();
            let tx = conn.transaction().map_err(backend)?;
            let exists = tx
                .query_row(
                    "SELECT 1 FROM stores WHERE id = ?1 AND owner = ?2",
                    params![id, owner],
                    |_| Ok(()),
                )
                .optional()
                .map_err(backend)?;
            if exists.is_none() {
                return Err(not_found("vector store", id));
            }
            tx.execute("DELETE FROM chunks WHERE store_id = ?1", [id])
                .map_err(backend)?;
            tx.execute("DELETE FROM store_files WHERE store_id = ?1", [id])
                .map_err(backend)?;
            tx.execute(
                "DELETE FROM batch_files WHERE batch_id IN (SELECT id FROM file_batches WHERE store_id = ?1)",
                [id],
            )
            .map_err(backend)?;
            tx.execute("DELETE FROM file_batches WHERE store_id = ?1", [id])
                .map_err(backend)?;
            tx.execute("DELETE FROM stores WHERE id = ?1", [id])
                .map_err(backend)?;
            tx.execute_batch(&format!("DROP TABLE IF EXISTS {fts}"))
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
        }
        self.forget_vectors(id);
        Ok(())
    }

    /// Attachments by status across every store, and chunks stored: what the gauges show.
    fn stats(&self) -> Result<(FileCounts, u64), StoreError> {
        let conn = self.conn();
        let mut counts = FileCounts::default();
        let mut stmt = conn
            .prepare_cached("SELECT status, count(*) FROM store_files GROUP BY status")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(backend)?;
        for row in rows {
            let (status, n) = row.map_err(backend)?;
            match IngestStatus::parse(&status) {
                Some(IngestStatus::InProgress) => counts.in_progress = n,
                Some(IngestStatus::Completed) => counts.completed = n,
                Some(IngestStatus::Failed) => counts.failed = n,
                Some(IngestStatus::Cancelled) => counts.cancelled = n,
                None => {}
            }
        }
        let chunks: i64 = conn
            .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
            .map_err(backend)?;
        Ok((counts, chunks as u64))
    }

    /// Attaches files (or re-attaches them: a new generation, status `in_progress`; the old
    /// chunks stay searchable until the new ones replace them).
    fn attach(
        &self,
        owner: &str,
        store_id: &str,
        files: &[Attach],
    ) -> Result<Vec<StoreFileRecord>, StoreError> {
        {
            let mut conn = self.conn();
            let tx = conn.transaction().map_err(backend)?;
            attach_in(&tx, owner, store_id, files)?;
            tx.commit().map_err(backend)?;
        }
        files
            .iter()
            .map(|a| self.store_file(owner, store_id, &a.file_id))
            .collect()
    }

    fn store_file(
        &self,
        owner: &str,
        store_id: &str,
        file_id: &str,
    ) -> Result<StoreFileRecord, StoreError> {
        self.conn()
            .query_row(
                &format!(
                    "{} WHERE f.store_id = ?1 AND f.file_id = ?2 AND s.owner = ?3",
                    Self::STORE_FILE_SELECT
                ),
                params![store_id, file_id, owner],
                Self::store_file_row,
            )
            .optional()
            .map_err(backend)?
            .ok_or_else(|| not_found("vector store file", file_id))
    }

    fn list_store_files(
        &self,
        owner: &str,
        store_id: &str,
        status: Option<IngestStatus>,
        q: &ListQuery,
    ) -> Result<Page<StoreFileRecord>, StoreError> {
        owned_store(&self.conn(), owner, store_id)?;
        self.page_store_files(
            "f.store_id = ?1".into(),
            vec![store_id.to_owned().into()],
            status,
            q,
        )
    }

    fn set_attributes(
        &self,
        owner: &str,
        store_id: &str,
        file_id: &str,
        attributes: &Attributes,
    ) -> Result<StoreFileRecord, StoreError> {
        self.store_file(owner, store_id, file_id)?;
        self.conn()
            .execute(
                "UPDATE store_files SET attributes = ?3 WHERE store_id = ?1 AND file_id = ?2",
                params![
                    store_id,
                    file_id,
                    Value::Object(attributes.clone()).to_string()
                ],
            )
            .map_err(backend)?;
        self.store_file(owner, store_id, file_id)
    }

    /// Removes a file from a store with its chunks (the file itself stays).
    fn detach(&self, owner: &str, store_id: &str, file_id: &str) -> Result<(), StoreError> {
        {
            let mut conn = self.conn();
            let tx = conn.transaction().map_err(backend)?;
            owned_store(&tx, owner, store_id)?;
            let removed = delete_chunks(&tx, store_id, file_id)?;
            let n = tx
                .execute(
                    "DELETE FROM store_files WHERE store_id = ?1 AND file_id = ?2",
                    params![store_id, file_id],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(not_found("vector store file", file_id));
            }
            tx.commit().map_err(backend)?;
            self.update_vectors(store_id, &removed, &[]);
        }
        Ok(())
    }

    /// Leases up to `n` in_progress files whose lease is free or has run out, oldest first.
    fn claim(&self, worker: &str, n: usize, lease: Duration) -> Result<Vec<IngestJob>, StoreError> {
        let t = now_ms();
        let until = t + lease.as_millis() as i64;
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let jobs: Vec<IngestJob> = {
            let mut stmt = tx
                .prepare(
                    "SELECT f.store_id, f.file_id, d.filename, f.generation, f.max_tokens, f.overlap_tokens \
                     FROM store_files f JOIN files d ON d.id = f.file_id \
                     WHERE f.status = 'in_progress' AND (f.lease_until IS NULL OR f.lease_until < ?1) \
                     ORDER BY f.created_at, f.file_id LIMIT ?2",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![t, n as i64], |r| {
                    Ok(IngestJob {
                        store_id: r.get(0)?,
                        file_id: r.get(1)?,
                        filename: r.get(2)?,
                        generation: r.get(3)?,
                        strategy: ChunkStrategy {
                            max_tokens: r.get(4)?,
                            overlap_tokens: r.get(5)?,
                        },
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)?
        };
        for j in &jobs {
            tx.execute(
                "UPDATE store_files SET lease_owner = ?3, lease_until = ?4 WHERE store_id = ?1 AND file_id = ?2",
                params![j.store_id, j.file_id, worker, until],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(jobs)
    }

    /// Voids every lease: for a process starting on its own data folder, whose previous run
    /// (killed mid-file) can no longer finish what it held.
    fn release_leases(&self) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE store_files SET lease_owner = NULL, lease_until = NULL WHERE status = 'in_progress'",
                [],
            )
            .map_err(backend)?;
        Ok(())
    }

    /// The raw bytes of a job's file.
    fn job_bytes(&self, job: &IngestJob) -> Result<Vec<u8>, StoreError> {
        fs::read(self.files_dir.join(&job.file_id)).map_err(backend)
    }

    /// Replaces the file's chunks with `chunks` and marks it completed, in one transaction.
    /// False (and nothing written) when the attachment is gone or was re-attached since.
    fn complete(&self, job: &IngestJob, chunks: &[NewChunk]) -> Result<bool, StoreError> {
        let fts = fts_table(&job.store_id)?;
        {
            let mut conn = self.conn();
            let tx = conn.transaction().map_err(backend)?;
            if !current(&tx, job)? {
                return Ok(false);
            }
            let removed = delete_chunks(&tx, &job.store_id, &job.file_id)?;
            let mut added: Vec<(i64, &[f32])> = Vec::with_capacity(chunks.len());
            let mut usage = 0u64;
            {
                let mut insert = tx
                    .prepare(
                        "INSERT INTO chunks (store_id, file_id, ordinal, text, headings, tokens, embedding) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .map_err(backend)?;
                let mut index = tx
                    .prepare(&format!("INSERT INTO {fts} (rowid, terms) VALUES (?1, ?2)"))
                    .map_err(backend)?;
                for (ordinal, c) in chunks.iter().enumerate() {
                    let blob: Vec<u8> = c.embedding.iter().flat_map(|x| x.to_le_bytes()).collect();
                    insert
                        .execute(params![
                            job.store_id,
                            job.file_id,
                            ordinal as i64,
                            c.text,
                            c.headings,
                            c.tokens,
                            blob
                        ])
                        .map_err(backend)?;
                    let rowid = tx.last_insert_rowid();
                    added.push((rowid, &c.embedding));
                    let terms = analyze(&format!("{}\n{}", c.headings, c.text)).joined();
                    index.execute(params![rowid, terms]).map_err(backend)?;
                    usage += c.text.len() as u64;
                }
            }
            tx.execute(
                "UPDATE store_files SET status = 'completed', usage_bytes = ?3, lease_owner = NULL, lease_until = NULL \
                 WHERE store_id = ?1 AND file_id = ?2",
                params![job.store_id, job.file_id, usage as i64],
            )
            .map_err(backend)?;
            tx.execute(
                "UPDATE stores SET last_active_at = ?2 WHERE id = ?1",
                params![job.store_id, now()],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            // Still under the connection's lock: no search can load the store in between.
            self.update_vectors(&job.store_id, &removed, &added);
        }
        Ok(true)
    }

    /// Marks the file failed; its previous chunks (from an earlier generation) are removed so
    /// that a failed file is never half-searchable. False when the job is stale.
    fn fail(&self, job: &IngestJob, error: &LastError) -> Result<bool, StoreError> {
        {
            let mut conn = self.conn();
            let tx = conn.transaction().map_err(backend)?;
            if !current(&tx, job)? {
                return Ok(false);
            }
            let removed = delete_chunks(&tx, &job.store_id, &job.file_id)?;
            tx.execute(
                "UPDATE store_files SET status = 'failed', error_code = ?3, error_message = ?4, usage_bytes = 0, \
                 lease_owner = NULL, lease_until = NULL WHERE store_id = ?1 AND file_id = ?2",
                params![job.store_id, job.file_id, error.code, error.message],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            self.update_vectors(&job.store_id, &removed, &[]);
        }
        Ok(true)
    }

    /// The `k` chunks most similar to `query` (cosine; vectors are normalised), best first.
    fn dense(
        &self,
        store_id: &str,
        query: &[f32],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<(i64, f32)>, StoreError> {
        let vectors = self.vectors(store_id)?;
        let allowed = match filter {
            None => None,
            Some(_) => {
                let mut args: Vec<SqlValue> = vec![store_id.to_owned().into()];
                let clause = Self::filter_clause(filter, &mut args);
                let conn = self.conn();
                let mut stmt = conn
                    .prepare(&format!(
                        "SELECT c.id FROM chunks c WHERE c.store_id = ?1{clause}"
                    ))
                    .map_err(backend)?;
                let ids = stmt
                    .query_map(params_from_iter(args), |r| r.get::<_, i64>(0))
                    .map_err(backend)?
                    .collect::<Result<std::collections::HashSet<i64>, _>>()
                    .map_err(backend)?;
                Some(ids)
            }
        };
        let vectors = vectors.read().unwrap_or_else(|p| p.into_inner());
        Ok(vectors.top_k(query, k, |id| {
            allowed.as_ref().is_none_or(|a| a.contains(&id))
        }))
    }

    /// The `k` best BM25 matches (FTS5's formula) for the analyzed query `terms`, best first.
    fn bm25(
        &self,
        store_id: &str,
        terms: &[String],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let fts = fts_table(store_id)?;
        let query = terms
            .iter()
            .map(|t| format!("\"{}\"", t.replace('"', "")))
            .collect::<Vec<_>>()
            .join(" OR ");
        let mut args: Vec<SqlValue> = vec![query.into(), (k as i64).into()];
        // The FTS table is the store's own, so only a filter needs the chunks table. The
        // matches are materialised first: with a rowid constraint beside MATCH, SQLite runs
        // the full-text query once per candidate row (seconds at 10k chunks).
        let sql = match filter {
            None => format!(
                "SELECT rowid, -bm25({fts}) FROM {fts} WHERE {fts} MATCH ?1 ORDER BY bm25({fts}) LIMIT ?2"
            ),
            Some(_) => {
                let clause = Self::filter_clause(filter, &mut args);
                format!(
                    "WITH m AS MATERIALIZED (SELECT rowid AS id, bm25({fts}) AS score FROM {fts} WHERE {fts} MATCH ?1) \
                     SELECT m.id, -m.score FROM m JOIN chunks c ON c.id = m.id WHERE 1{clause} \
                     ORDER BY m.score LIMIT ?2"
                )
            }
        };
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql).map_err(backend)?;
        let rows = stmt
            .query_map(params_from_iter(args), |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
            })
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    /// The chunks with these ids, in the order given, with their file's name and attributes.
    fn chunks(&self, ids: &[i64]) -> Result<Vec<ChunkView>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT c.id, c.store_id, c.file_id, d.filename, c.text, c.headings, f.attributes \
                 FROM chunks c JOIN files d ON d.id = c.file_id \
                 JOIN store_files f ON f.store_id = c.store_id AND f.file_id = c.file_id WHERE c.id = ?1",
            )
            .map_err(backend)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let view = stmt
                .query_row([id], |r| {
                    Ok(ChunkView {
                        id: r.get(0)?,
                        store_id: r.get(1)?,
                        file_id: r.get(2)?,
                        filename: r.get(3)?,
                        text: r.get(4)?,
                        headings: r.get(5)?,
                        attributes: json_map(&r.get::<_, String>(6)?),
                    })
                })
                .optional()
                .map_err(backend)?;
            // A chunk deleted between the legs and this read is simply not returned.
            out.extend(view);
        }
        Ok(out)
    }

    fn create_batch(
        &self,
        owner: &str,
        store_id: &str,
        files: &[Attach],
    ) -> Result<BatchRecord, StoreError> {
        batches::create(self, owner, store_id, files)
    }

    fn batch(
        &self,
        owner: &str,
        store_id: &str,
        batch_id: &str,
    ) -> Result<BatchRecord, StoreError> {
        batches::get(self, owner, store_id, batch_id)
    }

    fn cancel_batch(
        &self,
        owner: &str,
        store_id: &str,
        batch_id: &str,
    ) -> Result<BatchRecord, StoreError> {
        batches::cancel(self, owner, store_id, batch_id)
    }

    fn list_batch_files(
        &self,
        owner: &str,
        store_id: &str,
        batch_id: &str,
        status: Option<IngestStatus>,
        q: &ListQuery,
    ) -> Result<Page<StoreFileRecord>, StoreError> {
        batches::list_files(self, owner, store_id, batch_id, status, q)
    }
}

/// Attaches (or re-attaches) `files` inside `tx`: each gets a new generation and is queued.
fn attach_in(
    tx: &Transaction,
    owner: &str,
    store_id: &str,
    files: &[Attach],
) -> Result<(), StoreError> {
    let t = now();
    owned_store(tx, owner, store_id)?;
    // Cached statements: a batch may attach thousands of files in this one transaction.
    let mut known = tx
        .prepare_cached("SELECT 1 FROM files WHERE id = ?1 AND owner = ?2")
        .map_err(backend)?;
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO store_files (store_id, file_id, status, attributes, max_tokens, overlap_tokens, generation, created_at) \
             VALUES (?1, ?2, 'in_progress', ?3, ?4, ?5, 1, ?6) \
             ON CONFLICT (store_id, file_id) DO UPDATE SET status = 'in_progress', attributes = excluded.attributes, \
             max_tokens = excluded.max_tokens, overlap_tokens = excluded.overlap_tokens, generation = generation + 1, \
             lease_owner = NULL, lease_until = NULL, error_code = NULL, error_message = NULL",
        )
        .map_err(backend)?;
    for a in files {
        if !known.exists(params![a.file_id, owner]).map_err(backend)? {
            return Err(not_found("file", &a.file_id));
        }
        insert
            .execute(params![
                store_id,
                a.file_id,
                Value::Object(a.attributes.clone()).to_string(),
                a.strategy.max_tokens,
                a.strategy.overlap_tokens,
                t
            ])
            .map_err(backend)?;
    }
    tx.execute(
        "UPDATE stores SET last_active_at = ?2 WHERE id = ?1",
        params![store_id, t],
    )
    .map_err(backend)?;
    Ok(())
}

fn owned_store(conn: &Connection, owner: &str, store_id: &str) -> Result<(), StoreError> {
    conn.query_row(
        "SELECT 1 FROM stores WHERE id = ?1 AND owner = ?2",
        params![store_id, owner],
        |_| Ok(()),
    )
    .optional()
    .map_err(backend)?
    .ok_or_else(|| not_found("vector store", store_id))
}

/// Whether the job is still the attachment's current generation and in progress.
fn current(tx: &Transaction, job: &IngestJob) -> Result<bool, StoreError> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM store_files WHERE store_id = ?1 AND file_id = ?2 AND generation = ?3 AND status = 'in_progress'",
            params![job.store_id, job.file_id, job.generation],
            |_| Ok(()),
        )
        .optional()
        .map_err(backend)?
        .is_some())
}

/// Deletes a file's chunks in a store, and their index entries.
/// Deletes a file's chunks and index rows in a store; returns the chunk ids it removed.
fn delete_chunks(tx: &Transaction, store_id: &str, file_id: &str) -> Result<Vec<i64>, StoreError> {
    let fts = fts_table(store_id)?;
    let ids = tx
        .prepare_cached("SELECT id FROM chunks WHERE store_id = ?1 AND file_id = ?2")
        .map_err(backend)?
        .query_map(params![store_id, file_id], |r| r.get::<_, i64>(0))
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    tx.execute(
        &format!("DELETE FROM {fts} WHERE rowid IN (SELECT id FROM chunks WHERE store_id = ?1 AND file_id = ?2)"),
        params![store_id, file_id],
    )
    .map_err(backend)?;
    tx.execute(
        "DELETE FROM chunks WHERE store_id = ?1 AND file_id = ?2",
        params![store_id, file_id],
    )
    .map_err(backend)?;
    Ok(ids)
}
