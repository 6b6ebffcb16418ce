//! Errors the engine reports to its callers; the HTTP layer maps each to a status code.

use thiserror::Error;

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
    #[error("tokenization failed: {0}")]
    Tokenization(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the request's deadline passed before it could be answered")]
    DeadlineExceeded,
    #[error("the model worker of '{0}' stopped")]
    WorkerStopped(String),
}
