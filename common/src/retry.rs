//! The delivery retry schedule (Req 4.1, 4.2): the first send is attempt 1; an attempt not
//! acknowledged within the ack timeout is retried after each wait of the schedule in turn
//! (by default 1, 2, 4, 8, 16 and 32 s, API.md "Precise rules", WebSocket); when the last
//! retry is not acknowledged either the message is dead-lettered.
//!
//! The schedule is a setting (`ESH_RETRY_SCHEDULE`, `server/src/config.rs`) so that tests
//! and drills can run the whole schedule in milliseconds; deployments keep the default.

use std::fmt;
use std::time::Duration;

/// The contract's waits before each retry: 1, 2, 4, 8, 16 and 32 s.
pub const DEFAULT_BACKOFF: [Duration; 6] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
    Duration::from_secs(32),
];

/// Why a list of waits is not a retry schedule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("a retry schedule needs at least one wait")]
    Empty,
    #[error("retry wait {index} is zero; every wait must be positive")]
    ZeroWait { index: usize },
}

/// The waits before each retry of an unacknowledged delivery, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    waits: Vec<Duration>,
}

impl RetrySchedule {
    /// A schedule of these waits (at least one, none zero).
    pub fn new(waits: Vec<Duration>) -> Result<Self, ScheduleError> {
        if waits.is_empty() {
            return Err(ScheduleError::Empty);
        }
        if let Some(index) = waits.iter().position(Duration::is_zero) {
            return Err(ScheduleError::ZeroWait { index });
        }
        Ok(RetrySchedule { waits })
    }

    /// The waits before each retry, in order.
    pub fn waits(&self) -> &[Duration] {
        &self.waits
    }

    /// Total sends of one message before it is dead-lettered: the first plus one a wait
    /// (7 with the default schedule).
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.waits.len()).map_or(u32::MAX, |retries| retries.saturating_add(1))
    }

    /// How long to wait before sending attempt `next_attempt` (2..=max_attempts); None when
    /// the schedule is exhausted and the message is to be dead-lettered.
    pub fn backoff_before(&self, next_attempt: u32) -> Option<Duration> {
        let index = next_attempt.checked_sub(2)? as usize;
        self.waits.get(index).copied()
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule { waits: DEFAULT_BACKOFF.to_vec() }
    }
}

/// `1s,2s,4s`, `10ms,20ms`: the form `ESH_RETRY_SCHEDULE` takes.
impl fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, wait) in self.waits.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            if wait.subsec_nanos() == 0 {
                write!(f, "{}s", wait.as_secs())?;
            } else {
                write!(f, "{}ms", wait.as_millis())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_is_1_2_4_8_16_32_then_dead_letter_req_4_1_4_2() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.max_attempts(), 7);
        let waits: Vec<u64> =
            (2..=schedule.max_attempts()).map(|a| schedule.backoff_before(a).unwrap().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32]);
        assert_eq!(schedule.backoff_before(schedule.max_attempts() + 1), None);
        assert_eq!(schedule.backoff_before(1), None);
        assert_eq!(schedule.backoff_before(0), None);
        assert_eq!(schedule.to_string(), "1s,2s,4s,8s,16s,32s");
    }

    #[test]
    fn a_shorter_schedule_dead_letters_sooner() {
        let schedule = RetrySchedule::new(vec![Duration::from_millis(10), Duration::from_millis(20)]).unwrap();
        assert_eq!(schedule.max_attempts(), 3);
        assert_eq!(schedule.backoff_before(2), Some(Duration::from_millis(10)));
        assert_eq!(schedule.backoff_before(3), Some(Duration::from_millis(20)));
        assert_eq!(schedule.backoff_before(4), None);
        assert_eq!(schedule.to_string(), "10ms,20ms");
    }

    #[test]
    fn empty_schedules_and_zero_waits_are_refused() {
        assert_eq!(RetrySchedule::new(Vec::new()), Err(ScheduleError::Empty));
        assert_eq!(
            RetrySchedule::new(vec![Duration::from_secs(1), Duration::ZERO]),
            Err(ScheduleError::ZeroWait { index: 1 })
        );
    }
}
