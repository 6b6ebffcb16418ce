//! Keel's inference engine, independent of HTTP and of any particular backend.
//!
//! A model folder is inspected once ([`spec`]) to decide what it is (task, architecture,
//! pooling, labels, maximum length); its tokenizer is loaded ([`tokenize`]); a
//! [`Backend`](backend::Backend) built by a [`BackendLoader`](backend::BackendLoader) runs the
//! forward pass on a dedicated thread ([`worker`]), never on the async runtime; the
//! [`registry`] loads every configured model in the background and tracks readiness.

pub mod backend;
pub mod error;
pub mod postprocess;
pub mod registry;
pub mod spec;
pub mod tokenize;
pub mod worker;

pub use backend::{Backend, BackendError, BackendLoader, EncodedBatch};
pub use error::EngineError;
pub use registry::{LoadedModel, ModelRegistry, ModelSource, ModelState, ReadinessReport};
pub use spec::{Architecture, ModelSpec, Pooling, Task};
