//! The device registry conformance suite against `EmbeddedMessageStore` (a fresh SQLite
//! file per test).

use std::ops::Deref;

use esh_backends::store::EmbeddedMessageStore;
use esh_backends::DeviceRegistry;
use tempfile::TempDir;

/// A store in a temporary directory that lives as long as it.
struct Opened {
    store: EmbeddedMessageStore,
    _dir: TempDir,
}

impl Deref for Opened {
    type Target = dyn DeviceRegistry;

    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

async fn open() -> Opened {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = EmbeddedMessageStore::open(&dir.path().join("store.sqlite3")).expect("open store");
    Opened { store, _dir: dir }
}

esh_backends::device_registry_suite!(open());
