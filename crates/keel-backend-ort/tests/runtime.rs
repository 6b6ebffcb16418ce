//! The process-wide ONNX Runtime environment on the real default models: its messages below
//! WARNING are not produced, and the two models share one thread pool of a fixed size.
//!
//! Needs `models/onnxruntime/libonnxruntime.so` and the two model folders, as parity.rs does;
//! `ORT_DYLIB_PATH` and `KEEL_MODELS_DIR` override the two locations. The checks live in one
//! test: the environment, the log subscriber and the thread count are all per process.

mod common;

use common::{dylib, model_dir};
use std::sync::{Arc, Mutex};

use keel_backend_ort::{OrtOptions, Precision};
use keel_engine::{Backend, EncodedBatch, ModelSpec};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const THREADS: usize = 4;

/// ONNX Runtime's own messages (target `ort::logging`; the `ort` crate's Rust-side lines have
/// other targets), as `(level, message)`.
#[derive(Clone, Default)]
struct OrtEvents(Arc<Mutex<Vec<(Level, String)>>>);

impl<S: Subscriber> Layer<S> for OrtEvents {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() == "ort::logging" {
            let mut message = String::new();
            event.record(
                &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                    if field.name() == "message" {
                        message = format!("{value:?}");
                    }
                },
            );
            let mut events = self.0.lock().unwrap_or_else(|e| e.into_inner());
            events.push((*meta.level(), message));
        }
    }
}

/// Threads in this process now.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// `rows` inputs of `seq` plausible token ids, no padding: a long batch makes ONNX Runtime
/// grow its arena, which it reports at INFO.
fn batch(rows: usize, seq: usize) -> EncodedBatch {
    let mut ids = Vec::with_capacity(rows * seq);
    for r in 0..rows {
        ids.push(101);
        ids.extend((1..seq as u32 - 1).map(|i| 1996 + (i * 7919 + r as u32 * 104_729) % 26_000));
        ids.push(102);
    }
    EncodedBatch {
        input_ids: ids,
        type_ids: vec![0; rows * seq],
        attention_mask: vec![1; rows * seq],
        batch_size: rows,
        seq_len: seq,
    }
}

#[test]
#[cfg(target_os = "linux")]
fn two_models_share_one_fixed_pool_and_ort_logs_nothing_below_warning() {
    let events = OrtEvents::default();
    // TRACE for everything: whatever the `ort` crate or ONNX Runtime emits is seen here.
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(events.clone()))
        .unwrap();
    let options = OrtOptions {
        dylib_path: dylib(),
        intra_threads: THREADS,
        intra_spinning: false,
        precision: Precision::Fp32,
    };
    let load = |name: &str| -> Box<dyn Backend> {
        let spec = ModelSpec::inspect(&model_dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        keel_backend_ort::load(&spec, &options).unwrap_or_else(|e| panic!("{name}: {e}"))
    };

    let before = threads();
    let first = load("all-MiniLM-L6-v2");
    let with_one = threads();
    let second = load("sentiment-minilm-l6");
    let with_two = threads();
    // Long inputs on both models, from two threads at once, as two model workers would.
    let running = [first, second].map(|backend| {
        std::thread::spawn(move || {
            backend.forward(&batch(16, 256)).unwrap();
            backend
        })
    });
    let _backends = running.map(|t| t.join().unwrap());
    let after_running = threads();

    // The shared pool: THREADS - 1 threads (the caller of `forward` is the other one),
    // created with the environment; a second session, and running both, add none.
    assert!(
        with_one > before && with_one - before >= THREADS - 1,
        "the first load started {} threads, fewer than the pool's {}",
        with_one - before,
        THREADS - 1
    );
    assert_eq!(
        with_two, with_one,
        "the second model started its own threads"
    );
    assert_eq!(
        after_running, with_two,
        "running the models started threads"
    );

    // The pool is the environment's: a load that asks for another size is refused.
    let resized = OrtOptions {
        intra_threads: THREADS + 3,
        ..options.clone()
    };
    let spec = ModelSpec::inspect(&model_dir("all-MiniLM-L6-v2")).unwrap();
    let err = keel_backend_ort::load(&spec, &resized)
        .err()
        .expect("a different pool size was accepted");
    assert!(err.to_string().contains("thread pool"), "{err}");

    let events = events.0.lock().unwrap().clone();
    let quiet: Vec<_> = events.iter().filter(|(l, _)| *l > Level::WARN).collect();
    assert!(
        quiet.is_empty(),
        "{} ort events below WARN, e.g. {:?}",
        quiet.len(),
        &quiet[..quiet.len().min(5)]
    );
}
