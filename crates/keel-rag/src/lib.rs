//! Retrieval building blocks, with no I/O and no async: what turns an uploaded file into
//! searchable chunks, and what turns ranked lists into one answer.
//!
//! - [`extract`]: bytes and a filename into a [`Document`]: its text, split into blocks
//!   under their heading paths (plain text, reStructuredText, Markdown, HTML).
//! - [`chunk`]: a document into chunks no longer than the embedding model reads, counted
//!   with the model's own tokenizer (through [`TokenSpans`]).
//! - [`analyze`]: the BM25 analyzer, one for every storage backend so that their lexical
//!   scores agree.
//! - [`filter`]: OpenAI's attribute filters, parsed and checked once, evaluated in memory
//!   or compiled to SQL by a store.
//! - [`fuse`]: weighted reciprocal rank fusion of the dense and lexical legs.
//! - [`records`]: what a store keeps (files, vector stores, attachments, chunks), as plain data.
//! - [`store`]: the [`RagStore`] trait both storage backends implement.
//! - [`answer`]: the prompt over numbered passages, `[n]` markers into citations, and the
//!   degraded answer made of the passages themselves.

pub mod analyze;
pub mod answer;
pub mod chunk;
mod error;
pub mod extract;
pub mod filter;
pub mod fuse;
pub mod records;
pub mod store;

pub use chunk::{chunk, Chunk, ChunkStrategy, TokenSpans};
pub use error::{ExtractError, RagError};
pub use extract::{extract, from_pdf_text, is_pdf, Block, Document, Format};
pub use filter::{Attributes, Filter};
pub use records::StoreError;
pub use store::RagStore;
