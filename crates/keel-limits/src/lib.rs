//! Per-API-key limits: requests per minute, tokens per minute and upstream spend per day
//! (and, in [`input`], limits on the shape of a request body).
//!
//! Every meter is a GCRA ([`gcra`]). Requests are checked and charged on arrival; tokens and
//! spend are known only when the work is done, so arrival checks that the key still has room
//! and the [`Charge`] left in the request settles the actual amount afterwards. Meters live in
//! this process ([`Store::Memory`]) or in Redis, shared by every replica ([`Store::Redis`]);
//! when Redis cannot be reached the [`FailurePolicy`] decides, the log says so once, and
//! [`Limiter::store_report`] feeds `/ready`.

pub mod gcra;
pub mod input;
pub mod metrics;
pub mod redis_store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use gcra::{Mode, Rate, Verdict};
use redis_store::RedisStore;

/// The limits of one key. None: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KeyLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub budget_usd_per_day: Option<f64>,
}

impl KeyLimits {
    /// `self`'s limits where set, else `defaults`'.
    pub fn or(self, defaults: KeyLimits) -> KeyLimits {
        KeyLimits {
            requests_per_minute: self.requests_per_minute.or(defaults.requests_per_minute),
            tokens_per_minute: self.tokens_per_minute.or(defaults.tokens_per_minute),
            budget_usd_per_day: self.budget_usd_per_day.or(defaults.budget_usd_per_day),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        *self == KeyLimits::default()
    }
}

/// Who is being limited: a key's public id (never the key) and its own limits.
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: Arc<str>,
    pub limits: KeyLimits,
}

impl Caller {
    /// Without API keys every client is one caller.
    pub fn anonymous() -> Self {
        Self {
            id: Arc::from("anonymous"),
            limits: KeyLimits::default(),
        }
    }
}

/// What to do with a request when the shared store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Serve it unlimited (availability first).
    Open,
    /// Refuse it with 503 (limits first).
    Closed,
}

impl FailurePolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            FailurePolicy::Open => "open",
            FailurePolicy::Closed => "closed",
        }
    }
}

pub enum Store {
    Memory(Mutex<HashMap<String, f64>>),
    Redis(Arc<RedisStore>),
}

impl Store {
    pub fn memory() -> Self {
        Store::Memory(Mutex::new(HashMap::new()))
    }
}

/// The three meters, named as in the rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meter {
    Requests,
    Tokens,
    Spend,
}

impl Meter {
    pub fn as_str(&self) -> &'static str {
        match self {
            Meter::Requests => "requests",
            Meter::Tokens => "tokens",
            Meter::Spend => "spend",
        }
    }
}

/// One meter's verdict, with the limit it was measured against.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub meter: Meter,
    pub limit: f64,
    pub verdict: Verdict,
}

/// Why a request may not go ahead.
#[derive(Debug)]
pub enum Refusal {
    /// A meter is exhausted: 429 with Retry-After.
    Limited { reading: Reading, all: Vec<Reading> },
    /// The store is down and the policy is closed: 503.
    StoreDown(String),
}

pub struct Limiter {
    defaults: KeyLimits,
    store: Store,
    policy: FailurePolicy,
}

// Spend is metered in micro-dollars so that a budget is a whole number of units.
const MICRO: f64 = 1e6;

fn now_us() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_micros() as f64)
}

impl Limiter {
    pub fn new(defaults: KeyLimits, store: Store, policy: FailurePolicy) -> Self {
        Self {
            defaults,
            store,
            policy,
        }
    }

    /// The store's state for `/ready`: (description, whether requests can be served).
    pub fn store_report(&self) -> (String, bool) {
        match &self.store {
            Store::Memory(_) => ("memory".into(), true),
            Store::Redis(r) if r.is_up() => ("redis: reachable".into(), true),
            Store::Redis(r) => (
                format!(
                    "redis: unreachable ({}), failing {}",
                    r.last_error(),
                    self.policy.as_str()
                ),
                self.policy == FailurePolicy::Open,
            ),
        }
    }

    /// The rate of `caller`'s `meter`, or None when it is unlimited: the one place that
    /// turns limits into rates, for admission and for charges alike.
    fn rate(&self, caller: &Caller, meter: Meter) -> Option<Rate> {
        let limits = caller.limits.or(self.defaults);
        match meter {
            Meter::Requests => limits
                .requests_per_minute
                .map(|n| Rate::per_minute(n as f64)),
            Meter::Tokens => limits.tokens_per_minute.map(|n| Rate::per_minute(n as f64)),
            Meter::Spend => limits
                .budget_usd_per_day
                .map(|usd| Rate::per_day(usd * MICRO)),
        }
    }

    fn meters(&self, caller: &Caller, with_spend: bool) -> Vec<(Meter, Rate, Mode)> {
        // Requests are taken on arrival; tokens and spend are only checked, and charged later.
        let mut wanted = vec![
            (Meter::Requests, Mode::Take(1.0)),
            (Meter::Tokens, Mode::Check),
        ];
        if with_spend {
            wanted.push((Meter::Spend, Mode::Check));
        }
        wanted
            .into_iter()
            .filter_map(|(meter, mode)| Some((meter, self.rate(caller, meter)?, mode)))
            .collect()
    }

    fn store_key(caller: &Caller, meter: Meter) -> String {
        format!("keel:limit:{}:{}", caller.id, meter.as_str())
    }

    /// Admits a request of `caller` or says why not. `with_spend`: the request may cost
    /// upstream money, so the spend budget is checked too.
    pub async fn admit(
        self: &Arc<Self>,
        caller: &Caller,
        with_spend: bool,
    ) -> Result<Admission, Refusal> {
        let meters = self.meters(caller, with_spend);
        let mut admission = Admission {
            charge: Charge {
                limiter: self.clone(),
                caller: caller.clone(),
            },
            readings: Vec::new(),
        };
        if meters.is_empty() {
            return Ok(admission);
        }
        let verdicts = match &self.store {
            Store::Memory(map) => {
                // A panicked holder cannot leave the map half-written (each entry is one
                // insert), so a poisoned lock is used as is: the workspace's policy.
                let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
                let now = now_us();
                let evaluated: Vec<_> = meters
                    .iter()
                    .map(|(meter, rate, mode)| {
                        let key = Self::store_key(caller, *meter);
                        let (verdict, tat) =
                            gcra::evaluate(*rate, *mode, map.get(&key).copied(), now);
                        (key, verdict, tat)
                    })
                    .collect();
                if evaluated.iter().all(|(_, v, _)| v.allowed) {
                    for (key, _, tat) in &evaluated {
                        map.insert(key.clone(), *tat);
                    }
                }
                evaluated.into_iter().map(|(_, v, _)| v).collect()
            }
            Store::Redis(redis) => {
                let keyed: Vec<_> = meters
                    .iter()
                    .map(|(meter, rate, mode)| (Self::store_key(caller, *meter), *rate, *mode))
                    .collect();
                match redis.admit(&keyed).await {
                    Ok(v) => v,
                    Err(down) => {
                        ::metrics::counter!(metrics::names::STORE_BYPASSED, "policy" => self.policy.as_str())
                            .increment(1);
                        return match self.policy {
                            FailurePolicy::Open => Ok(admission),
                            FailurePolicy::Closed => Err(Refusal::StoreDown(down.0)),
                        };
                    }
                }
            }
        };
        admission.readings = meters
            .iter()
            .zip(verdicts)
            .map(|((meter, rate, _), verdict)| Reading {
                meter: *meter,
                limit: if *meter == Meter::Spend {
                    rate.limit / MICRO
                } else {
                    rate.limit
                },
                verdict,
            })
            .collect();
        match admission.readings.iter().find(|r| !r.verdict.allowed) {
            None => Ok(admission),
            Some(refused) => {
                ::metrics::counter!(metrics::names::LIMITED, "limit" => refused.meter.as_str())
                    .increment(1);
                Err(Refusal::Limited {
                    reading: *refused,
                    all: admission.readings,
                })
            }
        }
    }
}

/// An admitted request: its meter readings (for the rate-limit headers) and its [`Charge`].
pub struct Admission {
    pub charge: Charge,
    pub readings: Vec<Reading>,
}

/// Settles what an admitted request used, once known. Cheap to clone; lives in the
/// request's extensions so that handlers (and the gateway's streams) can reach it.
#[derive(Clone)]
pub struct Charge {
    limiter: Arc<Limiter>,
    caller: Caller,
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge")
            .field("caller", &self.caller.id)
            .finish()
    }
}

impl Charge {
    /// Records `tokens` processed and `usd` spent upstream, on the meters the caller has.
    /// Never waits: in memory the charge lands at once, in Redis in the background.
    pub fn usage(&self, tokens: u64, usd: Option<f64>) {
        let limiter = &self.limiter;
        let charges: Vec<(Rate, String, f64)> = [
            (Meter::Tokens, tokens as f64),
            (Meter::Spend, usd.unwrap_or(0.0) * MICRO),
        ]
        .into_iter()
        .filter(|&(_, cost)| cost > 0.0)
        .filter_map(|(meter, cost)| {
            let rate = limiter.rate(&self.caller, meter)?;
            Some((rate, Limiter::store_key(&self.caller, meter), cost))
        })
        .collect();
        if charges.is_empty() {
            return;
        }
        match &limiter.store {
            // In memory the charge lands before this returns, so the caller's next request
            // already sees it.
            Store::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
                for (rate, key, cost) in charges {
                    let tat = gcra::charge(rate, cost, map.get(&key).copied(), now_us());
                    map.insert(key, tat);
                }
            }
            Store::Redis(redis) => {
                let redis = redis.clone();
                // A lost charge under-counts one request; the store's state is already logged.
                // Outside a runtime (a stream dropped at shutdown) the charge is moot.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        for (rate, key, cost) in charges {
                            let _ = redis.charge(&key, rate, cost).await;
                        }
                    });
                }
            }
        }
    }
}
