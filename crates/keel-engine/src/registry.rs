//! Every configured model, its loading state, and readiness.
//!
//! Folders are inspected at once (cheap: a few JSON files), so each model's task is known
//! before its weights load; weights load in the background, one thread per model, and each
//! model runs one warm-up inference before it counts as ready. Liveness never depends on
//! this; readiness (`/ready`) is exactly "every model is `Ready` and we are not draining".
//! A model whose backend keeps panicking once serving is marked failed by its worker.
//! The handle of a ready model is [`crate::model`]. Generative models (a `.gguf` file, see
//! [`crate::generate`]) have slots of their own here, loaded by their own loader, and count
//! towards readiness like the others.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use keel_telemetry::metrics::names;
use serde::Serialize;
use tokio::sync::watch;

use crate::backend::{Backend, BackendLoader, EncodedBatch, ImageBatch};
use crate::error::{EngineError, LoadError};
use crate::generate::{is_generator_path, GeneratorLoader, TextGenerator};
use crate::model::Preparation;
use crate::spec::{ModelSpec, Task};
use crate::tokenize::TextTokenizer;
use crate::worker::{self, FailureHook, QueueLimits, WorkerConfig};

// Kept here too, where they were first exported, so `keel_engine::registry::Inference` and
// `keel_engine::registry::LoadedModel` still name them.
pub use crate::model::{Inference, LoadedModel};

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
    /// Bounds on uploaded images, checked before decoding.
    pub image_limits: keel_vision::DecodeLimits,
}

#[derive(Clone)]
pub enum ModelState {
    Loading,
    Ready(Arc<LoadedModel>),
    /// Why the model cannot serve, as `/ready` shows it.
    Failed(String),
}

impl ModelState {
    pub fn status(&self) -> ModelStatus {
        match self {
            ModelState::Loading => ModelStatus::Loading,
            ModelState::Ready(_) => ModelStatus::Ready,
            ModelState::Failed(_) => ModelStatus::Failed,
        }
    }
}

/// One model's state as `/ready`, `/info` and `/v1/models` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelStatus {
    Loading,
    Ready,
    Failed,
}

/// The replica's readiness, the `status` of `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessStatus {
    /// Every model is ready.
    Ready,
    /// Some model is still loading, none has failed.
    Loading,
    /// Some model failed to load, or failed while serving.
    Failed,
    /// Shutting down: no new traffic, whatever the models' states.
    Draining,
}

struct Slot {
    source: ModelSource,
    spec: Option<ModelSpec>,
    state: RwLock<ModelState>,
}

impl Slot {
    // Poisoning policy of the workspace: a lock whose holder panicked is used anyway
    // (`PoisonError::into_inner`). What the locks guard is small (a state, a map, a counter)
    // and every write replaces it whole, so it is never left half-changed.
    fn state(&self) -> RwLockReadGuard<'_, ModelState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_state(&self, state: ModelState) {
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = state;
    }
}

#[derive(Clone)]
enum GeneratorState {
    Loading,
    Ready(Arc<dyn TextGenerator>),
    Failed(String),
}

impl GeneratorState {
    fn status(&self) -> ModelStatus {
        match self {
            GeneratorState::Loading => ModelStatus::Loading,
            GeneratorState::Ready(_) => ModelStatus::Ready,
            GeneratorState::Failed(_) => ModelStatus::Failed,
        }
    }

    fn reason(&self) -> Option<String> {
        match self {
            GeneratorState::Failed(r) => Some(r.clone()),
            _ => None,
        }
    }
}

struct GeneratorSlot {
    source: ModelSource,
    state: RwLock<GeneratorState>,
}

impl GeneratorSlot {
    fn state(&self) -> GeneratorState {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

pub struct ModelRegistry {
    slots: Vec<Slot>,
    generators: Vec<GeneratorSlot>,
    draining: AtomicBool,
    changes: watch::Sender<u64>,
}

#[derive(Debug, Serialize)]
pub struct ModelReadiness {
    pub state: ModelStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ReadinessReport {
    pub status: ReadinessStatus,
    pub models: BTreeMap<String, ModelReadiness>,
}

impl ReadinessReport {
    pub fn is_ready(&self) -> bool {
        self.status == ReadinessStatus::Ready
    }
}

/// What `/info` and `/v1/models` show about one configured model.
#[derive(Debug, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub path: PathBuf,
    pub state: ModelStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<crate::spec::Architecture>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<usize>,
    /// An image model's input tensor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_size: Option<InputSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// A generative model's engine facts (context, slots, threads, quantisation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<serde_json::Value>,
}

impl ModelRegistry {
    /// Inspects each folder now; a folder that cannot be served is marked failed, not fatal.
    pub fn new(sources: Vec<ModelSource>) -> Arc<Self> {
        let (generators, sources): (Vec<_>, Vec<_>) = sources
            .into_iter()
            .partition(|s| is_generator_path(&s.path));
        let generators = generators
            .into_iter()
            .map(|source| GeneratorSlot {
                source,
                state: RwLock::new(GeneratorState::Loading),
            })
            .collect();
        let slots = sources
            .into_iter()
            .map(|source| {
                let (spec, state) = match ModelSpec::inspect(&source.path) {
                    Ok(spec) => (Some(spec), ModelState::Loading),
                    Err(e) => (None, ModelState::Failed(LoadError::from(e).to_string())),
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
            generators,
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
            // The worker holds only a weak reference: the registry owns the worker's queue.
            let weak = Arc::downgrade(self);
            let on_failed: FailureHook = Box::new(move |reason| {
                if let Some(registry) = weak.upgrade() {
                    let model = &registry.slots[index].source.name;
                    tracing::error!(%model, %reason, "model failed while serving");
                    registry.mark_failed(index, reason);
                }
            });
            std::thread::Builder::new()
                .name(format!("keel-load-{index}"))
                .spawn(move || {
                    let name = registry.slots[index].source.name.clone();
                    let started = Instant::now();
                    match load(&name, spec, &loader, &options, on_failed) {
                        Ok(model) => {
                            tracing::info!(model = %name, load_ms = started.elapsed().as_millis() as u64, "model ready");
                            metrics::gauge!(names::MODEL_READY, "model" => name).set(1.0);
                            registry.set_state(index, ModelState::Ready(Arc::new(model)));
                        }
                        Err(e) => {
                            let reason = e.to_string();
                            tracing::error!(model = %name, %reason, "model failed to load");
                            registry.mark_failed(index, reason);
                        }
                    }
                })
                .expect("spawning a model loader thread");
        }
        for slot in &self.slots {
            if let ModelState::Failed(reason) = &*slot.state() {
                tracing::error!(model = %slot.source.name, %reason, "model failed to load");
            }
        }
    }

    /// Loads every generative model in the background, one thread each.
    pub fn start_generators(self: &Arc<Self>, loader: GeneratorLoader) {
        for index in 0..self.generators.len() {
            let (registry, loader) = (self.clone(), loader.clone());
            let weak = Arc::downgrade(self);
            let on_failed = Box::new(move |reason: String| {
                if let Some(registry) = weak.upgrade() {
                    let model = &registry.generators[index].source.name;
                    tracing::error!(%model, %reason, "model failed while serving");
                    registry.set_generator(index, GeneratorState::Failed(reason));
                }
            });
            std::thread::Builder::new()
                .name(format!("keel-load-gen-{index}"))
                .spawn(move || {
                    let source = &registry.generators[index].source;
                    let started = Instant::now();
                    let state = match loader(&source.name, &source.path, on_failed) {
                        Ok(generator) => {
                            tracing::info!(model = %source.name, load_ms = started.elapsed().as_millis() as u64, "model ready");
                            GeneratorState::Ready(generator)
                        }
                        Err(reason) => {
                            tracing::error!(model = %source.name, %reason, "model failed to load");
                            GeneratorState::Failed(reason)
                        }
                    };
                    registry.set_generator(index, state);
                })
                .expect("spawning a model loader thread");
        }
    }

    fn set_generator(&self, index: usize, state: GeneratorState) {
        let slot = &self.generators[index];
        let ready = matches!(state, GeneratorState::Ready(_));
        metrics::gauge!(names::MODEL_READY, "model" => slot.source.name.clone()).set(if ready {
            1.0
        } else {
            0.0
        });
        *slot.state.write().unwrap_or_else(PoisonError::into_inner) = state;
        self.changes.send_modify(|n| *n += 1);
    }

    /// The names of the generative models, in configuration order.
    pub fn generator_names(&self) -> Vec<String> {
        self.generators
            .iter()
            .map(|g| g.source.name.clone())
            .collect()
    }

    /// The generative model named `name`, if it is ready.
    pub fn generator(&self, name: &str) -> Result<Arc<dyn TextGenerator>, EngineError> {
        let slot = self
            .generators
            .iter()
            .find(|g| g.source.name == name)
            .ok_or_else(|| EngineError::UnknownModel(name.to_string()))?;
        match slot.state() {
            GeneratorState::Ready(g) => Ok(g),
            GeneratorState::Loading => Err(EngineError::NotReady {
                name: name.to_string(),
                state: "loading".into(),
            }),
            GeneratorState::Failed(reason) => Err(EngineError::NotReady {
                name: name.to_string(),
                state: format!("failed: {reason}"),
            }),
        }
    }

    fn set_state(&self, index: usize, state: ModelState) {
        self.slots[index].set_state(state);
        self.changes.send_modify(|n| *n += 1);
    }

    /// The model at `index` cannot serve (it failed to load, or failed while serving).
    fn mark_failed(&self, index: usize, reason: String) {
        let name = self.slots[index].source.name.clone();
        metrics::gauge!(names::MODEL_READY, "model" => name).set(0.0);
        self.set_state(index, ModelState::Failed(reason));
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
            let state = slot.state();
            loading |= matches!(*state, ModelState::Loading);
            failed |= matches!(*state, ModelState::Failed(_));
            let reason = match &*state {
                ModelState::Failed(r) => Some(r.clone()),
                _ => None,
            };
            models.insert(
                slot.source.name.clone(),
                ModelReadiness {
                    state: state.status(),
                    reason,
                },
            );
        }
        for slot in &self.generators {
            let state = slot.state();
            loading |= matches!(state, GeneratorState::Loading);
            failed |= matches!(state, GeneratorState::Failed(_));
            models.insert(
                slot.source.name.clone(),
                ModelReadiness {
                    state: state.status(),
                    reason: state.reason(),
                },
            );
        }
        let status = if self.draining.load(Ordering::SeqCst) {
            ReadinessStatus::Draining
        } else if failed {
            ReadinessStatus::Failed
        } else if loading {
            ReadinessStatus::Loading
        } else {
            ReadinessStatus::Ready
        };
        ReadinessReport { status, models }
    }

    pub fn summaries(&self) -> Vec<ModelSummary> {
        self.slots
            .iter()
            .map(|slot| {
                let spec = slot.spec.as_ref();
                let state = slot.state();
                ModelSummary {
                    name: slot.source.name.clone(),
                    path: slot.source.path.clone(),
                    state: state.status(),
                    task: spec.map(|s| s.task),
                    architecture: spec.map(|s| s.architecture),
                    max_input_tokens: match &*state {
                        ModelState::Ready(m) => m.max_input_tokens(),
                        _ => spec
                            .filter(|s| s.image.is_none())
                            .map(|s| s.max_input_tokens),
                    },
                    input_size: spec.and_then(|s| s.image.as_ref()).map(|i| InputSize {
                        channels: 3,
                        height: i.height,
                        width: i.width,
                    }),
                    num_labels: spec
                        .filter(|s| s.task.is_classifier())
                        .map(|s| s.labels.len()),
                    dimensions: spec.map(|s| s.dimensions),
                    labels: spec.map(|s| s.labels.clone()).unwrap_or_default(),
                    engine: None,
                }
            })
            .chain(self.generators.iter().map(|slot| {
                let state = slot.state();
                let ready = match &state {
                    GeneratorState::Ready(g) => Some(g),
                    _ => None,
                };
                ModelSummary {
                    name: slot.source.name.clone(),
                    path: slot.source.path.clone(),
                    state: state.status(),
                    task: Some(Task::TextGeneration),
                    architecture: None,
                    max_input_tokens: ready.map(|g| g.context_per_request() as usize),
                    input_size: None,
                    num_labels: None,
                    dimensions: None,
                    labels: Vec::new(),
                    engine: ready.map(|g| g.describe()),
                }
            }))
            .collect()
    }

    /// The task of the configured model `name`, whatever its state.
    pub fn task_of(&self, name: &str) -> Option<Task> {
        self.slots
            .iter()
            .find(|s| s.source.name == name)
            .and_then(|s| s.spec.as_ref().map(|spec| spec.task))
    }

    /// Whether any configured model (loading, ready or not) is for `task`.
    pub fn serves_task(&self, task: Task) -> bool {
        self.slots
            .iter()
            .any(|s| s.spec.as_ref().is_some_and(|spec| spec.task == task))
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
        match &*slot.state() {
            ModelState::Ready(model) => Ok(model.clone()),
            ModelState::Failed(reason) => Err(EngineError::NotReady {
                name: slot.source.name.clone(),
                state: format!("failed: {reason}"),
            }),
            ModelState::Loading => Err(EngineError::NotReady {
                name: slot.source.name.clone(),
                state: "loading".into(),
            }),
        }
    }
}

/// The `[channels, height, width]` an image model takes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct InputSize {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// Loads the tokenizer (or image preprocessing) and the backend, proves them with one
/// warm-up inference, and starts the model's worker.
fn load(
    name: &str,
    spec: ModelSpec,
    loader: &BackendLoader,
    options: &EngineOptions,
    on_failed: FailureHook,
) -> Result<LoadedModel, LoadError> {
    if let Some(image) = &spec.image {
        let backend = loader(&spec)?;
        // Warm-up with a mid-grey image: proves the graph takes the preprocessed shape.
        let batch = ImageBatch {
            pixels: vec![0.0; 3 * image.height * image.width],
            batch_size: 1,
            height: image.height,
            width: image.width,
        };
        let out = backend.forward_images(&batch).map_err(LoadError::WarmUp)?;
        check_warm_up(&out, spec.dimensions)?;
        let jobs = spawn_worker(name, backend, options, 1, 0, on_failed);
        let limits = options.image_limits;
        return Ok(LoadedModel::new(
            name.to_string(),
            spec,
            Preparation::Image(limits),
            jobs,
        ));
    }
    let max_tokens = options
        .max_input_tokens
        .map_or(spec.max_input_tokens, |cap| cap.min(spec.max_input_tokens));
    let tokenizer = TextTokenizer::load(&spec.dir, max_tokens, options.truncate)?;
    let backend = loader(&spec)?;

    // Warm-up: one real inference proves the weights work before we claim readiness.
    let probe = tokenizer
        .encode(&["Keel warm-up.".to_string()])
        .map_err(LoadError::WarmUpInput)?;
    let batch = EncodedBatch::pad(&[&probe[0]], tokenizer.pad_id());
    let out = backend.forward(&batch).map_err(LoadError::WarmUp)?;
    check_warm_up(&out, spec.dimensions)?;
    let pad_id = tokenizer.pad_id();
    let jobs = spawn_worker(name, backend, options, max_tokens, pad_id, on_failed);
    Ok(LoadedModel::new(
        name.to_string(),
        spec,
        Preparation::Text(Box::new(tokenizer)),
        jobs,
    ))
}

fn check_warm_up(out: &[Vec<f32>], dimensions: usize) -> Result<(), LoadError> {
    if out.len() != 1 || out[0].len() != dimensions || out[0].iter().any(|x| !x.is_finite()) {
        return Err(LoadError::WarmUpOutput { dimensions });
    }
    Ok(())
}

/// Starts the model's worker; `longest` is the cost of its largest single input, which a
/// batch must always have room for.
fn spawn_worker(
    name: &str,
    backend: Box<dyn Backend>,
    options: &EngineOptions,
    longest: usize,
    pad_id: u32,
    on_failed: FailureHook,
) -> crate::queue::JobQueue {
    worker::spawn(
        WorkerConfig {
            model: name.to_string(),
            max_batch_size: options.max_batch_size,
            max_batch_tokens: options.max_batch_tokens.max(longest),
            max_batch_delay: options.max_batch_delay,
            pad_id,
        },
        backend,
        QueueLimits {
            max_requests: options.max_queue_requests,
            max_tokens: options.max_queue_tokens,
            max_wait: options.max_queue_wait,
        },
        on_failed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, BackendError};
    use crate::testing::{embedding_folder, ScriptedBackend};
    use crate::worker::PANICS_BEFORE_FAILED;

    const WIDTH: usize = 4;

    fn options() -> EngineOptions {
        EngineOptions {
            max_batch_size: 8,
            max_batch_tokens: 1000,
            max_batch_delay: Duration::ZERO,
            max_queue_requests: 8,
            max_queue_tokens: 1000,
            max_queue_wait: None,
            max_input_tokens: None,
            truncate: true,
            image_limits: keel_vision::DecodeLimits::default(),
        }
    }

    fn source(name: &str, path: &std::path::Path) -> ModelSource {
        ModelSource {
            name: name.into(),
            path: path.to_path_buf(),
        }
    }

    fn loader(
        load: impl Fn(&ModelSpec) -> Result<ScriptedBackend, BackendError> + Send + Sync + 'static,
    ) -> BackendLoader {
        Arc::new(move |spec| load(spec).map(|b| Box::new(b) as Box<dyn Backend>))
    }

    /// The report once no model is loading (bounded: a test that hangs fails instead).
    async fn settled(registry: &ModelRegistry) -> ReadinessReport {
        let mut changes = registry.subscribe();
        let wait = async {
            loop {
                let report = registry.readiness();
                if report
                    .models
                    .values()
                    .all(|m| m.state != ModelStatus::Loading)
                {
                    return report;
                }
                changes.changed().await.expect("the registry is alive");
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("every model settles")
    }

    fn json(report: &ReadinessReport) -> serde_json::Value {
        serde_json::to_value(report).unwrap()
    }

    #[tokio::test]
    async fn folders_that_cannot_load_are_failed_with_their_reasons() {
        let broken = embedding_folder(WIDTH);
        let narrow = embedding_folder(WIDTH);
        let registry = ModelRegistry::new(vec![
            source("missing", std::path::Path::new("/nonexistent/keel-model")),
            source("broken", broken.path()),
            source("narrow", narrow.path()),
        ]);
        let broken_dir = broken.path().to_path_buf();
        registry.start_loading(
            loader(move |spec| {
                if spec.dir == broken_dir {
                    Err(BackendError::load(&spec.dir, "no weights here"))
                } else {
                    // One value short of the model's width: warm-up must catch it.
                    Ok(ScriptedBackend::new(WIDTH - 1))
                }
            }),
            options(),
        );
        let report = settled(&registry).await;
        assert_eq!(report.status, ReadinessStatus::Failed);
        assert!(!report.is_ready());
        let body = json(&report);
        assert_eq!(body["status"], "failed");
        for (model, why) in [
            ("missing", "no such model folder"),
            ("broken", "no weights here"),
            ("narrow", "warm-up inference gave an unexpected output"),
        ] {
            assert_eq!(body["models"][model]["state"], "failed", "{model}");
            let reason = body["models"][model]["reason"].as_str().unwrap();
            assert!(reason.contains(why), "{model}: {reason}");
        }
        assert!(matches!(
            registry.get(Some("broken"), Task::Embedding),
            Err(EngineError::NotReady { .. })
        ));
    }

    #[tokio::test]
    async fn a_model_is_loading_until_warmed_up_then_ready_then_draining() {
        let folder = embedding_folder(WIDTH);
        let registry = ModelRegistry::new(vec![source("tiny", folder.path())]);
        let report = registry.readiness();
        assert_eq!(report.status, ReadinessStatus::Loading);
        assert_eq!(json(&report)["models"]["tiny"]["state"], "loading");

        let backend = ScriptedBackend::new(WIDTH);
        let calls = backend.calls.clone();
        let backend = std::sync::Mutex::new(Some(backend));
        registry.start_loading(
            loader(move |_| Ok(backend.lock().unwrap().take().expect("loaded once"))),
            options(),
        );
        let report = settled(&registry).await;
        assert_eq!(report.status, ReadinessStatus::Ready, "{report:?}");
        assert!(report.is_ready());
        assert_eq!(
            json(&report),
            serde_json::json!({"status": "ready", "models": {"tiny": {"state": "ready"}}})
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one warm-up inference");
        assert_eq!(registry.summaries()[0].state, ModelStatus::Ready);

        let model = registry.get(None, Task::Embedding).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let answer = model
            .embed(vec!["keel keel".into()], deadline)
            .await
            .unwrap();
        assert_eq!(answer.outputs.len(), 1);
        assert_eq!(answer.tokens, [2]);

        registry.set_draining();
        let report = registry.readiness();
        assert_eq!(report.status, ReadinessStatus::Draining);
        assert!(!report.is_ready());
        assert_eq!(json(&report)["status"], "draining");
        assert_eq!(json(&report)["models"]["tiny"]["state"], "ready");
    }

    #[tokio::test]
    async fn a_backend_that_keeps_panicking_fails_its_model_on_ready() {
        let folder = embedding_folder(WIDTH);
        let registry = ModelRegistry::new(vec![source("fragile", folder.path())]);
        // Call 0 is the warm-up; every call after it panics.
        registry.start_loading(
            loader(|_| Ok(ScriptedBackend::panicking_on(WIDTH, |call| call > 0))),
            options(),
        );
        assert!(settled(&registry).await.is_ready());
        let model = registry.get(Some("fragile"), Task::Embedding).unwrap();
        for k in 0..PANICS_BEFORE_FAILED {
            assert!(registry.readiness().is_ready(), "failed after {k} panics");
            let deadline = Instant::now() + Duration::from_secs(10);
            match model.embed(vec!["keel".into()], deadline).await {
                Err(e @ EngineError::BackendPanicked { .. }) => {
                    assert!(e.to_string().contains("fragile"), "{e}")
                }
                other => panic!("expected the panic's error, got {other:?}"),
            }
        }
        let report = registry.readiness();
        assert_eq!(report.status, ReadinessStatus::Failed);
        let reason = report.models["fragile"].reason.as_deref().unwrap();
        assert!(reason.contains("panicked"), "{reason}");
        assert_eq!(json(&report)["models"]["fragile"]["state"], "failed");
        assert!(matches!(
            registry.get(Some("fragile"), Task::Embedding),
            Err(EngineError::NotReady { .. })
        ));
    }
}
