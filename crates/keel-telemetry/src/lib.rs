//! Telemetry shared by every Keel crate: log set-up ([`logging`]) and Prometheus metrics
//! ([`metrics`]). Other crates record through the `tracing` and `metrics` facades, using the
//! names defined in [`metrics::names`]; only the binary installs the subscriber and recorder.

pub mod logging;
pub mod metrics;
