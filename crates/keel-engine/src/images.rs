//! Uploaded images into model inputs: decode and preprocess on the blocking pool.
//!
//! Decoding is the expensive and the dangerous step (a few megapixels of JPEG take tens of
//! milliseconds; a hostile file asks for gigabytes), so it never runs on the async runtime,
//! and at most [`decode_slots`] images are decoded at once across the whole process: enough
//! to keep every core busy, few enough that the memory in flight stays bounded by
//! `slots x MAX_IMAGE_PIXELS` whatever the number of concurrent uploads. The limits
//! themselves are checked by `keel_vision` before any pixel is allocated.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_telemetry::metrics::names;
use keel_vision::{DecodeLimits, ImageError};
use tokio::sync::Semaphore;

use crate::backend::{ImageTensor, ModelInput};
use crate::error::EngineError;
use crate::spec::ImageInput;

/// What Keel learned about one uploaded image, for the log line and the response headers.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    pub width: u32,
    pub height: u32,
    pub bytes: usize,
    pub format: &'static str,
    pub decode: Duration,
    pub preprocess: Duration,
}

/// Images decoded at once in this process: one per core.
pub fn decode_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| Semaphore::new(decode_slots()))
}

/// Decodes and preprocesses one image on the blocking pool, waiting for a decode slot first.
pub async fn prepare(
    model: &str,
    index: usize,
    bytes: Bytes,
    input: &ImageInput,
    limits: DecodeLimits,
) -> Result<(ModelInput, ImageFacts), EngineError> {
    let _slot = slots()
        .acquire()
        .await
        .map_err(|_| EngineError::Inference("the decode pool is closed".into()))?;
    let input = input.clone();
    let span = tracing::info_span!("decode_image", model, index);
    let done =
        tokio::task::spawn_blocking(move || span.in_scope(|| prepare_now(&bytes, &input, &limits)))
            .await;
    let (tensor, facts) = match done {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(error)) => return Err(EngineError::Image { index, error }),
        // keel_vision catches decoder panics; one here is in the resize or normalisation.
        Err(e) => {
            return Err(EngineError::Inference(format!(
                "preparing image {index} did not finish: {e}"
            )))
        }
    };
    let model = model.to_string();
    metrics::histogram!(names::IMAGE_DECODE, "model" => model.clone())
        .record(facts.decode.as_secs_f64());
    metrics::histogram!(names::IMAGE_PREPROCESS, "model" => model.clone())
        .record(facts.preprocess.as_secs_f64());
    metrics::histogram!(names::IMAGE_PIXELS, "model" => model.clone())
        .record(f64::from(facts.width) * f64::from(facts.height));
    metrics::histogram!(names::IMAGE_BYTES, "model" => model).record(facts.bytes as f64);
    Ok((ModelInput::Image(tensor), facts))
}

fn prepare_now(
    bytes: &[u8],
    input: &ImageInput,
    limits: &DecodeLimits,
) -> Result<(ImageTensor, ImageFacts), ImageError> {
    let started = Instant::now();
    let decoded = keel_vision::decode(bytes, limits)?;
    let decode = started.elapsed();
    let started = Instant::now();
    let pixels = input.preprocessing.apply(&decoded.rgb);
    let preprocess = started.elapsed();
    Ok((
        ImageTensor {
            pixels,
            height: input.height,
            width: input.width,
        },
        ImageFacts {
            width: decoded.width,
            height: decoded.height,
            bytes: bytes.len(),
            format: decoded.format,
            decode,
            preprocess,
        },
    ))
}
