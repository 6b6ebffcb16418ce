-- The embedded RAG store, version 1. Every object row carries its owner; every read filters
-- by it. Raw file bytes live beside the database, in files/<id>.
CREATE TABLE files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX files_by_owner ON files (owner, id);

CREATE TABLE stores (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_active_at INTEGER NOT NULL
);
CREATE INDEX stores_by_owner ON stores (owner, id);

-- A file attached to a store. An in_progress row is also the ingestion queue's job: a
-- worker leases it, and its result counts only if the generation has not moved on.
CREATE TABLE store_files (
    store_id TEXT NOT NULL REFERENCES stores (id),
    file_id TEXT NOT NULL REFERENCES files (id),
    status TEXT NOT NULL CHECK (status IN ('in_progress', 'completed', 'failed', 'cancelled')),
    attributes TEXT NOT NULL,
    max_tokens INTEGER NOT NULL,
    overlap_tokens INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until INTEGER,
    error_code TEXT,
    error_message TEXT,
    usage_bytes INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (store_id, file_id)
);
CREATE INDEX store_files_queue ON store_files (status, created_at);
CREATE INDEX store_files_by_file ON store_files (file_id);

CREATE TABLE chunks (
    id INTEGER PRIMARY KEY,
    store_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    headings TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    -- little-endian f32, L2-normalised
    embedding BLOB NOT NULL
);
CREATE INDEX chunks_by_file ON chunks (store_id, file_id);
