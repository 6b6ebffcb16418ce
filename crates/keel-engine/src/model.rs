//! The handle of a model that is ready to serve, and the requests it answers.
//!
//! A [`LoadedModel`] pairs a model's input preparation (its tokenizer, or image decoding and
//! preprocessing) with its worker's [`JobQueue`]: `embed`, `classify` and `classify_images`
//! prepare the inputs on the blocking pool, queue them, wait for the worker's answer until
//! the request's deadline, and turn the raw vectors into embeddings or label scores.
//! Loading and readiness live in [`crate::registry`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_telemetry::metrics::names;
use keel_vision::DecodeLimits;
use tokio::sync::oneshot;

use crate::backend::ModelInput;
use crate::error::EngineError;
use crate::images::{self, ImageFacts};
use crate::postprocess;
use crate::queue::{Admission, Job, JobQueue};
use crate::spec::ModelSpec;
use crate::tokenize::TextTokenizer;

/// A model that is ready to serve.
pub struct LoadedModel {
    pub name: String,
    pub spec: ModelSpec,
    preparation: Preparation,
    jobs: JobQueue,
}

/// How a request's inputs become model inputs.
pub(crate) enum Preparation {
    Text(Box<TextTokenizer>),
    /// Images are decoded within these limits, then preprocessed as `spec.image` says.
    Image(DecodeLimits),
}

/// Vectors in input order, the token count of each input after truncation (text), what
/// each image was (images), and timings.
#[derive(Debug)]
pub struct Inference {
    pub outputs: Vec<Vec<f32>>,
    pub tokens: Vec<usize>,
    pub images: Vec<ImageFacts>,
    pub queue_wait: Duration,
    pub compute: Duration,
    pub batch_size: usize,
}

impl Inference {
    /// Decode time summed over the request's images.
    pub fn decode(&self) -> Duration {
        self.images.iter().map(|i| i.decode).sum()
    }

    /// Preprocessing time summed over the request's images.
    pub fn preprocess(&self) -> Duration {
        self.images.iter().map(|i| i.preprocess).sum()
    }
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
    pub(crate) fn new(
        name: String,
        spec: ModelSpec,
        preparation: Preparation,
        jobs: JobQueue,
    ) -> Self {
        Self {
            name,
            spec,
            preparation,
            jobs,
        }
    }

    /// The model's tokenizer (None for image models): what cuts documents into pieces the
    /// model reads whole.
    pub fn text_tokenizer(&self) -> Option<&TextTokenizer> {
        match &self.preparation {
            Preparation::Text(tokenizer) => Some(tokenizer),
            Preparation::Image(_) => None,
        }
    }

    /// The longest text input, in tokens (None for image models).
    pub fn max_input_tokens(&self) -> Option<usize> {
        match &self.preparation {
            Preparation::Text(tokenizer) => Some(tokenizer.max_tokens()),
            Preparation::Image(_) => None,
        }
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
        let top = self.score(&mut inference);
        self.log(&inference, characters, Some(&top));
        Ok(inference)
    }

    /// Label scores (in `spec.labels` order) for uploaded images, each decoded and
    /// preprocessed on the blocking pool; a bad image fails the request with its index.
    pub async fn classify_images(
        self: &Arc<Self>,
        uploads: Vec<Bytes>,
        deadline: Instant,
    ) -> Result<Inference, EngineError> {
        let _in_flight = InFlight::enter(&self.name);
        let (Preparation::Image(limits), Some(input)) = (&self.preparation, &self.spec.image)
        else {
            return Err(EngineError::WrongTask {
                name: self.name.clone(),
                actual: self.spec.task.as_str(),
                wanted: crate::spec::Task::ImageClassification.as_str(),
            });
        };
        if let Some(wait) = self.jobs.over_bound(deadline) {
            let e = self.refused(Admission::TooSlow(wait));
            self.reject(&e);
            return Err(e);
        }
        // Every image of the request at once: they share the process-wide decode slots.
        let prepared = futures_util::future::join_all(
            uploads
                .into_iter()
                .enumerate()
                .map(|(index, bytes)| images::prepare(&self.name, index, bytes, input, *limits)),
        )
        .await;
        let (inputs, facts): (Vec<ModelInput>, Vec<ImageFacts>) = prepared
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .inspect_err(|e| self.reject(e))?
            .into_iter()
            .unzip();
        let mut inference = self.queue(inputs, deadline).await?;
        inference.images = facts;
        let top = self.score(&mut inference);
        self.log(&inference, 0, Some(&top));
        Ok(inference)
    }

    /// Turns logits into scores in place, counts each top label, and returns the top labels.
    fn score(&self, inference: &mut Inference) -> Vec<(String, f32)> {
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
        top
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
        if !inference.images.is_empty() {
            // One image: its own facts; several: sums, and the sizes as a list.
            let images = &inference.images;
            let (width, height) = match images.as_slice() {
                [one] => (Some(one.width), Some(one.height)),
                _ => (None, None),
            };
            let sizes = (images.len() > 1).then(|| {
                images
                    .iter()
                    .map(|i| format!("{}x{}", i.width, i.height))
                    .collect::<Vec<_>>()
                    .join(",")
            });
            tracing::info!(
                target: "keel::inference",
                model = %self.name,
                task = self.spec.task.as_str(),
                inputs = inference.outputs.len(),
                width,
                height,
                sizes,
                bytes = images.iter().map(|i| i.bytes).sum::<usize>(),
                format = images[0].format,
                decode_ms = inference.decode().as_secs_f64() * 1e3,
                preprocess_ms = inference.preprocess().as_secs_f64() * 1e3,
                batch_size = inference.batch_size,
                queue_ms = inference.queue_wait.as_secs_f64() * 1e3,
                compute_ms = inference.compute.as_secs_f64() * 1e3,
                label,
                score,
                labels,
                "inference"
            );
            return;
        }
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
            tokenize_span.in_scope(|| match &model.preparation {
                Preparation::Text(tokenizer) => tokenizer.encode(&texts),
                Preparation::Image(_) => Err(EngineError::WrongTask {
                    name: model.name.clone(),
                    actual: model.spec.task.as_str(),
                    wanted: "text",
                }),
            })
        })
        .await
        .map_err(|e| tokenization_unfinished(&self.name, e))?
        .inspect_err(|e| self.reject(e))?;
        let tokens: Vec<usize> = inputs.iter().map(|i| i.len()).collect();
        for &n in &tokens {
            metrics::histogram!(names::INPUT_TOKENS, "model" => self.name.clone()).record(n as f64);
        }
        let mut inference = self
            .queue(inputs.into_iter().map(ModelInput::Text).collect(), deadline)
            .await?;
        inference.tokens = tokens;
        Ok(inference)
    }

    /// Queues prepared inputs and waits for the worker's answer until the deadline.
    async fn queue(
        self: &Arc<Self>,
        inputs: Vec<ModelInput>,
        deadline: Instant,
    ) -> Result<Inference, EngineError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            tokens: inputs.iter().map(ModelInput::cost).sum(),
            inputs,
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
            tokens: Vec::new(),
            images: Vec::new(),
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
            EngineError::Image { .. } => "invalid_image",
            _ => "other",
        };
        metrics::counter!(names::REJECTED, "model" => self.name.clone(), "reason" => reason)
            .increment(1);
    }
}

fn count_characters(texts: &[String]) -> usize {
    texts.iter().map(|t| t.chars().count()).sum()
}

/// A tokenization task that did not finish: a panic in the tokenizer is the server's fault
/// (a 500 naming the model), not the input's (a 422), and so is a runtime shutting down.
fn tokenization_unfinished(model: &str, e: tokio::task::JoinError) -> EngineError {
    match e.try_into_panic() {
        Ok(payload) => {
            let message = crate::worker::panic_message(payload.as_ref());
            tracing::error!(model, panic = %message, "the tokenizer panicked");
            EngineError::TokenizerPanicked {
                model: model.to_string(),
            }
        }
        Err(e) => EngineError::Inference(format!("tokenization did not finish: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tokenizer_panic_is_the_servers_fault_and_names_the_model() {
        let join = tokio::task::spawn_blocking(|| panic!("tokenizer bug"))
            .await
            .unwrap_err();
        let e = tokenization_unfinished("sentiment", join);
        assert!(matches!(e, EngineError::TokenizerPanicked { .. }), "{e:?}");
        assert!(e.to_string().contains("sentiment"), "{e}");
    }
}
