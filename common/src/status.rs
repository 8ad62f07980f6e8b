//! The forward-only message status machine of API.md:
//! pending → sent → delivered → read; any non-final state → failed; failed → sent when a
//! dead letter is reprocessed.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Sent,
    Delivered,
    Read,
    Failed,
}

impl Status {
    pub const ALL: [Status; 5] =
        [Status::Pending, Status::Sent, Status::Delivered, Status::Read, Status::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Read => "read",
            Status::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Position on the happy path; `Failed` is off it.
    fn rank(self) -> Option<u8> {
        match self {
            Status::Pending => Some(0),
            Status::Sent => Some(1),
            Status::Delivered => Some(2),
            Status::Read => Some(3),
            Status::Failed => None,
        }
    }

    /// Whether a message may move from `self` to `next` (Req 9, API.md "Status only moves forward").
    pub fn can_move_to(self, next: Status) -> bool {
        match (self.rank(), next.rank()) {
            (Some(from), Some(to)) => to > from,
            // Any non-final state may fail; read is final.
            (Some(_), None) => self != Status::Read,
            // A failed message that is reprocessed goes back to sent.
            (None, _) => next == Status::Sent,
        }
    }

    /// Whether the recipient already has the message.
    pub fn is_delivered(self) -> bool {
        matches!(self, Status::Delivered | Status::Read)
    }
}

#[cfg(test)]
mod tests {
    use super::Status::*;

    #[test]
    fn only_forward_moves_are_allowed() {
        assert!(Pending.can_move_to(Sent));
        assert!(Sent.can_move_to(Read));
        assert!(Delivered.can_move_to(Read));
        assert!(!Read.can_move_to(Delivered));
        assert!(!Delivered.can_move_to(Sent));
        assert!(!Sent.can_move_to(Sent));
        assert!(Sent.can_move_to(Failed));
        assert!(!Read.can_move_to(Failed));
        assert!(!Failed.can_move_to(Delivered));
        assert!(Failed.can_move_to(Sent));
    }
}
