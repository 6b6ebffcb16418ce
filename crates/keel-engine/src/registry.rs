//! Every configured model, its loading state, and readiness.
//!
//! Folders are inspected at once (cheap: a few JSON files), so each model's task is known
//! before its weights load; weights load in the background, one thread per model, and each
//! model runs one warm-up inference before it counts as ready. Liveness never depends on
//! this; readiness (`/ready`) is exactly "every model is `Ready` and we are not draining".

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use keel_telemetry::metrics::names;

use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::backend::{BackendLoader, EncodedBatch};
use crate::error::EngineError;
use crate::postprocess;
use crate::spec::{ModelSpec, Task};
use crate::tokenize::TextTokenizer;
use crate::worker::{self, Admission, Job, JobQueue, WorkerConfig};

#[derive(Debug, Clone)]
pub struct ModelSource {
    pub name: String,
    pub path: PathBuf,
}

/// Engine settings shared by every model.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_batch_delay: Duration,
    pub max_queue_requests: usize,
    pub max_queue_tokens: usize,
    /// Refuse a request at once when its predicted queue wait is longer (None: no bound).
    pub max_queue_wait: Option<Duration>,
    /// Lower cap on the model's own maximum input length, if set.
    pub max_input_tokens: Option<usize>,
    pub truncate: bool,
}

#[derive(Clone)]
pub enum ModelState {
    Loading,
    Ready(Arc<LoadedModel>),
    Failed(String),
}

impl ModelState {
    pub fn label(&self) -> &'static str {
        match self {
            ModelState::Loading => "loading",
            ModelState::Ready(_) => "ready",
            ModelState::Failed(_) => "failed",
        }
    }
}

struct Slot {
    source: ModelSource,
    spec: Option<ModelSpec>,
    state: RwLock<ModelState>,
}

pub struct ModelRegistry {
    slots: Vec<Slot>,
    draining: AtomicBool,
    changes: watch::Sender<u64>,
}

#[derive(Debug, Serialize)]
pub struct ModelReadiness {
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ReadinessReport {
    pub status: &'static str,
    pub models: BTreeMap<String, ModelReadiness>,
}

impl ReadinessReport {
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }
}

/// What `/info` and `/v1/models` show about one configured model.
#[derive(Debug, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub path: PathBuf,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<crate::spec::Architecture>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

impl ModelRegistry {
    /// Inspects each folder now; a folder that cannot be served is marked failed, not fatal.
    pub fn new(sources: Vec<ModelSource>) -> Arc<Self> {
        let slots = sources
            .into_iter()
            .map(|source| {
                let (spec, state) = match ModelSpec::inspect(&source.path) {
                    Ok(spec) => (Some(spec), ModelState::Loading),
                    Err(e) => (None, ModelState::Failed(e.to_string())),
                };
                Slot {
                    source,
                    spec,
                    state: RwLock::new(state),
                }
            })
            .collect();
        Arc::new(Self {
            slots,
            draining: AtomicBool::new(false),
            changes: watch::channel(0).0,
        })
    }

    /// Loads every inspectable model in the background, in parallel.
    pub fn start_loading(self: &Arc<Self>, loader: BackendLoader, options: EngineOptions) {
        for index in 0..self.slots.len() {
            let Some(spec) = self.slots[index].spec.clone() else {
                continue;
            };
            let (registry, loader, options) = (self.clone(), loader.clone(), options.clone());
            std::thread::Builder::new()
                .name(format!("keel-load-{index}"))
                .spawn(move || {
                    let name = registry.slots[index].source.name.clone();
                    let started = Instant::now();
                    let state = match load(&name, spec, &loader, &options) {
                        Ok(model) => {
                            tracing::info!(model = %name, load_ms = started.elapsed().as_millis() as u64, "model ready");
                            ModelState::Ready(Arc::new(model))
                        }
                        Err(reason) => {
                            tracing::error!(model = %name, %reason, "model failed to load");
                            ModelState::Failed(reason)
                        }
                    };
                    let ready = matches!(state, ModelState::Ready(_));
                    metrics::gauge!(names::MODEL_READY, "model" => name.clone())
                        .set(if ready { 1.0 } else { 0.0 });
                    *registry.slots[index].state.write().unwrap() = state;
                    registry.changes.send_modify(|n| *n += 1);
                })
                .expect("spawning a model loader thread");
        }
        for slot in &self.slots {
            if let ModelState::Failed(reason) = &*slot.state.read().unwrap() {
                tracing::error!(model = %slot.source.name, %reason, "model failed to load");
            }
        }
    }

    /// Notified whenever a model changes state.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.changes.send_modify(|n| *n += 1);
    }

    pub fn readiness(&self) -> ReadinessReport {
        let mut models = BTreeMap::new();
        let (mut loading, mut failed) = (false, false);
        for slot in &self.slots {
            let state = slot.state.read().unwrap();
            loading |= matches!(*state, ModelState::Loading);
            failed |= matches!(*state, ModelState::Failed(_));
            let reason = match &*state {
                ModelState::Failed(r) => Some(r.clone()),
                _ => None,
            };
            models.insert(
                slot.source.name.clone(),
                ModelReadiness {
                    state: state.label(),
                    reason,
                },
            );
        }
        let status = if self.draining.load(Ordering::SeqCst) {
            "draining"
        } else if failed {
            "failed"
        } else if loading {
            "loading"
        } else {
            "ready"
        };
        ReadinessReport { status, models }
    }

    pub fn summaries(&self) -> Vec<ModelSummary> {
        self.slots
            .iter()
            .map(|slot| {
                let spec = slot.spec.as_ref();
                ModelSummary {
                    name: slot.source.name.clone(),
                    path: slot.source.path.clone(),
                    state: slot.state.read().unwrap().label(),
                    task: spec.map(|s| s.task),
                    architecture: spec.map(|s| s.architecture),
                    max_input_tokens: match &*slot.state.read().unwrap() {
                        ModelState::Ready(m) => Some(m.tokenizer.max_tokens()),
                        _ => spec.map(|s| s.max_input_tokens),
                    },
                    dimensions: spec.map(|s| s.dimensions),
                    labels: spec.map(|s| s.labels.clone()).unwrap_or_default(),
                }
            })
            .collect()
    }

    /// The model named `name`, or the first configured model for `task`.
    pub fn get(&self, name: Option<&str>, task: Task) -> Result<Arc<LoadedModel>, EngineError> {
        let slot = match name {
            Some(name) => {
                let slot = self
                    .slots
                    .iter()
                    .find(|s| s.source.name == name)
                    .ok_or_else(|| EngineError::UnknownModel(name.to_string()))?;
                if let Some(spec) = &slot.spec {
                    if spec.task != task {
                        return Err(EngineError::WrongTask {
                            name: name.to_string(),
                            actual: spec.task.as_str(),
                            wanted: task.as_str(),
                        });
                    }
                }
                slot
            }
            None => self
                .slots
                .iter()
                .find(|s| s.spec.as_ref().is_some_and(|spec| spec.task == task))
                .ok_or(EngineError::NoModelForTask(task.as_str()))?,
        };
        match &*slot.state.read().unwrap() {
            ModelState::Ready(model) => Ok(model.clone()),
            other => Err(EngineError::NotReady {
                name: slot.source.name.clone(),
                state: match other {
                    ModelState::Failed(reason) => format!("failed: {reason}"),
                    _ => "loading".into(),
                },
            }),
        }
    }
}

fn load(
    name: &str,
    spec: ModelSpec,
    loader: &BackendLoader,
    options: &EngineOptions,
) -> Result<LoadedModel, String> {
    let max_tokens = options
        .max_input_tokens
        .map_or(spec.max_input_tokens, |cap| cap.min(spec.max_input_tokens));
    let tokenizer = TextTokenizer::load(&spec.dir, max_tokens, options.truncate)?;
    let backend = loader(&spec).map_err(|e| e.0)?;

    // Warm-up: one real inference proves the weights work before we claim readiness.
    let probe = tokenizer
        .encode(&["Keel warm-up.".to_string()])
        .map_err(|e| e.to_string())?;
    let batch = EncodedBatch::pad(&[&probe[0]], tokenizer.pad_id());
    let out = backend
        .forward(&batch)
        .map_err(|e| format!("warm-up inference failed: {e}"))?;
    if out.len() != 1 || out[0].len() != spec.dimensions || out[0].iter().any(|x| !x.is_finite()) {
        return Err(format!(
            "warm-up inference gave an unexpected output (expected {} finite values)",
            spec.dimensions
        ));
    }

    let jobs = worker::spawn(
        WorkerConfig {
            model: name.to_string(),
            max_batch_size: options.max_batch_size,
            max_batch_tokens: options.max_batch_tokens.max(max_tokens),
            max_batch_delay: options.max_batch_delay,
            pad_id: tokenizer.pad_id(),
        },
        backend,
        options.max_queue_requests,
        options.max_queue_tokens,
        options.max_queue_wait,
    );
    Ok(LoadedModel {
        name: name.to_string(),
        spec,
        tokenizer,
        jobs,
    })
}

/// A model that is ready to serve.
pub struct LoadedModel {
    pub name: String,
    pub spec: ModelSpec,
    tokenizer: TextTokenizer,
    jobs: JobQueue,
}

/// Vectors in input order, the token count of each input after truncation, and timings.
#[derive(Debug)]
pub struct Inference {
    pub outputs: Vec<Vec<f32>>,
    pub tokens: Vec<usize>,
    pub queue_wait: Duration,
    pub compute: Duration,
    pub batch_size: usize,
}

/// Keeps the in-flight gauge honest even when the caller's future is dropped mid-way.
struct InFlight(String);

impl InFlight {
    fn enter(model: &str) -> Self {
        metrics::gauge!(names::IN_FLIGHT, "model" => model.to_string()).increment(1.0);
        Self(model.to_string())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(names::IN_FLIGHT, "model" => self.0.clone()).decrement(1.0);
    }
}

impl LoadedModel {
    pub fn max_input_tokens(&self) -> usize {
        self.tokenizer.max_tokens()
    }

    /// Embeddings (normalized when the model says so) for `texts`.
    pub async fn embed(
        self: &Arc<Self>,
        texts: Vec<String>,
        deadline: Instant,
    ) -> Result<Inference, EngineError> {
        let characters = count_characters(&texts);
        let mut inference = self.run(texts, deadline).await?;
        if self.spec.normalize {
            inference
                .outputs
                .iter_mut()
                .for_each(|v| postprocess::normalize(v));
        }
        self.log(&inference, characters, None);
        Ok(inference)
    }

    /// Label scores (in `spec.labels` order) for `texts`.
    pub async fn classify(
        self: &Arc<Self>,
        texts: Vec<String>,
        deadline: Instant,
    ) -> Result<Inference, EngineError> {
        let characters = count_characters(&texts);
        let mut inference = self.run(texts, deadline).await?;
        let mut top = Vec::with_capacity(inference.outputs.len());
        for v in inference.outputs.iter_mut() {
            *v = postprocess::scores(v, self.spec.score_function);
            let (index, score) = v
                .iter()
                .copied()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or((0, 0.0));
            let label = self.spec.labels.get(index).cloned().unwrap_or_default();
            metrics::counter!(names::PREDICTIONS, "model" => self.name.clone(), "label" => label.clone())
                .increment(1);
            metrics::histogram!(names::PREDICTION_SCORE, "model" => self.name.clone(), "label" => label.clone())
                .record(score as f64);
            top.push((label, score));
        }
        self.log(&inference, characters, Some(&top));
        Ok(inference)
    }

    /// The one log line per inference.
    fn log(&self, inference: &Inference, characters: usize, top: Option<&[(String, f32)]>) {
        let (label, score) = match top {
            Some([(label, score)]) => (Some(label.as_str()), Some(*score)),
            _ => (None, None),
        };
        let labels = top.filter(|t| t.len() > 1).map(|t| {
            t.iter()
                .map(|(l, _)| l.as_str())
                .collect::<Vec<_>>()
                .join(",")
        });
        tracing::info!(
            target: "keel::inference",
            model = %self.name,
            task = self.spec.task.as_str(),
            inputs = inference.outputs.len(),
            input_characters = characters,
            input_tokens = inference.tokens.iter().sum::<usize>(),
            batch_size = inference.batch_size,
            queue_ms = inference.queue_wait.as_secs_f64() * 1e3,
            compute_ms = inference.compute.as_secs_f64() * 1e3,
            label,
            score,
            labels,
            "inference"
        );
    }

    /// Tokenizes on the blocking pool, queues the job, and waits for its answer until the
    /// deadline. Dropping this future (client gone) closes the reply channel, and the worker
    /// then skips the job.
    async fn run(
        self: &Arc<Self>,
        texts: Vec<String>,
        deadline: Instant,
    ) -> Result<Inference, EngineError> {
        let _in_flight = InFlight::enter(&self.name);
        // Under overload most requests are refused: refuse before spending tokenization on
        // them when the queue alone is already over the bound.
        if let Some(wait) = self.jobs.over_bound(deadline) {
            let e = self.refused(Admission::TooSlow(wait));
            self.reject(&e);
            return Err(e);
        }
        for text in &texts {
            metrics::histogram!(names::INPUT_CHARACTERS, "model" => self.name.clone())
                .record(text.chars().count() as f64);
        }
        let model = self.clone();
        let tokenize_span = tracing::info_span!("tokenize", model = %self.name);
        let inputs = tokio::task::spawn_blocking(move || {
            tokenize_span.in_scope(|| model.tokenizer.encode(&texts))
        })
        .await
        .map_err(|e| EngineError::Tokenization(e.to_string()))?
        .inspect_err(|e| self.reject(e))?;
        let tokens: Vec<usize> = inputs.iter().map(|i| i.len()).collect();
        for &n in &tokens {
            metrics::histogram!(names::INPUT_TOKENS, "model" => self.name.clone()).record(n as f64);
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs,
            tokens: tokens.iter().sum(),
            enqueued: Instant::now(),
            deadline,
            reply,
            span: tracing::Span::current(),
            queue_span: tracing::info_span!("queue_wait", model = %self.name),
        };
        self.jobs
            .try_push(job)
            .map_err(|e| self.refused(e))
            .inspect_err(|e| self.reject(e))?;
        let output = match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(answer) => answer.map_err(|_| EngineError::WorkerStopped(self.name.clone()))??,
            Err(_) => {
                metrics::counter!(names::EXPIRED, "model" => self.name.clone(), "reason" => "deadline")
                    .increment(1);
                return Err(EngineError::DeadlineExceeded);
            }
        };
        Ok(Inference {
            outputs: output.outputs,
            tokens,
            queue_wait: output.queue_wait,
            compute: output.compute,
            batch_size: output.batch_size,
        })
    }

    /// Requests waiting in this model's queue.
    pub fn queue_depth(&self) -> usize {
        self.jobs.depth()
    }

    /// The error for a request the queue refused.
    fn refused(&self, admission: Admission) -> EngineError {
        match admission {
            Admission::Full => EngineError::QueueFull(self.name.clone()),
            Admission::TooSlow(wait) => EngineError::QueueTooSlow {
                model: self.name.clone(),
                wait_ms: wait.as_millis() as u64,
            },
            Admission::Stopped => EngineError::WorkerStopped(self.name.clone()),
        }
    }

    fn reject(&self, error: &EngineError) {
        let reason = match error {
            EngineError::QueueFull(_) => "queue_full",
            EngineError::QueueTooSlow { .. } => "queue_wait",
            EngineError::EmptyInput { .. } => "empty_input",
            EngineError::InputTooLong { .. } => "input_too_long",
            EngineError::Tokenization(_) => "tokenization",
            _ => "other",
        };
        metrics::counter!(names::REJECTED, "model" => self.name.clone(), "reason" => reason)
            .increment(1);
    }
}

fn count_characters(texts: &[String]) -> usize {
    texts.iter().map(|t| t.chars().count()).sum()
}
