//! Meters shared by every replica through Redis.
//!
//! Each meter is one Redis key holding its theoretical arrival time; a Lua script evaluates
//! and updates all of a request's meters atomically, on Redis's clock (`TIME`), so replicas
//! with skewed clocks still agree. Keys expire once their meter is full again.
//!
//! Redis being down must not stall requests: every call has a short timeout, and after a
//! failure the store reports itself down at once (no connection attempt per request) until a
//! background probe reconnects. What a request does meanwhile is the limiter's failure policy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::gcra::{Mode, Rate, Verdict};

// KEYS: one per meter. ARGV: per meter, interval_us, window_us, mode (1 take, 0 check), cost.
// Mirrors gcra::evaluate: evaluate every meter, then store only when all allow.
const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out, stored, all = {}, {}, true
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[4 * i - 3])
  local tau = tonumber(ARGV[4 * i - 2])
  local take = ARGV[4 * i - 1] == '1'
  local cost = tonumber(ARGV[4 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  local start = math.max(tat, now)
  local needed, new = start + interval, start
  if take then needed = start + cost * interval; new = needed end
  local allowed = needed - now <= tau + 1
  if not allowed then all = false; new = start end
  stored[i] = new
  local retry = 0
  if not allowed then retry = math.ceil(needed - now - tau) end
  out[4 * i - 3] = allowed and 1 or 0
  out[4 * i - 2] = retry
  out[4 * i - 1] = math.max(0, math.floor((tau - (new - now) + 1) / interval))
  out[4 * i] = math.max(0, math.ceil(new - now))
end
if all then
  for i, key in ipairs(KEYS) do
    local ttl = math.ceil((stored[i] - now) / 1000) + 1000
    redis.call('SET', key, string.format('%.0f', stored[i]), 'PX', ttl)
  end
end
return out
"#;

// KEYS[1]: the meter. ARGV: interval_us, cost. Charges without a limit (debt allowed).
const CHARGE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
tat = tat + tonumber(ARGV[2]) * tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return 1
"#;

#[derive(Debug)]
pub struct StoreDown(pub String);

pub struct RedisStore {
    client: redis::Client,
    connection: Mutex<Option<MultiplexedConnection>>,
    up: AtomicBool,
    last_error: Mutex<String>,
    timeout: Duration,
    admit: redis::Script,
    charge: redis::Script,
}

impl RedisStore {
    /// Parses the URL; connects later (the first probe), so a Redis that is down at startup
    /// is handled like one that goes down later.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            connection: Mutex::new(None),
            up: AtomicBool::new(false),
            last_error: Mutex::new("not connected yet".into()),
            timeout,
            admit: redis::Script::new(ADMIT),
            charge: redis::Script::new(CHARGE),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn connection(&self) -> Result<MultiplexedConnection, StoreDown> {
        if !self.is_up() {
            return Err(StoreDown(self.last_error()));
        }
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreDown("not connected".into()))
    }

    fn mark_down(&self, error: String) {
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error.clone();
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(target: "keel::limits", error = %error, "rate-limit store (Redis) unreachable");
        }
        metrics::gauge!(crate::metrics::names::STORE_UP).set(0.0);
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreDown> {
        let mut connection = self.connection()?;
        let result = tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection))
            .await
            .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))
            .and_then(|r| r.map_err(|e| e.to_string()));
        result.map_err(|e| {
            metrics::counter!(crate::metrics::names::STORE_ERRORS).increment(1);
            self.mark_down(e.clone());
            StoreDown(e)
        })
    }

    pub async fn admit(&self, meters: &[(String, Rate, Mode)]) -> Result<Vec<Verdict>, StoreDown> {
        let mut invocation = self.admit.prepare_invoke();
        for (key, rate, mode) in meters {
            let (take, cost) = match mode {
                Mode::Take(cost) => (1, *cost),
                Mode::Check => (0, 0.0),
            };
            invocation
                .key(key)
                .arg(rate.interval_us())
                .arg(rate.window_us)
                .arg(take)
                .arg(cost);
        }
        let raw: Vec<i64> = self.run(invocation).await?;
        if raw.len() != 4 * meters.len() {
            return Err(StoreDown(format!(
                "unexpected reply of {} values",
                raw.len()
            )));
        }
        Ok(raw
            .chunks(4)
            .map(|c| Verdict {
                allowed: c[0] == 1,
                retry_after_us: c[1].max(0) as u64,
                remaining: c[2].max(0) as u64,
                reset_us: c[3].max(0) as u64,
            })
            .collect())
    }

    pub async fn charge(&self, key: &str, rate: Rate, cost: f64) -> Result<(), StoreDown> {
        let mut invocation = self.charge.prepare_invoke();
        invocation.key(key).arg(rate.interval_us()).arg(cost);
        self.run::<i64>(invocation).await.map(drop)
    }

    /// Connects when disconnected and pings when connected, every `period`, forever: the one
    /// place that brings the store back up.
    pub async fn probe_forever(self: Arc<Self>, period: Duration) {
        loop {
            self.probe().await;
            tokio::time::sleep(period).await;
        }
    }

    async fn probe(&self) {
        // The probe is off the request path, so it may wait longer than a request would.
        let patience = self.timeout.max(Duration::from_millis(500));
        let existing = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let connection = match existing {
            Some(c) => c,
            None => {
                match tokio::time::timeout(patience, self.client.get_multiplexed_async_connection())
                    .await
                {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return self.mark_down(e.to_string()),
                    Err(_) => return self.mark_down("connect timed out".into()),
                }
            }
        };
        let mut ping = connection.clone();
        let pong = tokio::time::timeout(
            patience,
            redis::cmd("PING").query_async::<String>(&mut ping),
        )
        .await;
        match pong {
            Ok(Ok(_)) => {
                *self
                    .connection
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(connection);
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(target: "keel::limits", "rate-limit store (Redis) reachable");
                }
                metrics::gauge!(crate::metrics::names::STORE_UP).set(1.0);
            }
            Ok(Err(e)) => self.mark_down(e.to_string()),
            Err(_) => self.mark_down("ping timed out".into()),
        }
    }
}
