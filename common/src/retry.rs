//! The delivery retry schedule (Req 4.1, 4.2): the first send is attempt 1; an attempt not
//! acknowledged within the ack timeout is retried after 1, 2, 4, 8, 16 and 32 s; when the
//! 6th retry is not acknowledged the message is dead-lettered.

use std::time::Duration;

/// Waits before each retry, in order.
pub const BACKOFF: [Duration; 6] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
    Duration::from_secs(32),
];

/// Total sends of one message before it is dead-lettered (the first plus six retries).
pub const MAX_ATTEMPTS: u32 = BACKOFF.len() as u32 + 1;

/// How long to wait before sending attempt `next_attempt` (2..=MAX_ATTEMPTS); None when
/// the schedule is exhausted and the message is to be dead-lettered.
pub fn backoff_before(next_attempt: u32) -> Option<Duration> {
    let index = next_attempt.checked_sub(2)? as usize;
    BACKOFF.get(index).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_1_2_4_8_16_32_then_dead_letter() {
        let waits: Vec<u64> = (2..=MAX_ATTEMPTS).map(|a| backoff_before(a).unwrap().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32]);
        assert_eq!(backoff_before(MAX_ATTEMPTS + 1), None);
        assert_eq!(backoff_before(1), None);
    }
}
