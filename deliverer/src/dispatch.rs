//! The node's bus consumer: turns the events the router addresses to this node into frames
//! (each serialized once, its bytes shared by all the user's sockets), pushes them through
//! the registry and tells the tracker which messages went out (attempt 1). A message every
//! socket of its user skipped (their replay sent it) is not reported: the replay did.

use std::sync::Arc;

use esh_backends::media_links::MediaLinks;
use esh_backends::NodeEvent;
use esh_common::view::MediaView;
use esh_common::{Message, MessageRoute};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::frames;
use crate::registry::{Outgoing, Registry};
use crate::tracker::{Command, Delivery};

/// Bus batches taken at once.
const BATCHES_AT_ONCE: usize = 64;

/// Runs until `shutdown` is cancelled or the bus closes.
pub(crate) async fn run(
    mut events: mpsc::Receiver<Vec<NodeEvent>>,
    media: MediaLinks,
    registry: Arc<Registry>,
    tracker: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) {
    let mut received = Vec::new();
    loop {
        let count = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            count = events.recv_many(&mut received, BATCHES_AT_ONCE) => count,
        };
        if count == 0 {
            break;
        }
        let events: Vec<NodeEvent> = received.drain(..).flatten().collect();
        let messages = events.iter().filter_map(|event| match event {
            NodeEvent::Message(message) => Some(message),
            NodeEvent::Status { .. } => None,
        });
        let mut media = media_of(&media, messages).await.into_iter();
        let (outgoing, routes): (Vec<Outgoing>, Vec<Option<MessageRoute>>) = events
            .into_iter()
            .map(|event| {
                let route = match &event {
                    NodeEvent::Message(message) => Some(message.route()),
                    NodeEvent::Status { .. } => None,
                };
                (to_frame(event, &mut media), route)
            })
            .unzip();
        // Sockets skip the messages their replay already sent them.
        let reached = registry.push_routed(&outgoing);
        let deliveries: Vec<Delivery> = outgoing
            .into_iter()
            .zip(routes)
            .zip(reached)
            .filter(|(_, reached)| *reached)
            .filter_map(|((outgoing, route), _)| {
                Some(Delivery { user: outgoing.user, message_id: outgoing.message_id?, frame: outgoing.frame, route: route? })
            })
            .collect();
        if !deliveries.is_empty() && tracker.send(Command::Sent(deliveries)).await.is_err() {
            break;
        }
    }
}

/// The media objects of `messages` (one list each, URLs signed for one hour). A catalog
/// that fails leaves them out: the message itself still goes out.
pub(crate) async fn media_of<'m>(media: &MediaLinks, messages: impl IntoIterator<Item = &'m Message>) -> Vec<Vec<MediaView>> {
    let messages: Vec<&Message> = messages.into_iter().collect();
    match media.resolve(messages.iter().copied(), &media.base(None)).await {
        Ok(resolved) => resolved,
        Err(error) => {
            tracing::warn!(%error, "cannot resolve media objects; delivering without them");
            vec![Vec::new(); messages.len()]
        }
    }
}

/// The frame of an event; message events take their media from `media`, in order.
fn to_frame(event: NodeEvent, media: &mut impl Iterator<Item = Vec<MediaView>>) -> Outgoing {
    match event {
        NodeEvent::Message(message) => {
            let frame = frames::message(&message, media.next().unwrap_or_default());
            Outgoing { user: message.recipient_id, message_id: Some(message.id), frame }
        }
        NodeEvent::Status { user, message_id, status, at } => {
            Outgoing { user, message_id: None, frame: frames::status(&message_id, status, at) }
        }
    }
}
