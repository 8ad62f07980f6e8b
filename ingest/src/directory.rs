//! The user directory as the request path sees it: users read from the store are kept
//! for `FRESH_FOR`, so that a send reads no store (ARCHITECTURE.md "Decisions"), while a
//! permission change made anywhere applies within 1 s (API.md "Precise rules": users).
//! Changes made through this process are seen at once: `forget` drops the entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esh_backends::{BackendError, MessageStore};
use esh_common::User;
use tokio::time::Instant;

/// How long a user read from the store is trusted (under the contract's 1 s).
const FRESH_FOR: Duration = Duration::from_millis(500);
/// Users kept at most; past this the cache starts afresh (bounded memory).
const CAPACITY: usize = 200_000;

/// Cached reads of `MessageStore::user`, absent users included.
pub(crate) struct Directory {
    store: Arc<dyn MessageStore>,
    entries: Mutex<HashMap<String, (Option<User>, Instant)>>,
}

impl Directory {
    pub(crate) fn new(store: Arc<dyn MessageStore>) -> Directory {
        Directory { store, entries: Mutex::new(HashMap::new()) }
    }

    /// The user with this id, from the cache while fresh, else from the store.
    pub(crate) async fn user(&self, id: &str) -> Result<Option<User>, BackendError> {
        if let Some(cached) = self.cached(id) {
            return Ok(cached);
        }
        let user = self.store.user(id).await?;
        self.remember(id, user.clone());
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
        let read = self.store.users(&missing).await?;
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() + missing.len() > CAPACITY {
            entries.clear();
        }
        for id in &missing {
            entries.insert(id.clone(), (None, now));
        }
        for user in read {
            entries.insert(user.id.clone(), (Some(user.clone()), now));
            found.insert(user.id.clone(), user);
        }
        Ok(found)
    }

    /// Drops what is cached of `id` (it was just created or changed through this process).
    pub(crate) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn cached(&self, id: &str) -> Option<Option<User>> {
        let entries = self.lock();
        let (user, read_at) = entries.get(id)?;
        (read_at.elapsed() < FRESH_FOR).then(|| user.clone())
    }

    fn remember(&self, id: &str, user: Option<User>) {
        let mut entries = self.lock();
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(id.to_owned(), (user, Instant::now()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Option<User>, Instant)>> {
        self.entries.lock().unwrap_or_else(|poison| poison.into_inner())
    }
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

    #[tokio::test(start_paused = true)]
    async fn a_change_made_elsewhere_is_seen_within_one_second() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn MessageStore> = Arc::new(EmbeddedMessageStore::open(&dir.path().join("s")).unwrap());
        store.create_user(&business(vec![Permission::Send])).await.unwrap();
        let directory = Directory::new(store.clone());
        assert!(directory.user("acme").await.unwrap().unwrap().has(Permission::Send));
        // Revoked by another process: this one does not know.
        store.update_user(&business(vec![])).await.unwrap();
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!directory.user("acme").await.unwrap().unwrap().has(Permission::Send));
        assert!(directory.users(&["acme", "nobody"]).await.unwrap().len() == 1);
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
