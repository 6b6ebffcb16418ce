-- The shared RAG store, version 1. Tables carry a rag_ prefix: DATABASE_URL may well point at
-- a database the application uses for other things. Every object row carries its owner and
-- every read filters by it. Times are the database's clock (one clock for every replica).
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE rag_files (
    id text PRIMARY KEY,
    owner text NOT NULL,
    filename text NOT NULL,
    bytes bigint NOT NULL,
    purpose text NOT NULL,
    created_at bigint NOT NULL,
    -- The raw upload: replicas share nothing but the database.
    content bytea NOT NULL
);
CREATE INDEX rag_files_by_owner ON rag_files (owner, id);

CREATE TABLE rag_stores (
    id text PRIMARY KEY,
    owner text NOT NULL,
    name text NOT NULL,
    metadata jsonb NOT NULL,
    created_at bigint NOT NULL,
    last_active_at bigint NOT NULL,
    -- BM25's collection statistics (N and total length), kept by the triggers below.
    chunk_count bigint NOT NULL DEFAULT 0,
    term_count bigint NOT NULL DEFAULT 0
);
CREATE INDEX rag_stores_by_owner ON rag_stores (owner, id);

-- A file attached to a store. An in_progress row is also the ingestion queue's job: a
-- worker leases it (FOR UPDATE SKIP LOCKED), and its result counts only if the generation
-- has not moved on.
CREATE TABLE rag_store_files (
    store_id text NOT NULL REFERENCES rag_stores (id),
    file_id text NOT NULL REFERENCES rag_files (id),
    status text NOT NULL CHECK (status IN ('in_progress', 'completed', 'failed', 'cancelled')),
    attributes jsonb NOT NULL,
    max_tokens integer NOT NULL,
    overlap_tokens integer NOT NULL,
    generation bigint NOT NULL,
    lease_owner text,
    lease_until bigint,
    error_code text,
    error_message text,
    usage_bytes bigint NOT NULL DEFAULT 0,
    created_at bigint NOT NULL,
    PRIMARY KEY (store_id, file_id)
);
CREATE INDEX rag_store_files_queue ON rag_store_files (created_at, file_id) WHERE status = 'in_progress';
CREATE INDEX rag_store_files_by_file ON rag_store_files (file_id);

-- Chunks of every store. `embedding` has no fixed dimension (the model decides it); each
-- dimension in use gets its own partial HNSW index over `embedding::vector(dims)`.
-- `terms` holds the analyzer's terms with their positions, so a term's frequency is its
-- number of positions; its GIN index finds the chunks that contain a query's terms.
CREATE TABLE rag_chunks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    store_id text NOT NULL,
    file_id text NOT NULL,
    ordinal integer NOT NULL,
    text text NOT NULL,
    headings text NOT NULL,
    tokens integer NOT NULL,
    dims integer NOT NULL,
    embedding vector NOT NULL,
    terms tsvector NOT NULL,
    term_count integer NOT NULL
);
CREATE INDEX rag_chunks_by_file ON rag_chunks (store_id, file_id);
CREATE INDEX rag_chunks_terms ON rag_chunks USING gin (terms);

-- Statement-level triggers keep each store's chunk and term totals: one update per
-- statement, not per row.
CREATE FUNCTION rag_chunks_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE rag_stores s SET chunk_count = s.chunk_count + d.n, term_count = s.term_count + d.t
    FROM (SELECT store_id, count(*) AS n, sum(term_count) AS t FROM added GROUP BY store_id) d
    WHERE s.id = d.store_id;
    RETURN NULL;
END $$;
CREATE TRIGGER rag_chunks_added AFTER INSERT ON rag_chunks
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION rag_chunks_added();

CREATE FUNCTION rag_chunks_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE rag_stores s SET chunk_count = s.chunk_count - d.n, term_count = s.term_count - d.t
    FROM (SELECT store_id, count(*) AS n, sum(term_count) AS t FROM removed GROUP BY store_id) d
    WHERE s.id = d.store_id;
    RETURN NULL;
END $$;
CREATE TRIGGER rag_chunks_removed AFTER DELETE ON rag_chunks
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION rag_chunks_removed();

-- File batches: a batch remembers which files it attached; their status is the attachment's
-- own, so a batch's counts are always current.
CREATE TABLE rag_file_batches (
    id text PRIMARY KEY,
    store_id text NOT NULL REFERENCES rag_stores (id),
    created_at bigint NOT NULL,
    cancelled boolean NOT NULL DEFAULT false
);
CREATE INDEX rag_file_batches_by_store ON rag_file_batches (store_id);

CREATE TABLE rag_batch_files (
    batch_id text NOT NULL REFERENCES rag_file_batches (id),
    file_id text NOT NULL,
    PRIMARY KEY (batch_id, file_id)
);
