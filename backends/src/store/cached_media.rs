//! `CachedMediaCatalog`: the media catalog with the records it has read kept in memory, so
//! that a send with media and its delivery do not each wait for a store read.
//!
//! A media record never changes after its upload; it can only be removed, by the collection
//! of uploads no message references. Records this process removes leave the cache with
//! them. A record another process removes may stay cached here, which is harmless: a send
//! may attach media without a participation check only within the attach window, which
//! ends before collection may remove it, and a message that references media keeps it
//! from collection. Who may read media (`is_participant`) changes, so it is always read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use esh_common::{Media, Millis};

use crate::error::BackendError;
use crate::store::MediaCatalog;

/// How many media records a process keeps in memory (about 1 KB each) by default.
pub const MEDIA_CACHE_ENTRIES: usize = 10_000;

/// A `MediaCatalog` that keeps up to `capacity` records read or added, the oldest leaving
/// first; with `capacity` 0 it keeps none.
pub struct CachedMediaCatalog {
    inner: Arc<dyn MediaCatalog>,
    capacity: usize,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_id: HashMap<String, Media>,
    /// Ids in the order they were cached, for eviction (ids removed since may linger).
    order: VecDeque<String>,
}

impl Entries {
    fn insert(&mut self, media: &Media, capacity: usize) {
        if capacity == 0 || self.by_id.contains_key(&media.id) {
            return;
        }
        while self.order.len() >= capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.by_id.remove(&oldest);
            }
        }
        self.order.push_back(media.id.clone());
        self.by_id.insert(media.id.clone(), media.clone());
    }
}

impl CachedMediaCatalog {
    pub fn new(inner: Arc<dyn MediaCatalog>, capacity: usize) -> Self {
        CachedMediaCatalog {
            inner,
            capacity,
            entries: Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves a consistent map: recover it.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl MediaCatalog for CachedMediaCatalog {
    async fn add_media(&self, media: &Media) -> Result<(), BackendError> {
        self.inner.add_media(media).await?;
        self.entries().insert(media, self.capacity);
        Ok(())
    }

    async fn media(&self, ids: &[String]) -> Result<Vec<Media>, BackendError> {
        let (mut found, missing) = {
            let entries = self.entries();
            let mut found = Vec::with_capacity(ids.len());
            let mut missing = Vec::new();
            for id in ids {
                match entries.by_id.get(id) {
                    Some(media) => found.push(media.clone()),
                    None => missing.push(id.clone()),
                }
            }
            (found, missing)
        };
        if !missing.is_empty() {
            let read = self.inner.media(&missing).await?;
            let mut entries = self.entries();
            for media in &read {
                entries.insert(media, self.capacity);
            }
            found.extend(read);
        }
        Ok(found)
    }

    async fn is_participant(&self, media_id: &str, user: &str) -> Result<bool, BackendError> {
        self.inner.is_participant(media_id, user).await
    }

    async fn unreferenced(&self, before: Millis, limit: usize) -> Result<Vec<Media>, BackendError> {
        self.inner.unreferenced(before, limit).await
    }

    async fn remove_unreferenced(&self, ids: &[String]) -> Result<Vec<String>, BackendError> {
        let removed = self.inner.remove_unreferenced(ids).await?;
        let mut entries = self.entries();
        for id in &removed {
            entries.by_id.remove(id);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::EmbeddedMessageStore;

    /// The embedded catalog, counting the ids it is asked to read.
    struct Counting {
        store: EmbeddedMessageStore,
        ids_read: AtomicUsize,
    }

    #[async_trait]
    impl MediaCatalog for Counting {
        async fn add_media(&self, media: &Media) -> Result<(), BackendError> {
            self.store.add_media(media).await
        }
        async fn media(&self, ids: &[String]) -> Result<Vec<Media>, BackendError> {
            self.ids_read.fetch_add(ids.len(), Ordering::SeqCst);
            self.store.media(ids).await
        }
        async fn is_participant(&self, media_id: &str, user: &str) -> Result<bool, BackendError> {
            self.store.is_participant(media_id, user).await
        }
        async fn unreferenced(
            &self,
            before: Millis,
            limit: usize,
        ) -> Result<Vec<Media>, BackendError> {
            self.store.unreferenced(before, limit).await
        }
        async fn remove_unreferenced(&self, ids: &[String]) -> Result<Vec<String>, BackendError> {
            self.store.remove_unreferenced(ids).await
        }
    }

    fn media(id: &str) -> Media {
        Media {
            id: id.into(),
            owner_id: "b1".into(),
            filename: "a.pdf".into(),
            content_type: "application/pdf".into(),
            size: 10,
            created_at: Millis(1_000),
            thumbnails: Vec::new(),
        }
    }

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn sorted(mut found: Vec<Media>) -> Vec<String> {
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found.into_iter().map(|media| media.id).collect()
    }

    #[tokio::test]
    async fn reads_each_record_once_until_it_is_collected_or_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedMessageStore::open(&dir.path().join("store.sqlite3")).unwrap();
        let inner = Arc::new(Counting {
            store,
            ids_read: AtomicUsize::new(0),
        });
        let cached = CachedMediaCatalog::new(inner.clone(), 2);
        for id in ["m1", "m2", "m3"] {
            inner.add_media(&media(id)).await.unwrap();
        }
        let read = || inner.ids_read.load(Ordering::SeqCst);

        // Misses are read together, unknown ids included; hits are not read again.
        assert_eq!(
            sorted(cached.media(&ids(&["m1", "m2", "nope"])).await.unwrap()),
            ids(&["m1", "m2"])
        );
        assert_eq!(read(), 3);
        assert_eq!(
            sorted(cached.media(&ids(&["m2", "m1"])).await.unwrap()),
            ids(&["m1", "m2"])
        );
        assert_eq!(read(), 3, "both were cached");
        assert_eq!(cached.media(&ids(&["nope"])).await.unwrap(), Vec::new());
        assert_eq!(
            read(),
            4,
            "an unknown id is asked again: it may be uploaded since"
        );

        // A third record evicts the oldest (capacity 2).
        assert_eq!(
            sorted(cached.media(&ids(&["m3"])).await.unwrap()),
            ids(&["m3"])
        );
        assert_eq!(read(), 5);
        cached.media(&ids(&["m1"])).await.unwrap();
        assert_eq!(read(), 6, "m1 was evicted");

        // What this catalog collects is gone from the cache too.
        let removed = cached.remove_unreferenced(&ids(&["m1"])).await.unwrap();
        assert_eq!(removed, ids(&["m1"]));
        assert_eq!(cached.media(&ids(&["m1"])).await.unwrap(), Vec::new());
        assert_eq!(read(), 7);

        // An upload through the cache is cached at once.
        cached.add_media(&media("m4")).await.unwrap();
        assert_eq!(
            sorted(cached.media(&ids(&["m4"])).await.unwrap()),
            ids(&["m4"])
        );
        assert_eq!(read(), 7);

        // Capacity 0 keeps nothing: every read goes to the store.
        let uncached = CachedMediaCatalog::new(inner.clone(), 0);
        for _ in 0..2 {
            assert_eq!(
                sorted(uncached.media(&ids(&["m4"])).await.unwrap()),
                ids(&["m4"])
            );
        }
        assert_eq!(read(), 9);
    }
}
