//! Keel's inference engine, independent of HTTP and of any particular backend.
//!
//! A model folder is inspected once ([`spec`]) to decide what it is (task, architecture,
//! pooling, labels, maximum length, image preprocessing); its tokenizer is loaded
//! ([`tokenize`]), or uploaded images are decoded and preprocessed ([`images`]); a
//! [`Backend`](backend::Backend) built by a [`BackendLoader`](backend::BackendLoader) runs the
//! forward pass on a dedicated thread ([`worker`]) that drains the model's [`queue`], never on
//! the async runtime; the [`registry`] loads every configured model in the background and
//! tracks readiness; a ready model's handle ([`model`]) answers embedding and classification
//! requests.

pub mod backend;
pub mod efficientnet;
pub mod error;
pub mod generate;
pub mod images;
pub mod model;
pub mod postprocess;
pub mod queue;
pub mod registry;
pub mod spec;
pub mod tokenize;
pub mod worker;

#[cfg(test)]
mod testing;

pub use backend::{Backend, BackendError, BackendLoader, EncodedBatch, ImageBatch};
pub use error::{EngineError, LoadError};
pub use keel_vision::{DecodeLimits, ImageError};
pub use model::{Inference, LoadedModel};
pub use registry::{
    ModelRegistry, ModelSource, ModelState, ModelStatus, ReadinessReport, ReadinessStatus,
};
pub use spec::{Architecture, ImageInput, ModelSpec, Pooling, Task};
