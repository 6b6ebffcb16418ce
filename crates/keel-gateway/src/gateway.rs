//! The gateway's long-lived state: one adapter, HTTP client and concurrency limiter per
//! provider, and the per-target circuit breakers and cooldowns that every request shares.
//!
//! Breakers exist only for the targets the configuration can reach ([`Target::key`]): they
//! are all made here, once, so no client's model name can add one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::circuit::CircuitBreaker;
use crate::config::{GatewayConfig, Target};
use crate::cooldown::Cooldowns;
use crate::limiter::ConcurrencyLimiter;
use crate::metrics::names;
use crate::provider::{self, Provider};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot build the HTTP client for provider '{provider}': {message}")]
    Client { provider: String, message: String },
}

pub struct ProviderHandle {
    pub provider: Arc<dyn Provider>,
    pub limiter: ConcurrencyLimiter,
    /// One client (and connection pool) per connect timeout the routes use.
    clients: HashMap<Duration, reqwest::Client>,
}

impl ProviderHandle {
    pub fn client(&self, connect: Duration) -> &reqwest::Client {
        self.clients
            .get(&connect)
            .or_else(|| self.clients.values().next())
            .expect("every provider has at least one client")
    }
}

pub struct Gateway {
    pub(crate) config: GatewayConfig,
    pub(crate) providers: HashMap<String, ProviderHandle>,
    pub(crate) cooldowns: Cooldowns,
    /// By target key; fixed at start.
    circuits: HashMap<String, Arc<CircuitBreaker>>,
    /// Where `local/<name>` targets find Keel's own generative models.
    pub(crate) local: Option<Arc<keel_engine::ModelRegistry>>,
}

impl Gateway {
    pub fn new(config: GatewayConfig) -> Result<Self, GatewayError> {
        crate::metrics::describe();
        let mut connects: HashMap<&str, BTreeSet<Duration>> = HashMap::new();
        for p in config.providers.keys() {
            connects
                .entry(p)
                .or_default()
                .insert(config.defaults.timeouts.connect);
        }
        for route in config.routes.values() {
            for t in &route.targets {
                connects
                    .entry(&t.provider)
                    .or_default()
                    .insert(route.settings.timeouts.connect);
            }
        }
        let mut providers = HashMap::new();
        for (name, pc) in &config.providers {
            let mut clients = HashMap::new();
            for connect in connects.get(name.as_str()).into_iter().flatten() {
                let client = reqwest::Client::builder()
                    .connect_timeout(*connect)
                    .tcp_nodelay(true)
                    .pool_idle_timeout(Duration::from_secs(60))
                    .no_proxy()
                    .build()
                    .map_err(|e| GatewayError::Client {
                        provider: name.clone(),
                        message: e.to_string(),
                    })?;
                clients.insert(*connect, client);
            }
            providers.insert(
                name.clone(),
                ProviderHandle {
                    provider: provider::build(pc.clone()),
                    limiter: ConcurrencyLimiter::new(pc.max_concurrency, pc.queue_timeout),
                    clients,
                },
            );
        }
        let circuits = config
            .target_keys()
            .into_iter()
            .map(|key| (key, Arc::new(CircuitBreaker::new(config.circuit.clone()))))
            .collect();
        Ok(Self {
            config,
            providers,
            cooldowns: Cooldowns::default(),
            circuits,
            local: None,
        })
    }

    /// Serves `local/<name>` targets from the generative models of `registry`.
    pub fn with_local_models(mut self, registry: Arc<keel_engine::ModelRegistry>) -> Self {
        self.local = Some(registry);
        self
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The breaker of a target key. Every key a route can reach has one from the start; an
    /// unknown key (none should reach here) gets a breaker of its own that nothing keeps.
    pub fn circuit(&self, key: &str) -> Arc<CircuitBreaker> {
        self.circuits.get(key).cloned().unwrap_or_else(|| {
            debug_assert!(false, "no circuit for target {key}");
            Arc::new(CircuitBreaker::new(self.config.circuit.clone()))
        })
    }

    /// How many breakers and cooldowns the gateway holds (bounded by the configuration).
    pub fn state_sizes(&self) -> (usize, usize) {
        (self.circuits.len(), self.cooldowns.len())
    }

    pub(crate) fn report_circuit(&self, target: &Target, state: crate::circuit::CircuitState) {
        metrics::gauge!(names::CIRCUIT_STATE, "target" => target.key().to_string())
            .set(state.gauge());
    }
}
