//! Prometheus metrics: the recorder, bucket layout, descriptions and process metrics.
//!
//! Names follow Prometheus conventions: a `keel_` prefix, the unit in the name, `_total` on
//! counters. `promtool check metrics` runs against `/metrics` in the integration tests.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub mod names {
    pub const HTTP_REQUESTS: &str = "keel_http_requests_total";
    pub const HTTP_DURATION: &str = "keel_http_request_duration_seconds";
    pub const HTTP_IN_FLIGHT: &str = "keel_http_requests_in_flight";
    pub const CONNECTIONS_REFUSED: &str = "keel_connections_refused_total";

    pub const MODEL_READY: &str = "keel_model_ready";
    pub const INFERENCE_DURATION: &str = "keel_inference_duration_seconds";
    pub const QUEUE_WAIT: &str = "keel_queue_wait_seconds";
    pub const BATCH_SIZE: &str = "keel_batch_size";
    pub const INPUT_TOKENS: &str = "keel_input_tokens";
    pub const INPUT_CHARACTERS: &str = "keel_input_characters";
    pub const QUEUE_DEPTH: &str = "keel_queue_depth";
    pub const IN_FLIGHT: &str = "keel_inference_requests_in_flight";
    pub const REJECTED: &str = "keel_rejected_requests_total";
    pub const EXPIRED: &str = "keel_expired_requests_total";
    pub const BACKEND_PANICS: &str = "keel_backend_panics_total";
    pub const INFERENCE_INPUTS: &str = "keel_inference_inputs_total";
    pub const PREDICTIONS: &str = "keel_predictions_total";
    pub const PREDICTION_SCORE: &str = "keel_prediction_score";
    pub const IMAGE_DECODE: &str = "keel_image_decode_seconds";
    pub const IMAGE_PREPROCESS: &str = "keel_image_preprocess_seconds";
    pub const IMAGE_PIXELS: &str = "keel_image_pixels";
    pub const IMAGE_BYTES: &str = "keel_image_bytes";

    pub const LLM_TIME_TO_FIRST_TOKEN: &str = "keel_llm_time_to_first_token_seconds";
    pub const LLM_INTER_TOKEN: &str = "keel_llm_inter_token_latency_seconds";
    pub const LLM_PROMPT_TOKENS: &str = "keel_llm_prompt_tokens_total";
    pub const LLM_CACHED_PROMPT_TOKENS: &str = "keel_llm_cached_prompt_tokens_total";
    pub const LLM_GENERATED_TOKENS: &str = "keel_llm_generated_tokens_total";
    pub const LLM_TOKENS_PER_SECOND: &str = "keel_llm_tokens_per_second";
    pub const LLM_REQUESTS: &str = "keel_llm_requests_total";
    pub const LLM_SLOTS_IN_USE: &str = "keel_llm_slots_in_use";
    pub const LLM_WAITING: &str = "keel_llm_waiting_requests";
    pub const LLM_KV_CELLS: &str = "keel_llm_kv_cache_tokens";

    pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
    pub const PROCESS_VIRTUAL_MEMORY: &str = "process_virtual_memory_bytes";
    pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
    pub const PROCESS_THREADS: &str = "process_threads";
    pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
}

use names::*;

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
const TOKEN_BUCKETS: &[f64] = &[8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
const CHARACTER_BUCKETS: &[f64] = &[
    16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
];
const SCORE_BUCKETS: &[f64] = &[0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0];
/// From a thumbnail to a 48-megapixel phone photo.
const PIXEL_BUCKETS: &[f64] = &[1e4, 5e4, 1e5, 3e5, 1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7, 6.4e7];
const BYTE_BUCKETS: &[f64] = &[1e3, 1e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 2.5e7];

/// Installs the global recorder and returns the handle `/metrics` renders from.
pub fn install() -> Result<PrometheusHandle, String> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(INPUT_TOKENS.into()), TOKEN_BUCKETS))
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(INPUT_CHARACTERS.into()), CHARACTER_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(PREDICTION_SCORE.into()), SCORE_BUCKETS)
        })
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(IMAGE_PIXELS.into()), PIXEL_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(IMAGE_BYTES.into()), BYTE_BUCKETS))
        .map_err(|e| e.to_string())?;
    let handle = builder.install_recorder().map_err(|e| e.to_string())?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_llm();
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route, method and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency, by route, method and status"
    );
    describe_gauge!(HTTP_IN_FLIGHT, "HTTP requests being answered");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Requests answered 503 because the server was at MAX_CONNECTIONS"
    );
    describe_gauge!(MODEL_READY, "1 when the model is loaded and warmed, else 0");
    describe_histogram!(
        INFERENCE_DURATION,
        Unit::Seconds,
        "Compute time of one batch, by model"
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time a request waited for its batch, by model"
    );
    describe_histogram!(BATCH_SIZE, "Inputs per executed batch, by model");
    describe_histogram!(INPUT_TOKENS, "Tokens per input after truncation, by model");
    describe_histogram!(INPUT_CHARACTERS, "Characters per input, by model");
    describe_gauge!(QUEUE_DEPTH, "Requests waiting in the model's queue");
    describe_gauge!(
        IN_FLIGHT,
        "Inference requests admitted and not yet answered, by model"
    );
    describe_counter!(
        REJECTED,
        "Requests refused before inference, by model and reason"
    );
    describe_counter!(
        EXPIRED,
        "Requests dropped from the queue because the client left, by model"
    );
    describe_counter!(
        BACKEND_PANICS,
        "Forward passes in which the backend panicked (the batch's requests got a 500), by model"
    );
    describe_counter!(INFERENCE_INPUTS, "Inputs run through the model, by model");
    describe_counter!(
        PREDICTIONS,
        "Top predicted label per classified input, by model and label"
    );
    describe_histogram!(
        PREDICTION_SCORE,
        "Score of the top label per classified input, by model and label"
    );
    describe_histogram!(
        IMAGE_DECODE,
        Unit::Seconds,
        "Time to decode one uploaded image (on the blocking pool), by model"
    );
    describe_histogram!(
        IMAGE_PREPROCESS,
        Unit::Seconds,
        "Time to resize, crop and normalise one decoded image, by model"
    );
    describe_histogram!(IMAGE_PIXELS, "Pixels per decoded image, by model");
    describe_histogram!(
        IMAGE_BYTES,
        Unit::Bytes,
        "Encoded bytes per uploaded image, by model"
    );
}

/// The process metrics in Prometheus text format, read from /proc/self on every scrape.
/// Rendered by hand rather than through the recorder because CPU seconds are fractional and
/// the `metrics` facade's counters are integers.
pub fn process_metrics_text() -> String {
    #[cfg(target_os = "linux")]
    if let Some(p) = linux_process::read() {
        let mut out = String::new();
        let mut add = |name: &str, kind: &str, help: &str, value: f64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        add(
            PROCESS_RESIDENT_MEMORY,
            "gauge",
            "Resident memory size in bytes.",
            p.rss_bytes,
        );
        add(
            PROCESS_VIRTUAL_MEMORY,
            "gauge",
            "Virtual memory size in bytes.",
            p.vsize_bytes,
        );
        add(
            PROCESS_CPU,
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        );
        add(
            PROCESS_THREADS,
            "gauge",
            "Number of OS threads in the process.",
            p.threads,
        );
        add(
            PROCESS_START_TIME,
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        );
        return out;
    }
    String::new()
}

#[cfg(target_os = "linux")]
mod linux_process {
    pub struct Process {
        pub rss_bytes: f64,
        pub vsize_bytes: f64,
        pub cpu_seconds: f64,
        pub threads: f64,
        pub start_time_seconds: f64,
    }

    // The kernel's USER_HZ is 100 on every Linux architecture Keel targets; the page size is
    // 4 KiB on x86_64 and most aarch64 kernels.
    const TICKS_PER_SECOND: f64 = 100.0;
    const PAGE_SIZE: f64 = 4096.0;

    pub fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name, which may itself contain spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        // Indices are the stat(5) field numbers minus 3.
        let (utime, stime, threads, starttime, vsize, rss) =
            (num(11)?, num(12)?, num(17)?, num(19)?, num(20)?, num(21)?);
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        Some(Process {
            rss_bytes: rss * PAGE_SIZE,
            vsize_bytes: vsize,
            cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
            threads,
            start_time_seconds: now - uptime + starttime / TICKS_PER_SECOND,
        })
    }
}

fn describe_llm() {
    describe_histogram!(
        LLM_TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "Local generation: time from admission to the first generated token, by model"
    );
    describe_histogram!(
        LLM_INTER_TOKEN,
        Unit::Seconds,
        "Local generation: time between consecutive tokens of one request, by model"
    );
    describe_counter!(
        LLM_PROMPT_TOKENS,
        "Local generation: prompt tokens, by model"
    );
    describe_counter!(
        LLM_CACHED_PROMPT_TOKENS,
        "Local generation: prompt tokens whose KV cache was reused instead of computed"
    );
    describe_counter!(
        LLM_GENERATED_TOKENS,
        "Local generation: generated tokens, by model"
    );
    describe_gauge!(
        LLM_TOKENS_PER_SECOND,
        "Local generation: tokens generated per second over the last decode steps, by model"
    );
    describe_counter!(
        LLM_REQUESTS,
        "Local generation requests ended, by model and outcome (stop, length, cancelled, deadline, error)"
    );
    describe_gauge!(
        LLM_SLOTS_IN_USE,
        "Local generation: sequence slots busy, by model"
    );
    describe_gauge!(
        LLM_WAITING,
        "Local generation: requests waiting for a slot, by model"
    );
    describe_gauge!(
        LLM_KV_CELLS,
        "Local generation: tokens held in the KV cache over all slots (shared prefixes counted once per slot)"
    );
}
