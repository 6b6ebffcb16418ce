//! When to try again, and how long to wait first.
//!
//! Backoff is exponential with full jitter (a uniform wait between zero and the exponential
//! ceiling), so that many clients failing together do not retry together. A provider's own
//! word wins over the backoff: `Retry-After` in seconds or as an HTTP-date, else OpenAI's
//! `x-ratelimit-reset-*` durations or Anthropic's `anthropic-ratelimit-*-reset` timestamps.
//! Every wait is capped by what is left of the request's deadline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

use crate::config::RetrySettings;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub settings: RetrySettings,
}

/// What the policy says about the next attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Wait this long, then try the same target again.
    RetryAfter(Duration),
    /// Give up on this target: attempts spent, or the wait would not fit.
    NextTarget,
}

impl RetryPolicy {
    pub fn new(settings: RetrySettings) -> Self {
        Self { settings }
    }

    /// The exponential ceiling for the given attempt (1 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.settings
            .backoff_base
            .saturating_mul(factor)
            .min(self.settings.backoff_max)
    }

    /// Full jitter: uniform in `[0, ceiling]`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// `attempts_made` attempts have failed on this target; `told` is the provider's own wait.
    pub fn decide(&self, attempts_made: u32, told: Option<Duration>, left: Duration) -> Decision {
        if attempts_made >= self.settings.max_attempts {
            return Decision::NextTarget;
        }
        let wait = match told {
            Some(t) if t > self.settings.max_retry_after => return Decision::NextTarget,
            Some(t) => t,
            None => self.backoff(attempts_made),
        };
        // Waiting past the deadline helps no one; neither does an attempt with no time left.
        if wait >= left {
            return Decision::NextTarget;
        }
        Decision::RetryAfter(wait)
    }
}

/// How long the provider asks us to wait, from a response's headers.
pub fn told_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(v) = header_str(headers, "retry-after") {
        if let Some(d) = parse_retry_after(v, now) {
            return Some(d);
        }
    }
    if let Some(v) = header_str(headers, "retry-after-ms") {
        if let Ok(ms) = v.trim().parse::<f64>() {
            if ms.is_finite() && ms >= 0.0 {
                return Some(Duration::from_secs_f64(ms / 1e3));
            }
        }
    }
    rate_limit_reset(headers, now)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Retry-After`: delta-seconds, or an HTTP-date (a date in the past means now).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The rate-limit reset headers: the latest reset among exhausted limits, else the earliest.
fn rate_limit_reset(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let mut exhausted: Option<Duration> = None;
    let mut any: Option<Duration> = None;
    for limit in ["requests", "tokens", "input-tokens", "output-tokens"] {
        let openai = header_str(headers, &format!("x-ratelimit-reset-{limit}"))
            .and_then(parse_go_duration)
            .map(|d| (d, format!("x-ratelimit-remaining-{limit}")));
        let anthropic = header_str(headers, &format!("anthropic-ratelimit-{limit}-reset"))
            .and_then(parse_rfc3339)
            .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
            .map(|d| (d, format!("anthropic-ratelimit-{limit}-remaining")));
        for (reset, remaining) in openai.into_iter().chain(anthropic) {
            any = Some(any.map_or(reset, |a| a.min(reset)));
            if header_str(headers, &remaining).map(str::trim) == Some("0") {
                exhausted = Some(exhausted.map_or(reset, |e| e.max(reset)));
            }
        }
    }
    exhausted.or(any)
}

/// OpenAI's reset durations: `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let mut rest = value.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Some(Duration::from_secs_f64(total))
}

/// `2024-05-01T12:00:03Z` or with an offset and fractional seconds.
pub fn parse_rfc3339(value: &str) -> Option<SystemTime> {
    let v = value.trim().as_bytes();
    let num = |a: usize, b: usize| -> Option<i64> {
        std::str::from_utf8(v.get(a..b)?).ok()?.parse().ok()
    };
    if v.len() < 20 || v[4] != b'-' || v[7] != b'-' || !matches!(v[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, s) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut i = 19;
    let mut frac = 0.0;
    if v[i] == b'.' {
        let start = i;
        i += 1;
        while i < v.len() && v[i].is_ascii_digit() {
            i += 1;
        }
        frac = std::str::from_utf8(&v[start..i]).ok()?.parse().ok()?;
    }
    let offset = match v.get(i)? {
        b'Z' | b'z' => 0,
        sign @ (b'+' | b'-') => {
            let off = num(i + 1, i + 3)? * 3600 + num(i + 4, i + 6)? * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_secs_f64(frac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(RetrySettings {
            max_attempts: 4,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(10),
        })
    }

    #[test]
    fn backoff_is_jittered_below_an_exponential_ceiling() {
        let p = policy();
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(3), Duration::from_millis(400));
        assert_eq!(p.ceiling(10), Duration::from_millis(1000));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_millis(1000));
        let waits: Vec<Duration> = (0..200).map(|_| p.backoff(3)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(400)));
        // Full jitter spreads over the whole range, not near the ceiling only.
        assert!(waits.iter().any(|w| *w < Duration::from_millis(100)));
        assert!(waits.iter().any(|w| *w > Duration::from_millis(300)));
    }

    #[test]
    fn decisions_respect_attempts_retry_after_and_the_deadline() {
        let p = policy();
        let long = Duration::from_secs(60);
        let two = Duration::from_secs(2);
        assert_eq!(p.decide(1, Some(two), long), Decision::RetryAfter(two));
        assert_eq!(p.decide(4, Some(two), long), Decision::NextTarget);
        // Longer than the route accepts to wait.
        assert_eq!(
            p.decide(1, Some(Duration::from_secs(11)), long),
            Decision::NextTarget
        );
        // Past the deadline.
        assert_eq!(
            p.decide(1, Some(two), Duration::from_secs(1)),
            Decision::NextTarget
        );
        match p.decide(2, None, long) {
            Decision::RetryAfter(w) => assert!(w <= Duration::from_millis(200)),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn retry_after_in_seconds_and_as_an_http_date() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 0.5 ", now),
            Some(Duration::from_millis(500))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(3));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(3)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(3));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn rate_limit_reset_headers() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset-requests", HeaderValue::from_static("1s"));
        h.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("6m0s"));
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("0"),
        );
        h.insert(
            "x-ratelimit-remaining-tokens",
            HeaderValue::from_static("100"),
        );
        assert_eq!(told_wait(&h, now), Some(Duration::from_secs(1)));
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(told_wait(&h, now), Some(Duration::from_secs(7)));

        let mut a = HeaderMap::new();
        a.insert(
            "anthropic-ratelimit-requests-reset",
            HeaderValue::from_static("2023-11-14T22:13:25Z"),
        );
        // 1_700_000_000 is 2023-11-14T22:13:20Z.
        assert_eq!(told_wait(&a, now), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_go_duration("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_go_duration("3x"), None);
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20.250+01:00"),
            Some(now + Duration::from_millis(250))
        );
    }
}
