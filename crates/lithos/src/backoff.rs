//! Restart backoff (spec §3.5): delay k = min(restart-timeout × multiplier^(k-1), max-delay)
//! for the k-th consecutive failure; next start = max(now, last start + delay).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The restart policy of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// The first delay (`restart-timeout`), also the delay after a normal exit.
    pub restart_timeout: f64,
    pub multiplier: f64,
    pub max_delay: f64,
    pub reset_after: f64,
    pub give_up_after: Option<u32>,
}

/// What to do after a process ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Start again at this instant, after waiting `delay` from the last start.
    Restart { at: Instant, delay: Duration },
    /// `give-up-after` consecutive failures reached.
    GiveUp,
}

/// Consecutive-failure counter of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    /// `k`: consecutive failures; 0 after a reset.
    pub failures: u32,
}

impl RestartPolicy {
    /// The wait after the k-th consecutive failure (k = 0: after a normal exit).
    pub fn delay(&self, k: u32) -> Duration {
        let secs = if k == 0 {
            self.restart_timeout
        } else {
            let grown = self.restart_timeout * self.multiplier.powi(k as i32 - 1);
            grown.min(self.max_delay.max(self.restart_timeout))
        };
        Duration::from_secs_f64(secs.max(0.0))
    }
}

impl Backoff {
    /// Records an end of the process that started at `started` and ran until `now`.
    pub fn on_exit(
        &mut self,
        policy: &RestartPolicy,
        failed: bool,
        started: Instant,
        now: Instant,
    ) -> Decision {
        self.count(policy, failed, started, now);
        self.decide(policy, failed, started, now)
    }

    /// Counts an end without deciding: `k` rises on a failure and resets after a normal exit
    /// or a run of `reset-after` seconds.
    pub fn count(&mut self, policy: &RestartPolicy, failed: bool, started: Instant, now: Instant) {
        let ran = now.saturating_duration_since(started);
        if !failed || ran.as_secs_f64() >= policy.reset_after {
            self.failures = 0;
        }
        if failed {
            self.failures = self.failures.saturating_add(1);
        }
    }

    /// The next step after an end that is already counted.
    pub fn decide(
        &self,
        policy: &RestartPolicy,
        failed: bool,
        started: Instant,
        now: Instant,
    ) -> Decision {
        if failed && policy.give_up_after.is_some_and(|n| self.failures >= n) {
            return Decision::GiveUp;
        }
        let delay = policy.delay(self.failures);
        Decision::Restart {
            at: (started + delay).max(now),
            delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            restart_timeout: 1.0,
            multiplier: 2.0,
            max_delay: 8.0,
            reset_after: 30.0,
            give_up_after: None,
        }
    }

    #[test]
    fn crash_loop_starts_at_0_1_3_7_15_23() {
        let p = policy();
        let t0 = Instant::now();
        let mut b = Backoff::default();
        let mut start = t0;
        let mut starts = vec![0.0];
        for _ in 0..5 {
            match b.on_exit(&p, true, start, start) {
                Decision::Restart { at, .. } => start = at,
                Decision::GiveUp => panic!("gave up"),
            }
            starts.push((start - t0).as_secs_f64().round());
        }
        assert_eq!(starts, [0.0, 1.0, 3.0, 7.0, 15.0, 23.0]);
        assert_eq!(b.failures, 5);
    }

    #[test]
    fn normal_exit_restarts_after_restart_timeout_without_failures() {
        let p = policy();
        let t0 = Instant::now();
        let mut b = Backoff { failures: 3 };
        let d = b.on_exit(&p, false, t0, t0);
        assert_eq!(b.failures, 0);
        assert_eq!(
            d,
            Decision::Restart {
                at: t0 + Duration::from_secs(1),
                delay: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn long_run_resets_and_give_up_stops() {
        let mut p = policy();
        let t0 = Instant::now();
        let mut b = Backoff { failures: 4 };
        let later = t0 + Duration::from_secs(31);
        assert_eq!(
            b.on_exit(&p, true, t0, later),
            Decision::Restart {
                at: later,
                delay: Duration::from_secs(1)
            }
        );
        assert_eq!(b.failures, 1);
        p.give_up_after = Some(2);
        assert_eq!(b.on_exit(&p, true, t0, t0), Decision::GiveUp);
    }

    #[test]
    fn multiplier_one_is_the_original_fixed_delay() {
        let p = RestartPolicy {
            multiplier: 1.0,
            ..policy()
        };
        assert_eq!(p.delay(1), p.delay(10));
    }
}
