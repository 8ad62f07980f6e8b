//! Which sockets of which user this node holds: user → sockets, behind one
//! `std::sync::Mutex` held only for short, non-blocking sections (mini-redis `db.rs` style).
//!
//! Frames are pushed into each socket's bounded outbound queue with `try_send`, so a slow
//! client never stalls the node: a frame that does not fit is dropped for that socket. That
//! is safe for message frames — the retry schedule sends them again and a reconnect replays
//! them — and costs a status frame at worst.
//!
//! A socket starts in replay mode: while its undelivered messages are read from the store
//! and sent, live frames are held (up to a cap) and released after the replay, minus those
//! the replay already sent, so that the client sees every message once and in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// A frame for a user's sockets; `message_id` is set on message frames (replay dedup).
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) user: String,
    pub(crate) message_id: Option<String>,
    pub(crate) frame: Utf8Bytes,
}

/// A held frame: its message id (if a message frame) and the bytes.
pub(crate) type Held = (Option<String>, Utf8Bytes);

struct Socket {
    connection: u64,
    outbound: mpsc::Sender<Utf8Bytes>,
    /// `Some` while the socket replays: live frames wait here.
    held: Option<Vec<Held>>,
}

/// The user → sockets map of this node.
pub(crate) struct Registry {
    users: Mutex<HashMap<String, Vec<Socket>>>,
    /// Most live frames one socket holds during its replay.
    hold_cap: usize,
    /// Frames dropped because a socket's queue (or replay hold) was full.
    dropped: AtomicU64,
}

impl Registry {
    pub(crate) fn new(hold_cap: usize) -> Self {
        Registry { users: Mutex::new(HashMap::new()), hold_cap, dropped: AtomicU64::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Socket>>> {
        self.users.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Adds socket `connection` of `user`, in replay mode.
    pub(crate) fn attach(&self, user: &str, connection: u64, outbound: mpsc::Sender<Utf8Bytes>) {
        let socket = Socket { connection, outbound, held: Some(Vec::new()) };
        self.lock().entry(user.to_owned()).or_default().push(socket);
    }

    /// Removes socket `connection` of `user`; true when the user has no socket left here.
    pub(crate) fn detach(&self, user: &str, connection: u64) -> bool {
        let mut users = self.lock();
        let Some(sockets) = users.get_mut(user) else { return true };
        sockets.retain(|socket| socket.connection != connection);
        if sockets.is_empty() {
            users.remove(user);
            return true;
        }
        false
    }

    /// Whether `user` has a socket on this node.
    pub(crate) fn is_connected(&self, user: &str) -> bool {
        self.lock().contains_key(user)
    }

    /// Pushes each frame to every socket of its user; returns, per frame, whether the user
    /// had a socket here. One lock for the whole batch.
    pub(crate) fn push(&self, frames: &[Outgoing]) -> Vec<bool> {
        let mut dropped = 0u64;
        let mut reached = Vec::with_capacity(frames.len());
        {
            let mut users = self.lock();
            for outgoing in frames {
                let Some(sockets) = users.get_mut(&outgoing.user) else {
                    reached.push(false);
                    continue;
                };
                for socket in sockets.iter_mut() {
                    match &mut socket.held {
                        Some(held) if held.len() < self.hold_cap => {
                            held.push((outgoing.message_id.clone(), outgoing.frame.clone()));
                        }
                        Some(_) => dropped += 1,
                        None => match socket.outbound.try_send(outgoing.frame.clone()) {
                            Ok(()) => {}
                            Err(TrySendError::Full(_)) => dropped += 1,
                            // The connection is closing; it detaches itself.
                            Err(TrySendError::Closed(_)) => {}
                        },
                    }
                }
                reached.push(true);
            }
        }
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
            tracing::debug!(dropped, "outbound frames dropped for slow sockets");
        }
        reached
    }

    /// Ends a step of the replay of socket `connection`: returns the frames held meanwhile,
    /// or `None` — having switched the socket to live mode — when none are left.
    pub(crate) fn release(&self, user: &str, connection: u64) -> Option<Vec<Held>> {
        let mut users = self.lock();
        let socket = users.get_mut(user)?.iter_mut().find(|socket| socket.connection == connection)?;
        match socket.held.as_mut() {
            Some(held) if !held.is_empty() => Some(std::mem::take(held)),
            _ => {
                socket.held = None;
                None
            }
        }
    }

    /// Frames dropped so far because a socket could not take them.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(user: &str, id: &str) -> Outgoing {
        Outgoing { user: user.into(), message_id: Some(id.into()), frame: Utf8Bytes::from(id) }
    }

    #[test]
    fn every_socket_of_a_user_gets_every_frame_once_live() {
        let registry = Registry::new(10);
        let (tx1, mut rx1) = mpsc::channel(8);
        let (tx2, mut rx2) = mpsc::channel(8);
        registry.attach("u", 1, tx1);
        registry.attach("u", 2, tx2);
        assert_eq!(registry.release("u", 1), None);
        assert_eq!(registry.release("u", 2), None);
        assert_eq!(registry.push(&[frame("u", "a"), frame("v", "b")]), [true, false]);
        assert_eq!(rx1.try_recv().unwrap(), "a");
        assert_eq!(rx2.try_recv().unwrap(), "a");
        assert!(rx1.try_recv().is_err());
        assert!(!registry.detach("u", 1));
        assert!(registry.detach("u", 2));
        assert!(!registry.is_connected("u"));
    }

    #[test]
    fn frames_are_held_during_replay_and_released_after() {
        let registry = Registry::new(2);
        let (tx, mut rx) = mpsc::channel(8);
        registry.attach("u", 1, tx);
        registry.push(&[frame("u", "a"), frame("u", "b"), frame("u", "c")]);
        assert!(rx.try_recv().is_err());
        let held: Vec<Option<String>> = registry.release("u", 1).unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(held, [Some("a".to_string()), Some("b".to_string())]);
        assert_eq!(registry.dropped(), 1);
        assert_eq!(registry.release("u", 1), None);
        registry.push(&[frame("u", "d")]);
        assert_eq!(rx.try_recv().unwrap(), "d");
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking() {
        let registry = Registry::new(2);
        let (tx, _rx) = mpsc::channel(1);
        registry.attach("u", 1, tx);
        registry.release("u", 1);
        registry.push(&[frame("u", "a"), frame("u", "b")]);
        assert_eq!(registry.dropped(), 1);
    }
}
