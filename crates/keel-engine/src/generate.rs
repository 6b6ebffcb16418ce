//! Text generation, independent of any engine: what a request asks for (a prompt, sampling
//! and stop rules, a token budget, a deadline), what it gets back (text as it is made, then
//! a summary), and the trait a generation backend implements. The backend (llama.cpp, in
//! keel-backend-llama) owns tokenization, the chat template and the scheduling of requests.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// One message of a conversation, its content already flattened to text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Raw text, tokenized as is (`/v1/completions`).
    Text(String),
    /// A conversation, rendered by the model's own chat template.
    Chat(Vec<ChatMessage>),
}

/// How the next token is picked. The defaults are llama.cpp's server defaults, which suit
/// small local models better than OpenAI's untruncated temperature 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0: greedy (always the most likely token).
    pub temperature: f32,
    pub top_p: f32,
    /// 0: off.
    pub top_k: i32,
    pub min_p: f32,
    /// None: a random seed per request.
    pub seed: Option<u32>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Token id and bias added to its logit.
    pub logit_bias: Vec<(i32, f32)>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.05,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Prompt,
    pub sampling: Sampling,
    /// None: as many as the context window leaves.
    pub max_tokens: Option<u32>,
    /// Strings that end the answer; never part of the text sent.
    pub stop: Vec<String>,
    /// Keep going past the end-of-generation token (benchmarks ask for fixed lengths).
    pub ignore_eos: bool,
    pub deadline: Instant,
    pub request_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its answer, or a stop string was met.
    Stop,
    /// `max_tokens` or the context window ran out.
    Length,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationSummary {
    pub finish: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens whose KV cache was reused from an earlier request.
    pub cached_tokens: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// Text ready to send: whole UTF-8 characters, never part of a stop string.
    Text(String),
    /// The last event of a request that ended well.
    Done(GenerationSummary),
    /// The last event of a request that could not finish.
    Failed(GenerateError),
}

/// An admitted request: its prompt length, and its events as they are made. Dropping the
/// receiver cancels the request; its slot is freed at the next step.
pub struct Generation {
    pub prompt_tokens: u32,
    pub events: mpsc::UnboundedReceiver<GenerationEvent>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateError {
    /// A field the client sent cannot be used (a 422 naming the field).
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(
        "the prompt has {prompt_tokens} tokens but the context window of a request holds \
         {context}: shorten the messages or the prompt"
    )]
    PromptTooLong { prompt_tokens: u32, context: u32 },
    /// Every slot is busy and the waiting queue is full (a 429).
    #[error("model '{model}' is busy: every slot is taken and {waiting} requests are waiting")]
    Busy {
        model: String,
        waiting: usize,
        retry_after: Duration,
    },
    #[error("the request's deadline passed before it could be answered")]
    DeadlineExceeded,
    #[error("model '{model}' is not ready: {state}")]
    NotReady { model: String, state: String },
    /// The engine failed (a 500).
    #[error("generation failed: {0}")]
    Failed(String),
}

impl GenerateError {
    /// The HTTP status and error code a client gets for this refusal.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            GenerateError::Invalid { .. } => (422, "invalid_request"),
            GenerateError::PromptTooLong { .. } => (422, "prompt_too_long"),
            GenerateError::Busy { .. } => (429, "model_busy"),
            GenerateError::DeadlineExceeded => (504, "deadline_exceeded"),
            GenerateError::NotReady { .. } => (503, "model_not_ready"),
            GenerateError::Failed(_) => (500, "generation_failed"),
        }
    }

    /// Whole seconds for a `Retry-After` header (at least 1), when the refusal has one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            GenerateError::Busy { retry_after, .. } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            _ => None,
        }
    }
}

/// A loaded generative model.
pub trait TextGenerator: Send + Sync {
    /// What `/info` shows: context size, slots, threads, quantisation...
    fn describe(&self) -> serde_json::Value;
    /// The most tokens (prompt and answer) one request may hold.
    fn context_per_request(&self) -> u32;
    /// Admits a request, or refuses it at once (bad input, prompt too long, queue full).
    fn generate(&self, request: GenerationRequest) -> Result<Generation, GenerateError>;
}

/// Called once if a loaded generator stops serving, with the reason.
pub type GeneratorFailureHook = Box<dyn FnOnce(String) + Send>;

/// Loads the generator named `name` from a model file; an error is the reason `/ready` shows.
pub type GeneratorLoader = Arc<
    dyn Fn(&str, &Path, GeneratorFailureHook) -> Result<Arc<dyn TextGenerator>, String>
        + Send
        + Sync,
>;

/// Whether a configured model path is a generative model file (GGUF) rather than a folder.
pub fn is_generator_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}
