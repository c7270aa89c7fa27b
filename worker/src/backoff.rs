//! The wait between tries to reach the hub: capped exponential backoff
//! with jitter, a small type of its own so its bounds are unit-tested
//! without a socket or a sleep.

use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff with jitter: 100 ms doubling to 5 s, each
/// wait drawn between half and all of the current step, so workers that
/// lost the hub together do not come back in lockstep.
pub(crate) struct Backoff {
    step: Duration,
    /// Waits handed out so far.
    pub(crate) tries: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Backoff {
        Backoff {
            step: Self::FIRST,
            tries: 0,
        }
    }

    /// The wait before the next try.
    pub(crate) fn next(&mut self) -> Duration {
        self.tries += 1;
        let wait = self.step.mul_f64(rand::rng().random_range(0.5..=1.0));
        self.step = (self.step * 2).min(Self::CAP);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        let mut backoff = Backoff::new();
        let waits: Vec<Duration> = (0..10).map(|_| backoff.next()).collect();
        assert!(waits[0] >= Backoff::FIRST / 2 && waits[0] <= Backoff::FIRST);
        assert!(waits[1] >= Backoff::FIRST && waits[1] <= Backoff::FIRST * 2);
        for wait in &waits[6..] {
            assert!(
                *wait >= Backoff::CAP / 2 && *wait <= Backoff::CAP,
                "{wait:?}"
            );
        }
        assert_eq!(backoff.tries, 10);
    }
}
