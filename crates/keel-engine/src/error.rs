//! Errors the engine reports to its callers; the HTTP layer maps each to a status code.
//!
//! [`EngineError`] is what a request gets; [`LoadError`] is why a model could not be
//! brought up (its text becomes the model's `reason` on `/ready`).

use std::path::PathBuf;

use thiserror::Error;

use crate::backend::BackendError;
use crate::spec::SpecError;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("model '{0}' is not configured")]
    UnknownModel(String),
    #[error("no model is configured for task '{0}'")]
    NoModelForTask(&'static str),
    #[error("model '{name}' serves '{actual}', not '{wanted}'")]
    WrongTask {
        name: String,
        actual: &'static str,
        wanted: &'static str,
    },
    #[error("model '{name}' is not ready: {state}")]
    NotReady { name: String, state: String },
    #[error("input {index} is empty")]
    EmptyInput { index: usize },
    #[error("input {index} has more than {max} tokens and truncation is disabled")]
    InputTooLong { index: usize, max: usize },
    #[error("the inference queue of model '{0}' is full")]
    QueueFull(String),
    #[error(
        "model '{model}' is overloaded: a new request would wait about {wait_ms} ms, longer \
         than its deadline or MAX_QUEUE_WAIT_MS allows"
    )]
    QueueTooSlow { model: String, wait_ms: u64 },
    /// The tokenizer refused an input (the client's fault).
    #[error("tokenization failed: {0}")]
    Tokenization(String),
    /// The tokenizer panicked: a fault of the server, not of the input.
    #[error("the tokenizer of model '{model}' panicked")]
    TokenizerPanicked { model: String },
    /// An uploaded image could not be used (too large, not an image, broken): the
    /// client's fault, with the status its kind calls for.
    #[error("image {index}: {error}")]
    Image {
        index: usize,
        error: keel_vision::ImageError,
    },
    #[error("inference failed: {0}")]
    Inference(String),
    /// The backend panicked in a forward pass; the worker survives and serves later requests.
    #[error("the backend of model '{model}' panicked during inference")]
    BackendPanicked { model: String },
    #[error("the request's deadline passed before it could be answered")]
    DeadlineExceeded,
    #[error("the model worker of '{0}' stopped")]
    WorkerStopped(String),
}

/// Why a model folder could not be served.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{}: cannot load tokenizer: {reason}", path.display())]
    Tokenizer { path: PathBuf, reason: String },
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The warm-up input could not be tokenized.
    #[error("warm-up tokenization failed: {0}")]
    WarmUpInput(EngineError),
    #[error("warm-up inference failed: {0}")]
    WarmUp(BackendError),
    #[error("warm-up inference gave an unexpected output (expected {dimensions} finite values)")]
    WarmUpOutput { dimensions: usize },
}
