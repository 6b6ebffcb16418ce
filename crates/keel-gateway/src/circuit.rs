//! A circuit breaker per target: closed, open, half-open.
//!
//! Closed, it records outcomes over a sliding time window and opens when, with enough
//! outcomes to trust the ratio, the share of failures reaches the threshold. Open, it refuses
//! every request until its time is up; then it lets one probe through (half-open). The
//! probe's success closes it with a clean window; its failure opens it again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use crate::config::CircuitSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    /// The value of the state gauge.
    pub fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::Open => 1.0,
            CircuitState::HalfOpen => 2.0,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    outcomes: VecDeque<(Instant, bool)>,
    open_until: Instant,
    probe_in_flight: bool,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    settings: CircuitSettings,
    inner: Mutex<Inner>,
}

/// Whether a request may go to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Allowed as the one half-open probe: report its outcome.
    Probe,
    Refused,
}

impl CircuitBreaker {
    pub fn new(settings: CircuitSettings) -> Self {
        let now = Instant::now();
        Self {
            settings,
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                outcomes: VecDeque::new(),
                open_until: now,
                probe_in_flight: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> CircuitState {
        self.lock().state
    }

    pub fn admit(&self) -> Admission {
        self.admit_at(Instant::now())
    }

    pub fn admit_at(&self, now: Instant) -> Admission {
        let mut s = self.lock();
        match s.state {
            CircuitState::Closed => Admission::Allowed,
            CircuitState::Open if now >= s.open_until => {
                s.state = CircuitState::HalfOpen;
                s.probe_in_flight = true;
                Admission::Probe
            }
            CircuitState::Open => Admission::Refused,
            CircuitState::HalfOpen if !s.probe_in_flight => {
                s.probe_in_flight = true;
                Admission::Probe
            }
            CircuitState::HalfOpen => Admission::Refused,
        }
    }

    /// Records one outcome; returns the state after it.
    pub fn record(&self, success: bool) -> CircuitState {
        self.record_at(success, Instant::now())
    }

    pub fn record_at(&self, success: bool, now: Instant) -> CircuitState {
        let mut s = self.lock();
        match s.state {
            CircuitState::HalfOpen => {
                s.probe_in_flight = false;
                s.outcomes.clear();
                if success {
                    s.state = CircuitState::Closed;
                } else {
                    s.state = CircuitState::Open;
                    s.open_until = now + self.settings.open_for;
                }
            }
            // An outcome of a request admitted before the circuit opened changes nothing.
            CircuitState::Open => {}
            CircuitState::Closed => {
                s.outcomes.push_back((now, success));
                let horizon = now.checked_sub(self.settings.window).unwrap_or(now);
                while s.outcomes.front().is_some_and(|(t, _)| *t < horizon) {
                    s.outcomes.pop_front();
                }
                let total = s.outcomes.len();
                let failures = s.outcomes.iter().filter(|(_, ok)| !ok).count();
                // Only a failure can open it: a success never makes the ratio worse.
                if !success
                    && total >= self.settings.min_requests as usize
                    && failures as f64 >= self.settings.failure_ratio * total as f64
                {
                    s.state = CircuitState::Open;
                    s.open_until = now + self.settings.open_for;
                    s.outcomes.clear();
                }
            }
        }
        s.state
    }

    /// A probe that ended without an outcome (cancelled, or refused locally) frees the slot.
    pub fn release_probe(&self) {
        let mut s = self.lock();
        if s.state == CircuitState::HalfOpen {
            s.probe_in_flight = false;
        }
    }
}

/// A request the circuit let through. If it was the half-open probe and is dropped without
/// an outcome (the client left, or no slot was free), the probe slot is freed, so that the
/// circuit cannot stay half-open forever.
pub struct Admitted {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
}

impl Admitted {
    pub fn new(breaker: Arc<CircuitBreaker>) -> Option<Self> {
        match breaker.admit() {
            Admission::Allowed => Some(Self {
                breaker,
                probe: false,
            }),
            Admission::Probe => Some(Self {
                breaker,
                probe: true,
            }),
            Admission::Refused => None,
        }
    }

    /// Records the outcome; returns the state after it.
    pub fn record(mut self, success: bool) -> CircuitState {
        self.probe = false;
        self.breaker.record(success)
    }

    /// The upstream answered, but in a way that says nothing of its health (a 429, a
    /// client error): a probe counts it as a success, other requests record nothing.
    pub fn neutral(mut self) -> CircuitState {
        if std::mem::take(&mut self.probe) {
            self.breaker.record(true)
        } else {
            self.breaker.state()
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(CircuitSettings {
            window: Duration::from_secs(10),
            min_requests: 4,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(5),
        })
    }

    #[test]
    fn opens_on_a_high_failure_ratio_then_probes_and_closes() {
        let cb = breaker();
        let t0 = Instant::now();
        assert_eq!(cb.record_at(true, t0), CircuitState::Closed);
        assert_eq!(cb.record_at(false, t0), CircuitState::Closed);
        assert_eq!(cb.record_at(false, t0), CircuitState::Closed);
        assert_eq!(cb.record_at(true, t0), CircuitState::Closed);
        // Five outcomes, three failures: 60% opens it.
        assert_eq!(cb.record_at(false, t0), CircuitState::Open);
        assert_eq!(cb.admit_at(t0 + Duration::from_secs(1)), Admission::Refused);
        let later = t0 + Duration::from_secs(6);
        assert_eq!(cb.admit_at(later), Admission::Probe);
        // Only one probe at a time.
        assert_eq!(cb.admit_at(later), Admission::Refused);
        assert_eq!(cb.record_at(true, later), CircuitState::Closed);
        assert_eq!(cb.admit_at(later), Admission::Allowed);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let cb = breaker();
        let t0 = Instant::now();
        for _ in 0..4 {
            cb.record_at(false, t0);
        }
        assert_eq!(cb.state(), CircuitState::Open);
        let later = t0 + Duration::from_secs(6);
        assert_eq!(cb.admit_at(later), Admission::Probe);
        assert_eq!(cb.record_at(false, later), CircuitState::Open);
        assert_eq!(
            cb.admit_at(later + Duration::from_secs(1)),
            Admission::Refused
        );
        assert_eq!(
            cb.admit_at(later + Duration::from_secs(6)),
            Admission::Probe
        );
        cb.release_probe();
        assert_eq!(
            cb.admit_at(later + Duration::from_secs(6)),
            Admission::Probe
        );
    }

    #[test]
    fn old_failures_leave_the_window() {
        let cb = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            cb.record_at(false, t0);
        }
        // Eleven seconds later the three failures are outside the window.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(cb.record_at(false, later), CircuitState::Closed);
        assert_eq!(cb.record_at(true, later), CircuitState::Closed);
        assert_eq!(cb.record_at(true, later), CircuitState::Closed);
        assert_eq!(cb.record_at(true, later), CircuitState::Closed);
    }
}
