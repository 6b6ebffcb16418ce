//! Requests in flight per provider, under a configured limit.
//!
//! A request over the limit queues briefly for a slot rather than being sent to a provider
//! that would refuse it; if no slot frees up in time, the caller tries the next target.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone)]
pub struct ConcurrencyLimiter {
    slots: Arc<Semaphore>,
    queue_timeout: Duration,
}

impl ConcurrencyLimiter {
    pub fn new(max_concurrency: usize, queue_timeout: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_concurrency)),
            queue_timeout,
        }
    }

    /// A slot, held until the permit is dropped; None when none freed up in time (or before
    /// `limit`, whichever is sooner).
    pub async fn acquire(&self, limit: Duration) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        let wait = self.queue_timeout.min(limit);
        tokio::time::timeout(wait, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_limiter_queues_then_gives_up() {
        let l = ConcurrencyLimiter::new(1, Duration::from_millis(50));
        let first = l.acquire(Duration::from_secs(1)).await.unwrap();
        assert!(l.acquire(Duration::from_secs(1)).await.is_none());
        let l2 = l.clone();
        let waiter =
            tokio::spawn(async move { l2.acquire(Duration::from_secs(1)).await.is_some() });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(first);
        assert!(waiter.await.unwrap());
        assert_eq!(l.available(), 1);
    }
}
