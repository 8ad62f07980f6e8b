//! The user directory as the request path sees it. A user read from the store is served
//! from memory for `FRESH_FOR` after its read, so that a permission change made anywhere
//! applies within 1 s (API.md "Precise rules": users). A user asked for is queued for a
//! refresh: every `REFRESH_GATHER`, one task reads the queued users that are
//! `REFRESH_AFTER` old in one store call, off the request path. So a user asked for at
//! least every few hundred milliseconds is never read on a request (ARCHITECTURE.md, "The
//! way in"); only one nobody asked for lately is. Changes made through this process are
//! seen at once: `forget` drops the entry, and a refresh in flight does not bring it back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use esh_backends::{BackendError, MessageStore};
use esh_common::User;
use tokio::time::Instant;

/// How long a user read from the store is trusted (under the contract's 1 s).
const FRESH_FOR: Duration = Duration::from_millis(800);
/// The age from which a user asked for is read again in the background.
const REFRESH_AFTER: Duration = Duration::from_millis(400);
/// How often the refresh task reads what is due (an entry is read again between
/// `REFRESH_AFTER` and `REFRESH_AFTER + REFRESH_GATHER`, before `FRESH_FOR`).
const REFRESH_GATHER: Duration = Duration::from_millis(100);
/// Users read in one store call by a refresh.
const REFRESH_CHUNK: usize = 1_000;
/// Users kept at most; past this the cache starts afresh (bounded memory).
const CAPACITY: usize = 200_000;

/// Cached reads of `MessageStore::user`, absent users included.
pub(crate) struct Directory {
    store: Arc<dyn MessageStore>,
    state: Arc<Mutex<State>>,
    /// Store reads made on a request's path (a miss or an entry past `FRESH_FOR`).
    request_reads: AtomicU64,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Ids queued for the next refresh.
    due: Vec<String>,
    /// Whether a refresh task is running.
    refreshing: bool,
}

struct Entry {
    user: Option<User>,
    /// When the read that gave `user` began.
    read_at: Instant,
    /// Whether it waits for a refresh.
    queued: bool,
}

impl Directory {
    pub(crate) fn new(store: Arc<dyn MessageStore>) -> Directory {
        Directory { store, state: Arc::default(), request_reads: AtomicU64::new(0) }
    }

    /// The user with this id, from the cache while fresh, else from the store.
    pub(crate) async fn user(&self, id: &str) -> Result<Option<User>, BackendError> {
        if let Some(cached) = self.cached(id) {
            return Ok(cached);
        }
        self.request_reads.fetch_add(1, Ordering::Relaxed);
        let read_at = Instant::now();
        let user = self.store.user(id).await?;
        self.remember([(user.clone(), id.to_owned())], read_at);
        Ok(user)
    }

    /// The users among `ids` that exist, reading the stale or missing ones in one store call.
    pub(crate) async fn users(&self, ids: &[&str]) -> Result<HashMap<String, User>, BackendError> {
        let mut found = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match self.cached(id) {
                Some(Some(user)) => {
                    found.insert(user.id.clone(), user);
                }
                Some(None) => {}
                None => missing.push((*id).to_owned()),
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        missing.sort_unstable();
        missing.dedup();
        self.request_reads.fetch_add(1, Ordering::Relaxed);
        let read_at = Instant::now();
        let read: HashMap<String, User> =
            self.store.users(&missing).await?.into_iter().map(|user| (user.id.clone(), user)).collect();
        self.remember(missing.into_iter().map(|id| (read.get(&id).cloned(), id)), read_at);
        found.extend(read);
        Ok(found)
    }

    /// Drops what is cached of `id` (it was just created or changed through this process).
    pub(crate) fn forget(&self, id: &str) {
        lock(&self.state).entries.remove(id);
    }

    /// How many store reads requests have waited for (the refreshes' reads not counted).
    #[cfg(test)]
    fn request_reads(&self) -> u64 {
        self.request_reads.load(Ordering::Relaxed)
    }

    /// The cached user while fresh; queues it for a refresh.
    fn cached(&self, id: &str) -> Option<Option<User>> {
        let mut state = lock(&self.state);
        let State { entries, due, refreshing } = &mut *state;
        let entry = entries.get_mut(id)?;
        if entry.read_at.elapsed() >= FRESH_FOR {
            return None;
        }
        if !entry.queued {
            entry.queued = true;
            due.push(id.to_owned());
            if !*refreshing {
                *refreshing = true;
                tokio::spawn(refresh(self.store.clone(), self.state.clone()));
            }
        }
        Some(entry.user.clone())
    }

    fn remember(&self, users: impl IntoIterator<Item = (Option<User>, String)>, read_at: Instant) {
        let mut state = lock(&self.state);
        for (user, id) in users {
            if state.entries.len() >= CAPACITY {
                state.entries.clear();
            }
            state.entries.insert(id, Entry { user, read_at, queued: false });
        }
    }
}

/// Every `REFRESH_GATHER`, reads the queued users that are `REFRESH_AFTER` old again, a
/// chunk a store call, and keeps the younger ones queued; ends when nothing is queued. An
/// entry dropped or read anew meanwhile is left as it is. A failed read ends the task: the
/// entries age, and their next requests read them (or queue them again).
async fn refresh(store: Arc<dyn MessageStore>, state: Arc<Mutex<State>>) {
    loop {
        tokio::time::sleep(REFRESH_GATHER).await;
        let ready = {
            let mut state = lock(&state);
            let State { entries, due, refreshing } = &mut *state;
            let mut ready = Vec::new();
            due.retain(|id| match entries.get(id) {
                Some(entry) if entry.queued && entry.read_at.elapsed() >= REFRESH_AFTER => {
                    ready.push(id.clone());
                    false
                }
                Some(entry) => entry.queued,
                None => false,
            });
            if ready.is_empty() && due.is_empty() {
                *refreshing = false;
                return;
            }
            ready
        };
        for chunk in ready.chunks(REFRESH_CHUNK) {
            let read_at = Instant::now();
            let read = store.users(chunk).await;
            let mut state = lock(&state);
            let mut users: HashMap<String, User> = match read {
                Ok(users) => users.into_iter().map(|user| (user.id.clone(), user)).collect(),
                Err(error) => {
                    tracing::warn!(%error, "cannot refresh cached users; requests will read them");
                    let State { entries, due, refreshing } = &mut *state;
                    for id in ready.iter().chain(due.iter()) {
                        if let Some(entry) = entries.get_mut(id) {
                            entry.queued = false;
                        }
                    }
                    due.clear();
                    *refreshing = false;
                    return;
                }
            };
            for id in chunk {
                if let Some(entry) = state.entries.get_mut(id).filter(|entry| entry.queued) {
                    *entry = Entry { user: users.remove(id), read_at, queued: false };
                }
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use esh_backends::store::EmbeddedMessageStore;
    use esh_common::{Millis, Permission, UserKind};

    fn business(permissions: Vec<Permission>) -> User {
        User {
            id: "acme".into(),
            kind: UserKind::Business,
            display_name: "Acme".into(),
            created_at: Millis(1),
            permissions,
            verified: false,
            notifications_enabled: true,
        }
    }

    /// A store holding "acme" with the send permission, and a directory over it.
    async fn acme_allowed_to_send() -> (tempfile::TempDir, Arc<dyn MessageStore>, Directory) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn MessageStore> = Arc::new(EmbeddedMessageStore::open(&dir.path().join("s")).unwrap());
        store.create_user(&business(vec![Permission::Send])).await.unwrap();
        let directory = Directory::new(store.clone());
        (dir, store, directory)
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_made_elsewhere_is_seen_within_one_second() {
        let (_dir, store, directory) = acme_allowed_to_send().await;
        assert!(directory.user("acme").await.unwrap().unwrap().has(Permission::Send));
        // Revoked by another process: this one does not know.
        store.update_user(&business(vec![])).await.unwrap();
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!directory.user("acme").await.unwrap().unwrap().has(Permission::Send));
        assert!(directory.users(&["acme", "nobody"]).await.unwrap().len() == 1);
    }

    /// A user asked for steadily is refreshed in the background: no request waits for a
    /// store read after the first, and a change made elsewhere still shows within 1 s.
    /// (Paused time: the clock moves only while every task waits for a timer.)
    #[tokio::test(start_paused = true)]
    async fn a_user_asked_for_steadily_is_refreshed_off_the_request_path() {
        let (_dir, store, directory) = acme_allowed_to_send().await;
        assert!(directory.user("acme").await.unwrap().unwrap().has(Permission::Send));
        assert_eq!(directory.request_reads(), 1);
        let mut revoked_at = None;
        for step in 0..30 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if step == 10 {
                store.update_user(&business(vec![])).await.unwrap();
                revoked_at = Some(Instant::now());
            }
            let allowed = directory.user("acme").await.unwrap().unwrap().has(Permission::Send);
            let batch = directory.users(&["acme"]).await.unwrap();
            assert_eq!(batch["acme"].has(Permission::Send), allowed);
            if let Some(at) = revoked_at.filter(|_| allowed) {
                assert!(at.elapsed() < Duration::from_secs(1), "the revocation was not seen within 1 s");
            }
        }
        assert!(!directory.user("acme").await.unwrap().unwrap().has(Permission::Send));
        assert_eq!(directory.request_reads(), 1, "a request read the store");
    }

    #[tokio::test]
    async fn forgetting_shows_a_local_change_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn MessageStore> = Arc::new(EmbeddedMessageStore::open(&dir.path().join("s")).unwrap());
        let directory = Directory::new(store.clone());
        assert!(directory.user("acme").await.unwrap().is_none());
        store.create_user(&business(vec![])).await.unwrap();
        directory.forget("acme");
        assert!(directory.user("acme").await.unwrap().is_some());
    }
}
