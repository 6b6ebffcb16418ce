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
use std::time::Instant;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backend::{BackendLoader, EncodedBatch};
use crate::error::EngineError;
use crate::postprocess;
use crate::spec::{ModelSpec, Task};
use crate::tokenize::TextTokenizer;
use crate::worker::{self, Job, WorkerConfig};

#[derive(Debug, Clone)]
pub struct ModelSource {
    pub name: String,
    pub path: PathBuf,
}

/// Engine settings shared by every model.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub max_batch_size: usize,
    pub queue_capacity: usize,
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
            queue_capacity: options.queue_capacity,
            pad_id: tokenizer.pad_id(),
        },
        backend,
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
    jobs: mpsc::Sender<Job>,
}

/// Vectors in input order, and the token count of each input after truncation.
#[derive(Debug)]
pub struct Inference {
    pub outputs: Vec<Vec<f32>>,
    pub tokens: Vec<usize>,
}

impl LoadedModel {
    pub fn max_input_tokens(&self) -> usize {
        self.tokenizer.max_tokens()
    }

    /// Embeddings (normalized when the model says so) for `texts`.
    pub async fn embed(self: &Arc<Self>, texts: Vec<String>) -> Result<Inference, EngineError> {
        let mut inference = self.run(texts).await?;
        if self.spec.normalize {
            inference
                .outputs
                .iter_mut()
                .for_each(|v| postprocess::normalize(v));
        }
        Ok(inference)
    }

    /// Label scores (in `spec.labels` order) for `texts`.
    pub async fn classify(self: &Arc<Self>, texts: Vec<String>) -> Result<Inference, EngineError> {
        let mut inference = self.run(texts).await?;
        for v in inference.outputs.iter_mut() {
            *v = postprocess::scores(v, self.spec.score_function);
        }
        Ok(inference)
    }

    async fn run(self: &Arc<Self>, texts: Vec<String>) -> Result<Inference, EngineError> {
        let model = self.clone();
        let inputs = tokio::task::spawn_blocking(move || model.tokenizer.encode(&texts))
            .await
            .map_err(|e| EngineError::Tokenization(e.to_string()))??;
        let tokens = inputs.iter().map(|i| i.len()).collect();
        let (reply, answer) = oneshot::channel();
        self.jobs
            .try_send(Job { inputs, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => EngineError::QueueFull(self.name.clone()),
                mpsc::error::TrySendError::Closed(_) => {
                    EngineError::WorkerStopped(self.name.clone())
                }
            })?;
        let outputs = answer
            .await
            .map_err(|_| EngineError::WorkerStopped(self.name.clone()))??;
        Ok(Inference { outputs, tokens })
    }
}
