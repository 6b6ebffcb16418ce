//! "Not before T", per target, shared by every request.
//!
//! Once a provider has said "retry after T" for a model, no request of any client is sent to
//! that target before T: the next request either waits (when T fits its deadline and its
//! route's patience) or goes to the next target.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Cooldowns {
    until: Mutex<HashMap<String, Instant>>,
}

impl Cooldowns {
    /// Records that `key` may not be called before `now + wait`; a later T never shortens an
    /// earlier one.
    pub fn hold(&self, key: &str, wait: Duration) {
        let at = Instant::now() + wait;
        let mut map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(key.to_string()).or_insert(at);
        if *entry < at {
            *entry = at;
        }
    }

    /// How many targets have a hold recorded (expired ones are dropped when next read).
    pub fn len(&self) -> usize {
        self.until.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How long `key` must still wait; None when it may be called now.
    pub fn remaining(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some(at) if *at > now => Some(*at - now),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_lasts_until_its_time_and_is_never_shortened() {
        let c = Cooldowns::default();
        assert_eq!(c.remaining("a"), None);
        c.hold("a", Duration::from_secs(10));
        c.hold("a", Duration::from_millis(1));
        assert!(c.remaining("a").unwrap() > Duration::from_secs(9));
        assert_eq!(c.remaining("b"), None);
        c.hold("b", Duration::ZERO);
        assert_eq!(c.remaining("b"), None);
    }
}
