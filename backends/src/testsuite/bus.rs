//! Conformance of `DeliveryBus`: every implementation runs every property through
//! [`bus_suite!`](crate::bus_suite), one `#[tokio::test]` each. Properties use node ids of
//! their own, so they may share one server.

use std::sync::Arc;
use std::time::Duration;

use esh_common::{ids, Millis, Status};

use crate::bus::{DeliveryBus, NodeEvent, NodeId};

/// How long a receiver waits for a batch it expects.
const PATIENCE: Duration = Duration::from_secs(10);

/// One `#[tokio::test]` per property of the `DeliveryBus` suite, in a module `bus_suite`.
/// `$open` is an expression (in the caller's scope, evaluated once per test) of a future
/// giving an `Arc<dyn DeliveryBus>`. The caller needs `tokio`.
#[macro_export]
macro_rules! bus_suite {
    ($open:expr) => {
        $crate::bus_suite!(@properties $open;
            delivers_to_the_subscribed_node_in_order,
            drops_events_for_unknown_or_stopped_nodes,
            senders_wait_while_a_node_is_full,
        );
    };
    (@properties $open:expr; $($property:ident,)*) => {
        mod bus_suite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $property() {
                    $crate::testsuite::bus::$property($open.await).await;
                }
            )*
        }
    };
}

fn node(label: &str) -> NodeId {
    format!("esh-suite-{label}-{}", ids::new_id())
}

fn status(message_id: &str, at: i64) -> NodeEvent {
    NodeEvent::Status { user: "b1".into(), message_id: message_id.into(), status: Status::Delivered, at: Millis(at) }
}

async fn next(receiver: &mut tokio::sync::mpsc::Receiver<Vec<NodeEvent>>) -> Vec<NodeEvent> {
    tokio::time::timeout(PATIENCE, receiver.recv()).await.expect("a batch in time").expect("the bus is open")
}

/// Req 7.5: each node gets the events sent to it, batch by batch in send order, and only
/// those; an empty send delivers nothing.
pub async fn delivers_to_the_subscribed_node_in_order(bus: Arc<dyn DeliveryBus>) {
    let (node_a, node_b) = (node("a"), node("b"));
    let mut a = bus.subscribe(&node_a, 4).await.expect("subscribe");
    let mut b = bus.subscribe(&node_b, 4).await.expect("subscribe");

    bus.send(&node_a, vec![status("m1", 1), status("m2", 2)]).await.expect("send");
    bus.send(&node_b, vec![status("m3", 3)]).await.expect("send");
    bus.send(&node_a, vec![status("m4", 4)]).await.expect("send");
    bus.send(&node_a, Vec::new()).await.expect("send");

    assert_eq!(next(&mut a).await, vec![status("m1", 1), status("m2", 2)]);
    assert_eq!(next(&mut a).await, vec![status("m4", 4)]);
    assert_eq!(next(&mut b).await, vec![status("m3", 3)], "each node gets only its own events");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(a.try_recv().is_err(), "nothing else, and no empty batch");
}

/// Sending to a node nobody listens on (unknown, or whose receiver is gone) is not an
/// error; a node that subscribes again gets what is sent afterwards.
pub async fn drops_events_for_unknown_or_stopped_nodes(bus: Arc<dyn DeliveryBus>) {
    bus.send(&node("nobody"), vec![status("m1", 1)]).await.expect("an unknown node is not an error");

    let node = node("a");
    let stopped = bus.subscribe(&node, 1).await.expect("subscribe");
    drop(stopped);
    bus.send(&node, vec![status("m1", 1)]).await.expect("a stopped node is not an error");

    let mut again = bus.subscribe(&node, 1).await.expect("subscribe");
    bus.send(&node, vec![status("m2", 2)]).await.expect("send");
    assert_eq!(next(&mut again).await, vec![status("m2", 2)]);
}

/// A node's channel holds at most `capacity` batches: a sender waits for room, and its
/// batch arrives after the ones before it.
pub async fn senders_wait_while_a_node_is_full(bus: Arc<dyn DeliveryBus>) {
    let node = node("a");
    let mut receiver = bus.subscribe(&node, 1).await.expect("subscribe");
    bus.send(&node, vec![status("m1", 1)]).await.expect("send");
    let sending = tokio::spawn({
        let (bus, node) = (bus.clone(), node.clone());
        async move { bus.send(&node, vec![status("m2", 2)]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!sending.is_finished(), "the second batch waits for room");
    assert_eq!(next(&mut receiver).await, vec![status("m1", 1)]);
    tokio::time::timeout(PATIENCE, sending).await.expect("the sender got room").expect("task").expect("send");
    assert_eq!(next(&mut receiver).await, vec![status("m2", 2)]);
}
