//! Wiring: settings -> registry (models loading in the background) -> HTTP server, and the
//! shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keel_engine::registry::EngineOptions;
use keel_engine::{BackendLoader, ModelRegistry, ReadinessStatus, Task};
use keel_http::server::ServerOptions;
use keel_http::{AppState, Limits};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::settings::{BackendKind, Settings};
use keel_telemetry::logging;

pub fn run(settings: Settings) -> anyhow::Result<()> {
    let _telemetry = logging::init(
        settings.log_format,
        &log_filter(&settings.log_level),
        settings.otlp_endpoint.as_deref(),
    )
    .map_err(|e| anyhow::anyhow!("starting telemetry: {e}"))?;
    let metrics = keel_telemetry::metrics::install()
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    // candle's matrix products run on rayon's global pool (gemm's `Parallelism::Rayon`), so
    // its size is the candle backend's parallelism. ONNX Runtime has its own pool (see
    // keel_backend_ort::OrtOptions) and leaves rayon's untouched: no rayon threads with ort.
    if settings.backend == BackendKind::Candle {
        rayon::ThreadPoolBuilder::new()
            .num_threads(settings.inference_threads)
            .thread_name(|i| format!("keel-compute-{i}"))
            .build_global()
            .context("starting the inference thread pool")?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keel-http")
        .build()
        .context("starting the async runtime")?
        .block_on(serve(settings, metrics))
}

async fn serve(settings: Settings, metrics: PrometheusHandle) -> anyhow::Result<()> {
    let registry = ModelRegistry::new(settings.models.clone());
    let loader: BackendLoader = match settings.backend {
        BackendKind::Candle => Arc::new(keel_backend_candle::load),
        BackendKind::Ort => {
            // Every model shares one pool of INFERENCE_THREADS threads: two models with a
            // pool each meant twice the cores in busy threads, competing with each other and
            // with the HTTP runtime.
            let options = keel_backend_ort::OrtOptions {
                dylib_path: settings.ort_dylib_path.clone(),
                intra_threads: settings.inference_threads,
                intra_spinning: keel_backend_ort::spinning_default(settings.inference_threads),
                precision: settings.ort_precision,
            };
            Arc::new(move |spec| keel_backend_ort::load(spec, &options))
        }
    };
    registry.start_loading(
        loader,
        EngineOptions {
            max_batch_size: settings.max_batch_size,
            max_batch_tokens: settings.max_batch_tokens,
            max_batch_delay: settings.max_batch_delay,
            max_queue_requests: settings.max_queue_requests,
            max_queue_tokens: settings.max_queue_tokens,
            max_queue_wait: settings.max_queue_wait,
            max_input_tokens: settings.max_input_tokens,
            truncate: settings.truncate,
            image_limits: keel_engine::DecodeLimits {
                max_pixels: settings.max_image_pixels,
                max_bytes: settings.max_image_bytes,
            },
        },
    );
    let llm = settings.llm.clone();
    registry.start_generators(Arc::new(move |name, path, on_failed| {
        keel_backend_llama::load(name, path, &llm, on_failed)
    }));
    if settings.fail_fast {
        tokio::spawn(exit_when_a_model_fails(registry.clone()));
    }

    let limiter = limiter(&settings.rate_limits)?;
    let rag = rag_service(&settings, &registry).await?;
    let state = AppState {
        registry: registry.clone(),
        limits: Limits {
            max_body_bytes: settings.max_body_bytes,
            max_image_bytes: settings.max_image_bytes,
            max_client_batch: settings.max_client_batch,
            request_timeout: settings.request_timeout,
            body_read_timeout: settings.body_read_timeout,
        },
        settings: Arc::new(settings.public_view()),
        metrics: Some(metrics),
        metrics_on_main_port: settings.metrics_port.is_none(),
        api_keys: settings.api_keys.clone(),
        limiter,
        cors: settings.cors.clone(),
        rag,
        gateway: Some(Arc::new(
            keel_gateway::Gateway::new(settings.gateway.clone())
                .map_err(|e| anyhow::anyhow!("starting the gateway: {e}"))?
                .with_local_models(registry.clone()),
        )),
    };
    if let Some(port) = settings.metrics_port {
        let addr = SocketAddr::new(settings.host, port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (METRICS_PORT)"))?;
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, port = local.port(), "metrics listening");
        let router = keel_http::metrics_router(state.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    let addr = SocketAddr::new(settings.host, settings.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, port = local.port(), models = settings.models.len(), "listening");

    let options = ServerOptions {
        max_connections: settings.max_connections,
        header_read_timeout: settings.header_read_timeout,
        tls: settings.tls.as_ref().map(|t| t.0.clone()),
    };
    let (stop_accepting, accepting_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(keel_http::server::serve(
        listener,
        keel_http::router(state),
        options,
        async {
            let _ = accepting_stopped.await;
        },
        settings.shutdown_timeout,
    ));

    shutdown_signal().await;
    // Draining: /ready turns 503 at once, but the listener keeps accepting for the grace
    // period so that load balancers notice before connections are refused.
    registry.set_draining();
    tracing::info!(
        grace_ms = settings.shutdown_grace.as_millis() as u64,
        "shutdown requested; draining"
    );
    tokio::time::sleep(settings.shutdown_grace).await;
    let _ = stop_accepting.send(());
    if !server.await.context("the server task failed")? {
        tracing::warn!(
            timeout_ms = settings.shutdown_timeout.as_millis() as u64,
            "in-flight requests did not finish in time; exiting anyway"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// The RAG store under PERSISTENT_STORAGE_DIR and its ingestion workers. Its routes are
/// refused (403) when they would be open to the network without a key. Without an embedding
/// model there is nothing to index with, so the store is not opened at all: replicas that
/// serve only classifiers never contend for one directory.
async fn rag_service(
    settings: &Settings,
    registry: &Arc<ModelRegistry>,
) -> anyhow::Result<Option<keel_http::Rag>> {
    let r = &settings.rag;
    if r.embedding_model.is_none() && !registry.serves_task(Task::Embedding) {
        tracing::info!("RAG off: no embedding model is configured");
        return Ok(None);
    }
    let store: Arc<dyn keel_rag::RagStore> = match &r.database_url {
        Some(url) => Arc::new(
            keel_store_postgres::PgStore::connect(&url.0, r.database_connections)
                .await
                .map_err(|e| anyhow::anyhow!("opening the RAG store in DATABASE_URL: {e}"))?,
        ),
        None => Arc::new(
            keel_store_sqlite::SqliteStore::open(&r.storage_dir).map_err(|e| {
                anyhow::anyhow!(
                    "opening the RAG store in {} (PERSISTENT_STORAGE_DIR): {e}",
                    r.storage_dir.display()
                )
            })?,
        ),
    };
    // PDFs are read by this same binary, run as `keel extract-pdf` under its own limits.
    let pdf = std::env::current_exe()
        .map_err(|e| tracing::warn!(error = %e, "PDFs will be refused: the keel binary's path is unknown"))
        .ok()
        .map(keel_retrieval::pdf::PdfExtractor::new);
    let service =
        keel_retrieval::Retrieval::new(store, registry.clone(), r.embedding_model.clone(), pdf);
    service.spawn_workers(r.ingest_workers, r.ingest_lease);
    let open = settings.api_keys.is_empty() && !settings.host.is_loopback() && !r.allow_open;
    let refused = open.then_some(
        "the files and vector-store routes need an API key: set KEEL_API_KEYS, listen on a \
         loopback HOST, or set KEEL_ALLOW_OPEN_RAG=true to serve them open",
    );
    match r.database_url {
        Some(_) => tracing::info!(
            store = "postgres",
            open_refused = refused.is_some(),
            "RAG store ready"
        ),
        None => tracing::info!(store = "embedded", dir = %r.storage_dir.display(),
            open_refused = refused.is_some(), "RAG store ready"),
    }
    Ok(Some(keel_http::Rag {
        service,
        max_file_bytes: r.max_file_bytes,
        refused,
    }))
}

/// LOG_LEVEL as the log filter, with the `ort` crate's own INFO lines (which library it
/// loaded) left out unless the filter names an `ort` target: Keel logs its own line when ONNX
/// Runtime is loaded, and ONNX Runtime's messages are produced at WARNING and above anyway.
/// Libraries whose INFO lines are their own chatter: ort's (which library it loaded), and
/// llama.cpp's (every tensor and buffer of a model as it loads).
const QUIET_LIBRARIES: &str = "ort=warn,llama.cpp=warn,ggml=warn,llama_cpp_2=warn";

fn log_filter(level: &str) -> String {
    use std::str::FromStr;
    use tracing::level_filters::LevelFilter;
    let directives: Vec<&str> = level.split(',').map(str::trim).collect();
    if directives.iter().any(|d| d.starts_with("ort")) {
        return level.to_string();
    }
    // Only a default more verbose than WARN needs the cap; capping a quieter default at WARN
    // would make ort louder than the rest.
    let default_is_verbose = directives
        .iter()
        .filter_map(|d| LevelFilter::from_str(d).ok())
        .any(|l| l > LevelFilter::WARN);
    if default_is_verbose {
        format!("{level},{QUIET_LIBRARIES}")
    } else {
        level.to_string()
    }
}

/// With `KEEL_FAIL_FAST`, a model that fails to load ends the process (status 1) so that an
/// orchestrator sees a crash instead of a pod that never becomes ready.
async fn exit_when_a_model_fails(registry: Arc<ModelRegistry>) {
    let mut changes = registry.subscribe();
    loop {
        let report = registry.readiness();
        if report.status == ReadinessStatus::Failed {
            tracing::error!(models = ?report.models, "a model failed to load and KEEL_FAIL_FAST is set; exiting");
            std::process::exit(1);
        }
        if report.is_ready() || changes.changed().await.is_err() {
            return;
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}

/// The per-key limiter, when any limit is set; with REDIS_URL its store probe starts here.
fn limiter(
    limits: &crate::settings::RateLimits,
) -> anyhow::Result<Option<Arc<keel_limits::Limiter>>> {
    if !limits.enabled() {
        if limits.redis_url.is_some() {
            tracing::warn!(
                target: "keel::limits",
                "REDIS_URL is set but no limit is (RATE_LIMIT_RPM, RATE_LIMIT_TPM, \
                 BUDGET_USD_PER_DAY or per-key limits): Redis is not used"
            );
        }
        return Ok(None);
    }
    keel_limits::metrics::describe();
    let store = match &limits.redis_url {
        None => keel_limits::Store::memory(),
        Some(url) => {
            let redis = Arc::new(
                keel_limits::redis_store::RedisStore::new(&url.0, limits.redis_timeout)
                    .map_err(|_| anyhow::anyhow!("REDIS_URL is not a valid Redis URL"))?,
            );
            tokio::spawn(redis.clone().probe_forever(Duration::from_millis(500)));
            keel_limits::Store::Redis(redis)
        }
    };
    tracing::info!(
        target: "keel::limits",
        store = if limits.redis_url.is_some() { "redis" } else { "memory" },
        failure = limits.failure.as_str(),
        "per-key limits on"
    );
    Ok(Some(Arc::new(keel_limits::Limiter::new(
        limits.defaults,
        store,
        limits.failure,
    ))))
}

#[cfg(test)]
mod tests {
    use super::{log_filter, QUIET_LIBRARIES};

    #[test]
    fn the_ort_crate_is_capped_at_warn_below_a_verbose_default() {
        assert_eq!(log_filter("info"), format!("info,{QUIET_LIBRARIES}"));
        assert_eq!(
            log_filter("debug,hyper=warn"),
            format!("debug,hyper=warn,{QUIET_LIBRARIES}")
        );
        assert!(tracing_subscriber::EnvFilter::try_new(log_filter("info")).is_ok());
        assert_eq!(log_filter("warn"), "warn");
        assert_eq!(log_filter("error"), "error");
        assert_eq!(log_filter("keel=debug"), "keel=debug");
        // Named by the owner: left as written.
        assert_eq!(log_filter("info,ort=info"), "info,ort=info");
        assert_eq!(
            log_filter("trace,ort::logging=trace"),
            "trace,ort::logging=trace"
        );
    }
}
