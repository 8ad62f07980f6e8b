//! Builders of model values shared by the tests and benchmarks of several crates. Callers
//! change what matters to them with struct update syntax:
//! `Message { content: "kept".into(), ..fixtures::one_way("biz", "m1") }`.

use esh_common::{ids, Message, MessageType, Millis, Priority, Status};

/// A one-way message from `sender` to `recipient`: fresh (time-ordered) id, content
/// "hello", no media, normal priority, status `sent` as of now.
pub fn one_way(sender: &str, recipient: &str) -> Message {
    let now = Millis::now();
    Message {
        id: ids::new_id(),
        kind: MessageType::OneWay,
        sender_id: sender.to_owned(),
        recipient_id: recipient.to_owned(),
        conversation_id: None,
        content: "hello".into(),
        media_ids: Vec::new(),
        priority: Priority::Normal,
        status: Status::Sent,
        status_changed_at: now,
        created_at: now,
        error: None,
        broadcast_id: None,
    }
}

/// A chat message of `conversation` from `sender` to `recipient`, otherwise like [`one_way`].
pub fn chat(conversation: &str, sender: &str, recipient: &str) -> Message {
    Message {
        kind: MessageType::Chat,
        conversation_id: Some(conversation.to_owned()),
        ..one_way(sender, recipient)
    }
}
