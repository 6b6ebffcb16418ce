-- Version 2: file batches. A batch remembers which files it attached; their status is the
-- attachment's own, so a batch's counts are always current.
CREATE TABLE file_batches (
    id TEXT PRIMARY KEY,
    store_id TEXT NOT NULL REFERENCES stores (id),
    created_at INTEGER NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX file_batches_by_store ON file_batches (store_id);

CREATE TABLE batch_files (
    batch_id TEXT NOT NULL REFERENCES file_batches (id),
    file_id TEXT NOT NULL,
    PRIMARY KEY (batch_id, file_id)
);
