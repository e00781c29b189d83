//! Capped exponential backoff with jitter, for reconnecting to a dependency
//! that went away: many processes that lost the same broker or database do
//! not come back in lockstep, and none waits longer than the cap.

use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `base`, doubles on every failure, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            next: base,
        }
    }

    /// The usual reconnect schedule: 100 ms doubling up to 2 s, so a
    /// dependency that is back is found within about 2 s.
    pub fn reconnect() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// How long to wait before the next try: the current step with ±25 %
    /// jitter. The step then doubles (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.cap);
        let jitter = rand::rng().random_range(0.75..=1.25);
        step.mul_f64(jitter)
    }

    /// Sleeps for [`Self::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Back to the first step (after a success).
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let steps: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        for (got, step) in steps.iter().zip([100u128, 200, 400, 800, 800, 800]) {
            assert!(
                *got >= step * 3 / 4 && *got <= step * 5 / 4,
                "{got} not within 25 % of {step}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
