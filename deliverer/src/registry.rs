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
//!
//! The router's live copy of a replayed message can also come *after* the replay (it was
//! routed to this node once presence was registered but reached the bus late). So a socket
//! leaving replay mode keeps the ids its replay sent (at most `replay_hold` of the newest,
//! for `replay_window`) and drops routed copies of them; an id is forgotten when its copy
//! shows up, and the record goes away once empty or expired — an idle socket keeps none.
//! Retries from the tracker are never filtered.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use axum::extract::ws::Utf8Bytes;
use esh_common::telemetry;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

/// A frame for a user's sockets; `message_id` is set on message frames (replay dedup).
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) user: String,
    pub(crate) message_id: Option<String>,
    pub(crate) frame: Utf8Bytes,
}

/// A frame held during a replay.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Held {
    /// The message id of a message frame.
    pub(crate) message_id: Option<String>,
    pub(crate) frame: Utf8Bytes,
    /// Pushed by the router (through the bus), not a retry of the tracker.
    pub(crate) routed: bool,
}

struct Socket {
    connection: u64,
    outbound: mpsc::Sender<Utf8Bytes>,
    /// `Some` while the socket replays: live frames wait here.
    held: Option<Vec<Held>>,
    /// After the replay: ids it sent whose routed copy has not come yet (boxed: an idle
    /// socket pays one pointer).
    replayed: Option<Box<Replayed>>,
}

/// The messages a socket's replay sent, remembered until `until`.
struct Replayed {
    ids: HashSet<String>,
    until: Instant,
}

impl Socket {
    /// Whether a routed copy of `id` is one the replay already sent on this socket (the id
    /// is forgotten then; the record goes once empty or expired).
    fn replayed(&mut self, id: &str, now: Instant) -> bool {
        let Some(replayed) = self.replayed.as_mut() else { return false };
        if now >= replayed.until {
            self.replayed = None;
            return false;
        }
        let hit = replayed.ids.remove(id);
        if replayed.ids.is_empty() {
            self.replayed = None;
        }
        hit
    }
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
        let socket = Socket { connection, outbound, held: Some(Vec::new()), replayed: None };
        self.lock().entry(user.to_owned()).or_default().push(socket);
        telemetry::socket_opened();
    }

    /// Removes socket `connection` of `user`; true when the user has no socket left here.
    pub(crate) fn detach(&self, user: &str, connection: u64) -> bool {
        let mut users = self.lock();
        let Some(sockets) = users.get_mut(user) else { return true };
        let before = sockets.len();
        sockets.retain(|socket| socket.connection != connection);
        if sockets.len() < before {
            telemetry::socket_closed();
        }
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

    /// Pushes each frame to every socket of its user (tracker retries, and tests); returns,
    /// per frame, whether the user had a socket here. One lock for the whole batch.
    pub(crate) fn push(&self, frames: &[Outgoing]) -> Vec<bool> {
        self.push_frames(frames, false)
    }

    /// Pushes frames the router sent through the bus; a socket skips the messages its replay
    /// already sent it. Returns, per frame, whether some socket of the user took it (held,
    /// queued, or dropped for a full queue — the retries cover that).
    pub(crate) fn push_routed(&self, frames: &[Outgoing]) -> Vec<bool> {
        self.push_frames(frames, true)
    }

    fn push_frames(&self, frames: &[Outgoing], routed: bool) -> Vec<bool> {
        let mut dropped = 0u64;
        let mut reached = Vec::with_capacity(frames.len());
        let now = Instant::now();
        {
            let mut users = self.lock();
            for outgoing in frames {
                let Some(sockets) = users.get_mut(&outgoing.user) else {
                    reached.push(false);
                    continue;
                };
                let mut taken = false;
                for socket in sockets.iter_mut() {
                    if routed && socket.held.is_none() {
                        if let Some(id) = &outgoing.message_id {
                            if socket.replayed(id, now) {
                                continue;
                            }
                        }
                    }
                    taken = true;
                    match &mut socket.held {
                        Some(held) if held.len() < self.hold_cap => held.push(Held {
                            message_id: outgoing.message_id.clone(),
                            frame: outgoing.frame.clone(),
                            routed,
                        }),
                        Some(_) => dropped += 1,
                        None => match socket.outbound.try_send(outgoing.frame.clone()) {
                            Ok(()) => {}
                            Err(TrySendError::Full(_)) => dropped += 1,
                            // The connection is closing; it detaches itself.
                            Err(TrySendError::Closed(_)) => {}
                        },
                    }
                }
                reached.push(taken);
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
    #[cfg(test)]
    pub(crate) fn release(&self, user: &str, connection: u64) -> Option<Vec<Held>> {
        self.end_replay(user, connection, &mut HashSet::new(), Instant::now())
    }

    /// Like `release`; when switching to live mode it also takes `replayed` (the ids the
    /// replay sent, if any) as the socket's record, until `until`, so that their routed
    /// copies arriving later are not sent again on this socket.
    pub(crate) fn end_replay(
        &self,
        user: &str,
        connection: u64,
        replayed: &mut HashSet<String>,
        until: Instant,
    ) -> Option<Vec<Held>> {
        let mut users = self.lock();
        let socket = users.get_mut(user)?.iter_mut().find(|socket| socket.connection == connection)?;
        match socket.held.as_mut() {
            Some(held) if !held.is_empty() => Some(std::mem::take(held)),
            _ => {
                socket.held = None;
                if !replayed.is_empty() && until > Instant::now() {
                    socket.replayed = Some(Box::new(Replayed { ids: std::mem::take(replayed), until }));
                }
                None
            }
        }
    }

    /// Drops the replay record of socket `connection` (its window is over).
    pub(crate) fn forget_replayed(&self, user: &str, connection: u64) {
        let mut users = self.lock();
        let socket = users.get_mut(user).and_then(|sockets| sockets.iter_mut().find(|socket| socket.connection == connection));
        if let Some(socket) = socket {
            socket.replayed = None;
        }
    }

    /// How many replayed ids socket `connection` still remembers (`None`: no record).
    #[cfg(test)]
    pub(crate) fn replayed_len(&self, user: &str, connection: u64) -> Option<usize> {
        let users = self.lock();
        let socket = users.get(user)?.iter().find(|socket| socket.connection == connection)?;
        socket.replayed.as_ref().map(|replayed| replayed.ids.len())
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
        let held: Vec<Option<String>> = registry.release("u", 1).unwrap().into_iter().map(|h| h.message_id).collect();
        assert_eq!(held, [Some("a".to_string()), Some("b".to_string())]);
        assert_eq!(registry.dropped(), 1);
        assert_eq!(registry.release("u", 1), None);
        registry.push(&[frame("u", "d")]);
        assert_eq!(rx.try_recv().unwrap(), "d");
    }

    #[tokio::test(start_paused = true)]
    async fn routed_copies_of_replayed_messages_are_dropped_until_seen_or_expired() {
        let registry = Registry::new(10);
        let (tx, mut rx) = mpsc::channel(8);
        registry.attach("u", 1, tx);
        let mut replayed: HashSet<String> = ["a", "b"].into_iter().map(String::from).collect();
        let until = Instant::now() + std::time::Duration::from_secs(60);
        assert_eq!(registry.end_replay("u", 1, &mut replayed, until), None);
        assert_eq!(registry.replayed_len("u", 1), Some(2));

        // The routed copy of `a` is dropped (and not reported as sent); a retry of it is not.
        assert_eq!(registry.push_routed(&[frame("u", "a")]), [false]);
        assert!(rx.try_recv().is_err());
        assert_eq!(registry.push(&[frame("u", "a")]), [true]);
        assert_eq!(rx.try_recv().unwrap(), "a");
        assert_eq!(registry.replayed_len("u", 1), Some(1));

        // After the window the record goes; `b` comes through.
        tokio::time::advance(std::time::Duration::from_secs(61)).await;
        assert_eq!(registry.push_routed(&[frame("u", "b")]), [true]);
        assert_eq!(rx.try_recv().unwrap(), "b");
        assert_eq!(registry.replayed_len("u", 1), None);
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
