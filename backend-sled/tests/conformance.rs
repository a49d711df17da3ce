//! The conformance suite, run against sled through the tracked handle.
#![allow(clippy::unwrap_used, missing_docs)]

use backend_sled::{SledBackend, SledFactory, TrackedDb};
use backup_core::{Record, StorageBackend, StoreFactory, Value};
use conformance_tests::{Harness, Model, Op, TestStore, Writer};
use std::collections::BTreeSet;
use std::path::Path;

pub struct SledStore {
    backend: SledBackend,
}

fn apply(db: &TrackedDb, ops: &[Op]) {
    let mut trees: Vec<&str> = ops
        .iter()
        .map(|op| match op {
            Op::Put { collection, .. } | Op::Delete { collection, .. } => collection.as_str(),
        })
        .collect();
    trees.sort_unstable();
    trees.dedup();
    db.transaction(&trees, |tx| {
        for op in ops {
            match op {
                Op::Put {
                    collection,
                    key,
                    value,
                } => tx.insert(collection, key, value)?,
                Op::Delete { collection, key } => tx.remove(collection, key)?,
            };
        }
        Ok(())
    })
    .unwrap();
}

impl TestStore for SledStore {
    fn backend(&self) -> &dyn StorageBackend {
        &self.backend
    }

    fn create_collection(&self, name: &str) {
        self.backend.tracked().unwrap().tree(name).unwrap();
    }

    fn write(&self, ops: &[Op]) {
        apply(self.backend.tracked().unwrap(), ops);
    }

    fn writer(&self) -> Writer {
        let db = self.backend.tracked().unwrap().clone();
        Box::new(move |ops| apply(&db, ops))
    }

    fn decode(&self, record: &Record) -> (Vec<u8>, Vec<u8>) {
        let value = match &record.value {
            Value::Bytes(v) => v.clone(),
            Value::Row(_) => panic!("sled records are bytes"),
        };
        (record.key.0.clone(), value)
    }
}

pub struct SledHarness;

impl Harness for SledHarness {
    type Store = SledStore;

    fn create(&self, path: &Path) -> SledStore {
        SledStore {
            backend: SledBackend::new(TrackedDb::open(path).unwrap()),
        }
    }

    fn open(&self, path: &Path) -> SledStore {
        self.create(path)
    }

    fn factory(&self) -> Box<dyn StoreFactory> {
        Box::new(SledFactory)
    }

    fn trims_changes(&self) -> bool {
        true
    }

    fn read_plain(&self, path: &Path) -> (Model, BTreeSet<String>) {
        // sled releases its file lock from a background thread a moment after the last
        // handle is dropped (the backend's view was, just before): wait for it.
        let start = std::time::Instant::now();
        let db = loop {
            match sled::open(path) {
                Ok(db) => break db,
                Err(_) if start.elapsed() < std::time::Duration::from_secs(5) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("sled {}: {e}", path.display()),
            }
        };
        let mut model = Model::new();
        let mut names = BTreeSet::new();
        for name in db.tree_names() {
            if name.starts_with(b"__tidemark_") {
                continue; // tidemark's change log and metadata, not data
            }
            let name = String::from_utf8(name.to_vec()).unwrap();
            for item in db.open_tree(&name).unwrap().iter() {
                let (k, v) = item.unwrap();
                model.insert((name.clone(), k.to_vec()), v.to_vec());
            }
            names.insert(name);
        }
        (model, names)
    }
}

conformance_tests::conformance_suite!(sled_suite, crate::SledHarness);
