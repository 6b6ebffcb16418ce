//! The RAG metrics' help texts, registered once when the service starts (Prometheus
//! exposition and `promtool check metrics` want a HELP line for every family).

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub(crate) fn describe() {
    describe_gauge!(
        "keel_rag_files",
        "Files attached to vector stores, by ingestion status"
    );
    describe_gauge!(
        "keel_rag_ingest_queue_depth",
        "Attached files waiting for or in ingestion"
    );
    describe_gauge!("keel_rag_chunks", "Chunks stored across all vector stores");
    describe_counter!(
        "keel_rag_ingest_files_total",
        "Files ingested, by outcome (completed, failed, superseded, error)"
    );
    describe_counter!(
        "keel_rag_ingest_chunks_total",
        "Chunks embedded and stored by ingestion"
    );
    describe_histogram!(
        "keel_rag_search_seconds",
        Unit::Seconds,
        "Vector store search time, by leg (embed, dense, bm25, total)"
    );
    describe_histogram!(
        "keel_rag_answer_seconds",
        Unit::Seconds,
        "Time of a file_search answer, by phase (retrieve, generate)"
    );
}
