//! The generic cell rate algorithm (GCRA), the arithmetic of every meter.
//!
//! A meter allows `limit` units per `window` and may spend the whole limit at once. Its only
//! state is the theoretical arrival time (`tat`, microseconds since the Unix epoch): the
//! moment the meter would be empty again. Requests are *taken* (checked and charged in one
//! step); tokens and spend are only known after the work, so admission *checks* that the meter
//! has room for one unit and the actual amount is *charged* afterwards, which may run the meter
//! into debt that later requests wait out. `redis_store.rs` carries the same arithmetic in
//! Lua; the unit tests here and the Redis tests pin both to the same numbers.

/// `limit` units per `window_us` microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub limit: f64,
    pub window_us: f64,
}

impl Rate {
    pub fn per_minute(limit: f64) -> Self {
        Self {
            limit,
            window_us: 60e6,
        }
    }

    pub fn per_day(limit: f64) -> Self {
        Self {
            limit,
            window_us: 86_400e6,
        }
    }

    /// Microseconds one unit occupies.
    pub fn interval_us(&self) -> f64 {
        self.window_us / self.limit
    }
}

/// What admission does to a meter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Charge `cost` units now, refusing when they do not fit.
    Take(f64),
    /// Refuse only when not even one unit fits; charge later.
    Check,
}

/// One meter's answer, in whole units and microseconds (rounded as the Lua script rounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// How long until the refused admission would fit.
    pub retry_after_us: u64,
    /// Units still available after this admission.
    pub remaining: u64,
    /// How long until the meter is full again.
    pub reset_us: u64,
}

// A microsecond's slack, so that float rounding never refuses the limit's last unit.
const SLACK_US: f64 = 1.0;

/// Evaluates `mode` against a meter whose state is `tat`; returns the verdict and the state
/// to store if the whole admission (all its meters) is allowed.
pub fn evaluate(rate: Rate, mode: Mode, tat: Option<f64>, now: f64) -> (Verdict, f64) {
    let interval = rate.interval_us();
    let tau = rate.window_us;
    let start = tat.unwrap_or(now).max(now);
    let (needed, new_tat) = match mode {
        Mode::Take(cost) => (start + cost * interval, start + cost * interval),
        Mode::Check => (start + interval, start),
    };
    let allowed = needed - now <= tau + SLACK_US;
    let stored = if allowed { new_tat } else { start };
    let verdict = Verdict {
        allowed,
        retry_after_us: if allowed {
            0
        } else {
            (needed - now - tau).ceil() as u64
        },
        remaining: ((tau - (stored - now) + SLACK_US) / interval)
            .floor()
            .max(0.0) as u64,
        reset_us: (stored - now).ceil().max(0.0) as u64,
    };
    (verdict, stored)
}

/// The state after charging `cost` units at `now`, with no limit: debt is allowed.
pub fn charge(rate: Rate, cost: f64, tat: Option<f64>, now: f64) -> f64 {
    tat.unwrap_or(now).max(now) + cost * rate.interval_us()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_limit_passes_then_one_more_waits_one_interval() {
        let rate = Rate::per_minute(3.0);
        let now = 1e15;
        let mut tat = None;
        for remaining in [2, 1, 0] {
            let (v, t) = evaluate(rate, Mode::Take(1.0), tat, now);
            assert!(v.allowed);
            assert_eq!(v.remaining, remaining);
            tat = Some(t);
        }
        let (v, t) = evaluate(rate, Mode::Take(1.0), tat, now);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_us, 20_000_000);
        assert_eq!(v.reset_us, 60_000_000);
        assert_eq!(Some(t), tat, "a refusal charges nothing");
        // Twenty seconds later one unit has dripped back.
        let (v, _) = evaluate(rate, Mode::Take(1.0), tat, now + 20e6);
        assert!(v.allowed);
        assert_eq!(v.remaining, 0);
    }

    #[test]
    fn charges_may_run_into_debt_that_checks_wait_out() {
        let rate = Rate::per_minute(100.0);
        let now = 1e15;
        let (v, tat) = evaluate(rate, Mode::Check, None, now);
        assert!(v.allowed && v.remaining == 100);
        // 250 tokens at 100 a minute occupy 150 s: 90 s beyond the window, plus one token's 0.6 s.
        let tat = charge(rate, 250.0, Some(tat), now);
        let (v, _) = evaluate(rate, Mode::Check, Some(tat), now);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_us, 90_600_000);
        let (v, _) = evaluate(rate, Mode::Check, Some(tat), now + 90.6e6);
        assert!(v.allowed);
    }

    #[test]
    fn an_idle_meter_is_full_whatever_its_old_state() {
        let rate = Rate::per_day(5e6);
        let (v, _) = evaluate(rate, Mode::Check, Some(1.0), 1e15);
        assert!(v.allowed);
        assert_eq!(v.remaining, 5_000_000);
        assert_eq!(v.reset_us, 0);
    }
}
