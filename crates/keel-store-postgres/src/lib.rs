//! The shared RAG store: PostgreSQL with pgvector, for Keel replicas that scale out.
//!
//! Everything lives in the database (file bytes included), so any replica serves any file
//! and a file ingested through one replica is searchable through all. The schema is migrated
//! at startup by sqlx's embedded migrations, under its advisory lock, so replicas starting
//! together migrate once.
//!
//! - Ingestion queue: the `in_progress` attachments themselves, leased with
//!   `FOR UPDATE SKIP LOCKED`, so two replicas never take the same file; lease times are the
//!   database's clock, one clock for every replica.
//! - Dense leg: cosine distance on pgvector, through an HNSW index per embedding dimension
//!   (iterative scans, so a store that is a small part of the table still gets its `k`
//!   hits); a filtered search scans the files that pass the filter exactly instead.
//! - BM25 leg: the analyzer's terms as a `tsvector` under a GIN index find the candidate
//!   chunks; the score is FTS5's BM25 (k1 = 1.2, b = 0.75, the same IDF floor) computed in
//!   SQL from each store's own statistics, so the two backends rank alike.
//!
//! The [`RagStore`] API is synchronous: each call blocks its (blocking-pool) thread on the
//! runtime the store was opened on. Never call it from an async task directly.

mod filter_sql;
mod sql;

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use keel_rag::analyze::analyze;
use keel_rag::records::{
    Attach, BatchRecord, ChunkView, FileCounts, FileRecord, IngestJob, IngestStatus, LastError,
    ListQuery, NewChunk, Page, StoreError, StoreFileRecord, StoreRecord,
};
use keel_rag::{Attributes, ChunkStrategy, Filter, RagStore};
use serde_json::{Map, Value};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, PgConnection, Row};
use tokio::runtime::Handle;

use sql::{any_term_query, query, tsvector_text, vector_text, Arg};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Candidates an HNSW search keeps (pgvector's default is 40): recall over speed, since a
/// leg asks for up to 50 hits.
const EF_SEARCH: u32 = 100;

pub struct PgStore {
    pool: PgPool,
    rt: Handle,
    /// Embedding dimensions whose HNSW index this process has made sure of.
    indexed: Mutex<Vec<usize>>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.into(),
    }
}

/// A new id: a time-ordered UUIDv7, as the embedded store makes them.
fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// The database's clock, in seconds and milliseconds.
const NOW: &str = "(extract(epoch from now()))::bigint";
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

fn json_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn file_row(r: &PgRow) -> Result<FileRecord, sqlx::Error> {
    Ok(FileRecord {
        id: r.try_get(0)?,
        owner: r.try_get(1)?,
        filename: r.try_get(2)?,
        bytes: r.try_get::<i64, _>(3)? as u64,
        purpose: r.try_get(4)?,
        created_at: r.try_get(5)?,
    })
}

const FILE_SELECT: &str = "SELECT id, owner, filename, bytes, purpose, created_at FROM rag_files";

const STORE_SELECT: &str =
    "SELECT s.id, s.owner, s.name, s.metadata, s.created_at, s.last_active_at, \
    count(f.file_id) FILTER (WHERE f.status = 'in_progress'), \
    count(f.file_id) FILTER (WHERE f.status = 'completed'), \
    count(f.file_id) FILTER (WHERE f.status = 'failed'), \
    count(f.file_id) FILTER (WHERE f.status = 'cancelled'), \
    coalesce(sum(f.usage_bytes), 0)::bigint \
    FROM rag_stores s LEFT JOIN rag_store_files f ON f.store_id = s.id";

fn store_row(r: &PgRow) -> Result<StoreRecord, sqlx::Error> {
    Ok(StoreRecord {
        id: r.try_get(0)?,
        owner: r.try_get(1)?,
        name: r.try_get(2)?,
        metadata: json_map(r.try_get::<sqlx::types::Json<Value>, _>(3)?.0),
        created_at: r.try_get(4)?,
        last_active_at: r.try_get(5)?,
        file_counts: FileCounts {
            in_progress: r.try_get::<i64, _>(6)? as u64,
            completed: r.try_get::<i64, _>(7)? as u64,
            failed: r.try_get::<i64, _>(8)? as u64,
            cancelled: r.try_get::<i64, _>(9)? as u64,
        },
        usage_bytes: r.try_get::<i64, _>(10)? as u64,
    })
}

const STORE_FILE_SELECT: &str =
    "SELECT f.store_id, f.file_id, f.status, f.attributes, f.max_tokens, \
    f.overlap_tokens, f.generation, f.error_code, f.error_message, f.usage_bytes, f.created_at \
    FROM rag_store_files f JOIN rag_stores s ON s.id = f.store_id";

fn store_file_row(r: &PgRow) -> Result<StoreFileRecord, sqlx::Error> {
    let code: Option<String> = r.try_get(7)?;
    let message: Option<String> = r.try_get(8)?;
    Ok(StoreFileRecord {
        store_id: r.try_get(0)?,
        file_id: r.try_get(1)?,
        status: IngestStatus::parse(r.try_get::<&str, _>(2)?).unwrap_or(IngestStatus::Failed),
        attributes: json_map(r.try_get::<sqlx::types::Json<Value>, _>(3)?.0),
        strategy: ChunkStrategy {
            max_tokens: r.try_get::<i32, _>(4)? as u32,
            overlap_tokens: r.try_get::<i32, _>(5)? as u32,
        },
        generation: r.try_get(6)?,
        last_error: code.map(|code| LastError {
            code,
            message: message.unwrap_or_default(),
        }),
        usage_bytes: r.try_get::<i64, _>(9)? as u64,
        created_at: r.try_get(10)?,
    })
}

const BATCH_SELECT: &str = "SELECT b.id, b.store_id, b.created_at, b.cancelled, \
    count(f.file_id) FILTER (WHERE f.status = 'in_progress'), \
    count(f.file_id) FILTER (WHERE f.status = 'completed'), \
    count(f.file_id) FILTER (WHERE f.status = 'failed'), \
    count(bf.file_id) - count(f.file_id) FILTER (WHERE f.status <> 'cancelled') \
    FROM rag_file_batches b JOIN rag_stores s ON s.id = b.store_id \
    LEFT JOIN rag_batch_files bf ON bf.batch_id = b.id \
    LEFT JOIN rag_store_files f ON f.store_id = b.store_id AND f.file_id = bf.file_id";

/// A file detached since the batch attached it counts as cancelled, as in the embedded store.
fn batch_row(r: &PgRow) -> Result<BatchRecord, sqlx::Error> {
    Ok(BatchRecord {
        id: r.try_get(0)?,
        store_id: r.try_get(1)?,
        created_at: r.try_get(2)?,
        cancelled: r.try_get(3)?,
        file_counts: FileCounts {
            in_progress: r.try_get::<i64, _>(4)? as u64,
            completed: r.try_get::<i64, _>(5)? as u64,
            failed: r.try_get::<i64, _>(6)? as u64,
            cancelled: r.try_get::<i64, _>(7)? as u64,
        },
    })
}

/// A list route's statement: its SELECT, what it groups by, and the id its cursor follows.
struct Listing {
    select: &'static str,
    group_by: &'static str,
    id_column: &'static str,
}

impl PgStore {
    /// Connects to `url`, migrates the schema and returns the store. Its calls later block on
    /// the runtime this is awaited on.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // Iterative scans keep walking the graph until `k` rows of this store
                    // pass the store condition, in exact distance order.
                    let settings = format!(
                        "SET hnsw.ef_search = {EF_SEARCH}; SET hnsw.iterative_scan = strict_order"
                    );
                    conn.execute(settings.as_str()).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|e| backend(format!("connecting to PostgreSQL: {e}")))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| backend(format!("migrating the RAG schema: {e}")))?;
        Ok(Self {
            pool,
            rt: Handle::current(),
            indexed: Mutex::default(),
        })
    }

    fn run<T>(&self, f: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, StoreError> {
        self.rt.block_on(f).map_err(backend)
    }

    fn block<T>(&self, f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.rt.block_on(f)
    }

    /// One page of a listing's rows matching `where_sql` (OpenAI's cursor lists).
    async fn page_by<T>(
        &self,
        listing: Listing,
        mut where_sql: String,
        mut args: Vec<Arg>,
        q: &ListQuery,
        map: fn(&PgRow) -> Result<T, sqlx::Error>,
    ) -> Result<Page<T>, StoreError> {
        let plan = q.plan();
        if let Some(c) = plan.cursor {
            args.push(Arg::Text(c.to_owned()));
            let op = if plan.descending { "<" } else { ">" };
            where_sql.push_str(&format!(" AND {} {op} ${}", listing.id_column, args.len()));
        }
        let order = if plan.descending { "DESC" } else { "ASC" };
        args.push(Arg::I64(plan.fetch as i64));
        let sql = format!(
            "{} WHERE {where_sql} {} ORDER BY {} {order} LIMIT ${}",
            listing.select,
            listing.group_by,
            listing.id_column,
            args.len()
        );
        let rows = query(&sql, args)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let items = rows
            .iter()
            .map(map)
            .collect::<Result<Vec<T>, _>>()
            .map_err(backend)?;
        Ok(plan.page(items))
    }

    async fn page_store_files(
        &self,
        mut where_sql: String,
        mut args: Vec<Arg>,
        status: Option<IngestStatus>,
        q: &ListQuery,
    ) -> Result<Page<StoreFileRecord>, StoreError> {
        if let Some(s) = status {
            args.push(Arg::Text(s.as_str().into()));
            where_sql.push_str(&format!(" AND f.status = ${}", args.len()));
        }
        self.page_by(
            Listing {
                select: STORE_FILE_SELECT,
                group_by: "",
                id_column: "f.file_id",
            },
            where_sql,
            args,
            q,
            store_file_row,
        )
        .await
    }

    async fn owned_store(
        conn: &mut PgConnection,
        owner: &str,
        store_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT 1 FROM rag_stores WHERE id = $1 AND owner = $2")
            .bind(store_id)
            .bind(owner)
            .fetch_optional(conn)
            .await
            .map_err(backend)?
            .map(|_| ())
            .ok_or_else(|| not_found("vector store", store_id))
    }

    async fn get_store(&self, owner: &str, id: &str) -> Result<StoreRecord, StoreError> {
        let row = query(
            &format!("{STORE_SELECT} WHERE s.id = $1 AND s.owner = $2 GROUP BY s.id"),
            vec![Arg::Text(id.into()), Arg::Text(owner.into())],
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?
        .ok_or_else(|| not_found("vector store", id))?;
        store_row(&row).map_err(backend)
    }

    async fn get_store_file(
        &self,
        owner: &str,
        store_id: &str,
        file_id: &str,
    ) -> Result<StoreFileRecord, StoreError> {
        let row = query(
            &format!(
                "{STORE_FILE_SELECT} WHERE f.store_id = $1 AND f.file_id = $2 AND s.owner = $3"
            ),
            vec![
                Arg::Text(store_id.into()),
                Arg::Text(file_id.into()),
                Arg::Text(owner.into()),
            ],
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?
        .ok_or_else(|| not_found("vector store file", file_id))?;
        store_file_row(&row).map_err(backend)
    }

    async fn get_batch(
        &self,
        owner: &str,
        store_id: &str,
        batch_id: &str,
    ) -> Result<BatchRecord, StoreError> {
        let row = query(
            &format!(
                "{BATCH_SELECT} WHERE b.id = $1 AND b.store_id = $2 AND s.owner = $3 GROUP BY b.id"
            ),
            vec![
                Arg::Text(batch_id.into()),
                Arg::Text(store_id.into()),
                Arg::Text(owner.into()),
            ],
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?
        .ok_or_else(|| not_found("file batch", batch_id))?;
        batch_row(&row).map_err(backend)
    }

    /// Makes sure the HNSW index for `dims`-dimensional vectors exists. Under an advisory
    /// lock: replicas ingesting their first chunks at once would otherwise race to create it.
    async fn ensure_index(&self, dims: usize) -> Result<(), StoreError> {
        if self
            .indexed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&dims)
        {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('keel_rag_hnsw'))")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let create = format!(
            "CREATE INDEX IF NOT EXISTS rag_chunks_hnsw_{dims} ON rag_chunks \
             USING hnsw ((embedding::vector({dims})) vector_cosine_ops) WHERE dims = {dims}"
        );
        tx.execute(create.as_str()).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        self.indexed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dims);
        Ok(())
    }

    /// The condition that a chunk `c`'s file passes `filter`, for a WHERE clause.
    fn filter_clause(filter: Option<&Filter>, args: &mut Vec<Arg>) -> String {
        match filter {
            None => String::new(),
            Some(f) => {
                let mut sql = String::from(
                    " AND EXISTS (SELECT 1 FROM rag_store_files sf WHERE sf.store_id = c.store_id AND sf.file_id = c.file_id AND ",
                );
                filter_sql::compile(f, "sf.attributes", &mut sql, args);
                sql.push(')');
                sql
            }
        }
    }
}

/// Attaches (or re-attaches) `files` inside `tx`: each gets a new generation and is queued.
async fn attach_in(
    tx: &mut PgConnection,
    owner: &str,
    store_id: &str,
    files: &[Attach],
) -> Result<(), StoreError> {
    PgStore::owned_store(tx, owner, store_id).await?;
    let ids: Vec<String> = files.iter().map(|a| a.file_id.clone()).collect();
    let known: Vec<String> =
        sqlx::query_scalar("SELECT id FROM rag_files WHERE id = ANY($1) AND owner = $2")
            .bind(&ids)
            .bind(owner)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
    if let Some(missing) = ids.iter().find(|id| !known.contains(id)) {
        return Err(not_found("file", missing));
    }
    // One statement for the whole batch: arrays of each column, unnested.
    let attributes: Vec<sqlx::types::Json<Value>> = files
        .iter()
        .map(|a| sqlx::types::Json(Value::Object(a.attributes.clone())))
        .collect();
    let max_tokens: Vec<i32> = files.iter().map(|a| a.strategy.max_tokens as i32).collect();
    let overlap: Vec<i32> = files
        .iter()
        .map(|a| a.strategy.overlap_tokens as i32)
        .collect();
    // The same file twice in one request: the last one wins, as sequential attaches would.
    sqlx::query(
        "INSERT INTO rag_store_files (store_id, file_id, status, attributes, max_tokens, overlap_tokens, generation, created_at) \
         SELECT DISTINCT ON (u.file_id) $1, u.file_id, 'in_progress', u.attributes, u.max_tokens, u.overlap_tokens, 1, \
            (extract(epoch from now()))::bigint \
         FROM unnest($2::text[], $3::jsonb[], $4::int[], $5::int[]) WITH ORDINALITY AS u(file_id, attributes, max_tokens, overlap_tokens, n) \
         ORDER BY u.file_id, u.n DESC \
         ON CONFLICT (store_id, file_id) DO UPDATE SET status = 'in_progress', attributes = excluded.attributes, \
         max_tokens = excluded.max_tokens, overlap_tokens = excluded.overlap_tokens, \
         generation = rag_store_files.generation + 1, \
         lease_owner = NULL, lease_until = NULL, error_code = NULL, error_message = NULL",
    )
    .bind(store_id)
    .bind(&ids)
    .bind(&attributes)
    .bind(&max_tokens)
    .bind(&overlap)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    sqlx::query(
        "UPDATE rag_stores SET last_active_at = (extract(epoch from now()))::bigint WHERE id = $1",
    )
    .bind(store_id)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    Ok(())
}

/// Whether the job is still the attachment's current generation and in progress; locks the
/// row so that a concurrent re-attach waits for this transaction.
async fn current(tx: &mut PgConnection, job: &IngestJob) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "SELECT 1 FROM rag_store_files WHERE store_id = $1 AND file_id = $2 AND generation = $3 \
         AND status = 'in_progress' FOR UPDATE",
    )
    .bind(&job.store_id)
    .bind(&job.file_id)
    .bind(job.generation)
    .fetch_optional(tx)
    .await
    .map_err(backend)?
    .is_some())
}

async fn delete_chunks(
    tx: &mut PgConnection,
    store_id: &str,
    file_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM rag_chunks WHERE store_id = $1 AND file_id = $2")
        .bind(store_id)
        .bind(file_id)
        .execute(tx)
        .await
        .map_err(backend)?;
    Ok(())
}

impl RagStore for PgStore {
    // ---- files ----

    fn put_file(
        &self,
        owner: &str,
        filename: &str,
        purpose: &str,
        bytes: &[u8],
    ) -> Result<FileRecord, StoreError> {
        let id = new_id("file-");
        let row = self.run(
            query(
                &format!(
                    "INSERT INTO rag_files (id, owner, filename, bytes, purpose, created_at, content) \
                     VALUES ($1, $2, $3, $4, $5, {NOW}, $6) \
                     RETURNING id, owner, filename, bytes, purpose, created_at"
                ),
                vec![
                    Arg::Text(id),
                    Arg::Text(owner.into()),
                    Arg::Text(filename.into()),
                    Arg::I64(bytes.len() as i64),
                    Arg::Text(purpose.into()),
                ],
            )
            .bind(bytes.to_vec())
            .fetch_one(&self.pool),
        )?;
        file_row(&row).map_err(backend)
    }

    fn file(&self, owner: &str, id: &str) -> Result<FileRecord, StoreError> {
        let row = self
            .run(
                query(
                    &format!("{FILE_SELECT} WHERE id = $1 AND owner = $2"),
                    vec![Arg::Text(id.into()), Arg::Text(owner.into())],
                )
                .fetch_optional(&self.pool),
            )?
            .ok_or_else(|| not_found("file", id))?;
        file_row(&row).map_err(backend)
    }

    fn file_bytes(&self, owner: &str, id: &str) -> Result<Vec<u8>, StoreError> {
        self.run(
            sqlx::query_scalar("SELECT content FROM rag_files WHERE id = $1 AND owner = $2")
                .bind(id)
                .bind(owner)
                .fetch_optional(&self.pool),
        )?
        .ok_or_else(|| not_found("file", id))
    }

    fn list_files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        q: &ListQuery,
    ) -> Result<Page<FileRecord>, StoreError> {
        let mut where_sql = "owner = $1".to_string();
        let mut args = vec![Arg::Text(owner.into())];
        if let Some(p) = purpose {
            args.push(Arg::Text(p.into()));
            where_sql.push_str(&format!(" AND purpose = ${}", args.len()));
        }
        self.block(self.page_by(
            Listing {
                select: FILE_SELECT,
                group_by: "",
                id_column: "id",
            },
            where_sql,
            args,
            q,
            file_row,
        ))
    }

    fn delete_file(&self, owner: &str, id: &str) -> Result<(), StoreError> {
        self.block(async {
            let mut tx = self.pool.begin().await.map_err(backend)?;
            let exists =
                sqlx::query("SELECT 1 FROM rag_files WHERE id = $1 AND owner = $2 FOR UPDATE")
                    .bind(id)
                    .bind(owner)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
            if exists.is_none() {
                return Err(not_found("file", id));
            }
            for sql in [
                "DELETE FROM rag_chunks WHERE file_id = $1",
                "DELETE FROM rag_store_files WHERE file_id = $1",
                "DELETE FROM rag_files WHERE id = $1",
            ] {
                sqlx::query(sql)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
            }
            tx.commit().await.map_err(backend)
        })
    }

    // ---- vector stores ----

    fn create_store(
        &self,
        owner: &str,
        name: &str,
        metadata: &Map<String, Value>,
    ) -> Result<StoreRecord, StoreError> {
        let id = new_id("vs_");
        self.run(
            query(
                &format!(
                    "INSERT INTO rag_stores (id, owner, name, metadata, created_at, last_active_at) \
                     VALUES ($1, $2, $3, $4, {NOW}, {NOW})"
                ),
                vec![
                    Arg::Text(id.clone()),
                    Arg::Text(owner.into()),
                    Arg::Text(name.into()),
                    Arg::Json(Value::Object(metadata.clone())),
                ],
            )
            .execute(&self.pool),
        )?;
        self.store(owner, &id)
    }

    fn store(&self, owner: &str, id: &str) -> Result<StoreRecord, StoreError> {
        self.block(self.get_store(owner, id))
    }

    fn check_store(&self, owner: &str, id: &str) -> Result<(), StoreError> {
        self.block(async {
            let mut conn = self.pool.acquire().await.map_err(backend)?;
            Self::owned_store(&mut conn, owner, id).await
        })
    }

    fn list_stores(&self, owner: &str, q: &ListQuery) -> Result<Page<StoreRecord>, StoreError> {
        self.block(self.page_by(
            Listing {
                select: STORE_SELECT,
                group_by: "GROUP BY s.id",
                id_column: "s.id",
            },
            "s.owner = $1".into(),
            vec![Arg::Text(owner.into())],
            q,
            store_row,
        ))
    }

    fn update_store(
        &self,
        owner: &str,
        id: &str,
        name: Option<&str>,
        metadata: Option<&Map<String, Value>>,
    ) -> Result<StoreRecord, StoreError> {
        let changed = self.run(
            query(
                &format!(
                    "UPDATE rag_stores SET name = coalesce($3, name), metadata = coalesce($4, metadata), \
                     last_active_at = {NOW} WHERE id = $1 AND owner = $2"
                ),
                vec![Arg::Text(id.into()), Arg::Text(owner.into())],
            )
            .bind(name)
            .bind(metadata.map(|m| sqlx::types::Json(Value::Object(m.clone()))))
            .execute(&self.pool),
        )?;
        if changed.rows_affected() == 0 {
            return Err(not_found("vector store", id));
        }
        self.store(owner, id)
    }

    fn delete_store(&self, owner: &str, id: &str) -> Result<(), StoreError> {
        self.block(async {
            let mut tx = self.pool.begin().await.map_err(backend)?;
            Self::owned_store(&mut tx, owner, id).await?;
            for sql in [
                "DELETE FROM rag_chunks WHERE store_id = $1",
                "DELETE FROM rag_store_files WHERE store_id = $1",
                "DELETE FROM rag_batch_files WHERE batch_id IN (SELECT id FROM rag_file_batches WHERE store_id = $1)",
                "DELETE FROM rag_file_batches WHERE store_id = $1",
                "DELETE FROM rag_stores WHERE id = $1",
            ] {
                sqlx::query(sql).bind(id).execute(&mut *tx).await.map_err(backend)?;
            }
            tx.commit().await.map_err(backend)
        })
    }

    fn stats(&self) -> Result<(FileCounts, u64), StoreError> {
        self.block(async {
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT status, count(*) FROM rag_store_files GROUP BY status")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(backend)?;
            let mut counts = FileCounts::default();
            for (status, n) in rows {
                let n = n as u64;
                match IngestStatus::parse(&status) {
                    Some(IngestStatus::InProgress) => counts.in_progress = n,
                    Some(IngestStatus::Completed) => counts.completed = n,
                    Some(IngestStatus::Failed) => counts.failed = n,
                    Some(IngestStatus::Cancelled) => counts.cancelled = n,
                    None => {}
                }
            }
            // The stores' own totals: no scan of the chunks table every few seconds.
            let chunks: i64 =
                sqlx::query_scalar("SELECT coalesce(sum(chunk_count), 0)::bigint FROM rag_stores")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(backend)?;
            Ok((counts, chunks as u64))
        })
    }

    // ---- files in stores ----

    fn attach(
        &self,
        owner: &str,
        store_id: &str,
        files: &[Attach],
    ) -> Result<Vec<StoreFileRecord>, StoreError> {
        self.block(async {
            let mut tx = self.pool.begin().await.map_err(backend)?;
            attach_in(&mut tx, owner, store_id, files).await?;
            tx.commit().await.map_err(backend)
        })?;
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
        self.block(self.get_store_file(owner, store_id, file_id))
    }

    fn list_store_files(
        &self,
        owner: &str,
        store_id: &str,
        status: Option<IngestStatus>,
        q: &ListQuery,
    ) -> Result<Page<StoreFileRecord>, StoreError> {
        self.check_store(owner, store_id)?;
        self.block(self.page_store_files(
            "f.store_id = $1".into(),
            vec![Arg::Text(store_id.into())],
            status,
            q,
        ))
    }

    fn set_attributes(
        &self,
        owner: &str,
        store_id: &str,
        file_id: &str,
        attributes: &Attributes,
    ) -> Result<StoreFileRecord, StoreError> {
        self.store_file(owner, store_id, file_id)?;
        self.run(
            sqlx::query(
                "UPDATE rag_store_files SET attributes = $3 WHERE store_id = $1 AND file_id = $2",
            )
            .bind(store_id)
            .bind(file_id)
            .bind(sqlx::types::Json(Value::Object(attributes.clone())))
            .execute(&self.pool),
        )?;
        self.store_file(owner, store_id, file_id)
    }

    fn detach(&self, owner: &str, store_id: &str, file_id: &str) -> Result<(), StoreError> {
        self.block(async {
            let mut tx = self.pool.begin().await.map_err(backend)?;
            Self::owned_store(&mut tx, owner, store_id).await?;
            delete_chunks(&mut tx, store_id, file_id).await?;
            let n = sqlx::query("DELETE FROM rag_store_files WHERE store_id = $1 AND file_id = $2")
                .bind(store_id)
                .bind(file_id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .rows_affected();
            if n == 0 {
                return Err(not_found("vector store file", file_id));
            }
            tx.commit().await.map_err(backend)
        })
    }

    // ---- file batches ----

    fn create_batch(
        &self,
        owner: &str,
        store_id: &str,
        files: &[Attach],
    ) -> Result<BatchRecord, StoreError> {
        let id = new_id("vsfb_");
        self.block(async {
            let mut tx = self.pool.begin().await.map_err(backend)?;
            attach_in(&mut tx, owner, store_id, files).await?;
            query(
                &format!("INSERT INTO rag_file_batches (id, store_id, created_at) VALUES ($1, $2, {NOW})"),
                vec![Arg::Text(id.clone()), Arg::Text(store_id.into())],
            )
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            let ids: Vec<&str> = files.iter().map(|a| a.file_id.as_str()).collect();
            // The same file twice in one request is one member.
            sqlx::query(
                "INSERT INTO rag_batch_files (batch_id, file_id) SELECT $1, f FROM unnest($2::text[]) f \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&id)
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)
        })?;
        self.batch(owner, store_id, &id)
    }

    fn batch(
        &self,
        owner: &str,
        store_id: &str,
        batch_id: &str,
    ) -> Result<BatchRecord, StoreError> {
        self.block(self.get_batch(owner, store_id, batch_id))
    }

    fn cancel_batch(
        &self,
        owner: &str,
        store_id: &str,
        batch_id: &str,
    ) -> Result<BatchRecord, StoreError> {
        self.batch(owner, store_id, batch_id)?;
        self.block(async {
            let mut tx = self.pool.begin().await.map_err(backend)?;
            sqlx::query(
                "UPDATE rag_store_files SET status = 'cancelled', generation = generation + 1, \
                 lease_owner = NULL, lease_until = NULL \
                 WHERE store_id = $1 AND status = 'in_progress' \
                 AND file_id IN (SELECT file_id FROM rag_batch_files WHERE batch_id = $2)",
            )
            .bind(store_id)
            .bind(batch_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            sqlx::query("UPDATE rag_file_batches SET cancelled = true WHERE id = $1")
                .bind(batch_id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            tx.commit().await.map_err(backend)
        })?;
        self.batch(owner, store_id, batch_id)
    }

    fn list_batch_files(
        &self,
        owner: &str,
        store_id: &str,
        batch_id: &str,
        status: Option<IngestStatus>,
        q: &ListQuery,
    ) -> Result<Page<StoreFileRecord>, StoreError> {
        self.batch(owner, store_id, batch_id)?;
        self.block(self.page_store_files(
            "f.store_id = $1 AND f.file_id IN (SELECT file_id FROM rag_batch_files WHERE batch_id = $2)".into(),
            vec![Arg::Text(store_id.into()), Arg::Text(batch_id.into())],
            status,
            q,
        ))
    }

    // ---- the ingestion queue ----

    fn claim(&self, worker: &str, n: usize, lease: Duration) -> Result<Vec<IngestJob>, StoreError> {
        let rows = self.run(
            query(
                &format!(
                    "WITH free AS ( \
                        SELECT store_id, file_id FROM rag_store_files \
                        WHERE status = 'in_progress' AND (lease_until IS NULL OR lease_until < {NOW_MS}) \
                        ORDER BY created_at, file_id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                     UPDATE rag_store_files f SET lease_owner = $1, lease_until = {NOW_MS} + $3 \
                     FROM free, rag_files d \
                     WHERE f.store_id = free.store_id AND f.file_id = free.file_id AND d.id = f.file_id \
                     RETURNING f.store_id, f.file_id, d.filename, f.generation, f.max_tokens, f.overlap_tokens"
                ),
                vec![
                    Arg::Text(worker.into()),
                    Arg::I64(n as i64),
                    Arg::I64(lease.as_millis() as i64),
                ],
            )
            .fetch_all(&self.pool),
        )?;
        rows.iter()
            .map(|r| {
                Ok(IngestJob {
                    store_id: r.try_get(0)?,
                    file_id: r.try_get(1)?,
                    filename: r.try_get(2)?,
                    generation: r.try_get(3)?,
                    strategy: ChunkStrategy {
                        max_tokens: r.try_get::<i32, _>(4)? as u32,
                        overlap_tokens: r.try_get::<i32, _>(5)? as u32,
                    },
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(backend)
    }

    /// Replicas share the queue: another one may hold any lease, so leases only run out.
    fn release_leases(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn job_bytes(&self, job: &IngestJob) -> Result<Vec<u8>, StoreError> {
        self.run(
            sqlx::query_scalar("SELECT content FROM rag_files WHERE id = $1")
                .bind(&job.file_id)
                .fetch_optional(&self.pool),
        )?
        .ok_or_else(|| not_found("file", &job.file_id))
    }

    fn complete(&self, job: &IngestJob, chunks: &[NewChunk]) -> Result<bool, StoreError> {
        let mut dims: Vec<usize> = chunks.iter().map(|c| c.embedding.len()).collect();
        dims.sort_unstable();
        dims.dedup();
        let mut texts = Vec::with_capacity(chunks.len());
        let mut headings = Vec::with_capacity(chunks.len());
        let mut tokens = Vec::with_capacity(chunks.len());
        let mut vectors = Vec::with_capacity(chunks.len());
        let mut terms = Vec::with_capacity(chunks.len());
        let mut term_counts = Vec::with_capacity(chunks.len());
        let mut widths = Vec::with_capacity(chunks.len());
        let mut usage = 0i64;
        for c in chunks {
            let analyzed = analyze(&format!("{}\n{}", c.headings, c.text));
            texts.push(c.text.as_str());
            headings.push(c.headings.as_str());
            tokens.push(c.tokens as i32);
            vectors.push(vector_text(&c.embedding));
            terms.push(tsvector_text(&analyzed.terms));
            term_counts.push(analyzed.len as i32);
            widths.push(c.embedding.len() as i32);
            usage += c.text.len() as i64;
        }
        self.block(async {
            for d in dims {
                self.ensure_index(d).await?;
            }
            let mut tx = self.pool.begin().await.map_err(backend)?;
            if !current(&mut tx, job).await? {
                return Ok(false);
            }
            delete_chunks(&mut tx, &job.store_id, &job.file_id).await?;
            // One statement for all of a file's chunks (and one trigger run).
            sqlx::query(
                "INSERT INTO rag_chunks (store_id, file_id, ordinal, text, headings, tokens, dims, embedding, terms, term_count) \
                 SELECT $1, $2, u.n - 1, u.text, u.headings, u.tokens, u.dims, u.embedding::vector, u.terms::tsvector, u.term_count \
                 FROM unnest($3::text[], $4::text[], $5::int[], $6::int[], $7::text[], $8::text[], $9::int[]) \
                 WITH ORDINALITY AS u(text, headings, tokens, dims, embedding, terms, term_count, n)",
            )
            .bind(&job.store_id)
            .bind(&job.file_id)
            .bind(&texts)
            .bind(&headings)
            .bind(&tokens)
            .bind(&widths)
            .bind(&vectors)
            .bind(&terms)
            .bind(&term_counts)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            sqlx::query(
                "UPDATE rag_store_files SET status = 'completed', usage_bytes = $3, lease_owner = NULL, \
                 lease_until = NULL WHERE store_id = $1 AND file_id = $2",
            )
            .bind(&job.store_id)
            .bind(&job.file_id)
            .bind(usage)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            query(
                &format!("UPDATE rag_stores SET last_active_at = {NOW} WHERE id = $1"),
                vec![Arg::Text(job.store_id.clone())],
            )
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(true)
        })
    }

    fn fail(&self, job: &IngestJob, error: &LastError) -> Result<bool, StoreError> {
        self.block(async {
            let mut tx = self.pool.begin().await.map_err(backend)?;
            if !current(&mut tx, job).await? {
                return Ok(false);
            }
            delete_chunks(&mut tx, &job.store_id, &job.file_id).await?;
            sqlx::query(
                "UPDATE rag_store_files SET status = 'failed', error_code = $3, error_message = $4, \
                 usage_bytes = 0, lease_owner = NULL, lease_until = NULL WHERE store_id = $1 AND file_id = $2",
            )
            .bind(&job.store_id)
            .bind(&job.file_id)
            .bind(&error.code)
            .bind(&error.message)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(true)
        })
    }

    // ---- search ----

    fn dense(
        &self,
        store_id: &str,
        query_vector: &[f32],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<(i64, f32)>, StoreError> {
        let dims = query_vector.len();
        let mut args = vec![
            Arg::Text(store_id.into()),
            Arg::Text(vector_text(query_vector)),
            Arg::I64(k as i64),
        ];
        let sql = match filter {
            // The partial HNSW index of this dimension, walked in distance order.
            // The query vector is parsed once, in a sub-select: as a bare `$2::vector`, a
            // prepared statement's generic plan parses it again for every row (50 ms at 1k).
            None => format!(
                "SELECT c.id, (1 - (c.embedding::vector({dims}) <=> (SELECT $2::vector({dims}))))::float4 AS score \
                 FROM rag_chunks c WHERE c.store_id = $1 AND c.dims = {dims} \
                 ORDER BY c.embedding::vector({dims}) <=> (SELECT $2::vector({dims})) LIMIT $3"
            ),
            // An exact scan of the chunks whose files pass: however few pass, all `k` are found.
            Some(_) => {
                let clause = Self::filter_clause(filter, &mut args);
                format!(
                    "WITH m AS MATERIALIZED (SELECT c.id, c.embedding FROM rag_chunks c \
                        WHERE c.store_id = $1 AND c.dims = {dims}{clause}) \
                     SELECT m.id, (1 - (m.embedding <=> q.v))::float4 AS score \
                     FROM m CROSS JOIN (SELECT $2::vector AS v) q \
                     ORDER BY score DESC, m.id LIMIT $3"
                )
            }
        };
        let rows = self.run(query(&sql, args).fetch_all(&self.pool))?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<f32, _>(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(backend)
    }

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
        let mut args = vec![
            Arg::Text(store_id.into()),
            Arg::Text(any_term_query(terms)),
            Arg::I64(k as i64),
        ];
        let clause = Self::filter_clause(filter, &mut args);
        let lexemes: Vec<String> = terms.to_vec();
        // m: each matching chunk's query terms with their frequency; a term's document
        // frequency is how many matching chunks hold it. FTS5's formula and IDF floor.
        let sql = format!(
            "WITH m AS MATERIALIZED ( \
                SELECT c.id, c.term_count, u.lexeme, array_length(u.positions, 1) AS tf \
                FROM rag_chunks c CROSS JOIN LATERAL unnest(c.terms) AS u(lexeme, positions, weights) \
                WHERE c.store_id = $1 AND c.terms @@ (SELECT $2::tsquery){clause} AND u.lexeme = ANY(${q})), \
             df AS (SELECT lexeme, count(*)::float8 AS n FROM m GROUP BY lexeme), \
             s AS (SELECT chunk_count::float8 AS n, \
                greatest(term_count::float8 / greatest(chunk_count, 1), 1e-9) AS avgdl \
                FROM rag_stores WHERE id = $1) \
             SELECT m.id, sum(greatest(ln((s.n - df.n + 0.5) / (df.n + 0.5)), 1e-6) \
                * (m.tf * 2.2) / (m.tf + 1.2 * (0.25 + 0.75 * m.term_count / s.avgdl)))::float8 AS score \
             FROM m JOIN df USING (lexeme) CROSS JOIN s \
             GROUP BY m.id ORDER BY score DESC, m.id LIMIT $3",
            q = args.len() + 1
        );
        let rows = self.run(query(&sql, args).bind(lexemes).fetch_all(&self.pool))?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<f64, _>(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(backend)
    }

    fn chunks(&self, ids: &[i64]) -> Result<Vec<ChunkView>, StoreError> {
        let rows = self.run(
            sqlx::query(
                "SELECT c.id, c.store_id, c.file_id, d.filename, c.text, c.headings, f.attributes \
                 FROM rag_chunks c JOIN rag_files d ON d.id = c.file_id \
                 JOIN rag_store_files f ON f.store_id = c.store_id AND f.file_id = c.file_id \
                 WHERE c.id = ANY($1)",
            )
            .bind(ids)
            .fetch_all(&self.pool),
        )?;
        let mut views = rows
            .iter()
            .map(|r| {
                Ok(ChunkView {
                    id: r.try_get(0)?,
                    store_id: r.try_get(1)?,
                    file_id: r.try_get(2)?,
                    filename: r.try_get(3)?,
                    text: r.try_get(4)?,
                    headings: r.try_get(5)?,
                    attributes: json_map(r.try_get::<sqlx::types::Json<Value>, _>(6)?.0),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(backend)?;
        // In the order asked; a chunk deleted since the legs ran is simply not returned.
        views.sort_by_key(|v| ids.iter().position(|id| *id == v.id));
        Ok(views)
    }
}
