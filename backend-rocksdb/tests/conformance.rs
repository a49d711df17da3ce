//! The conformance suite, run against RocksDB.
#![allow(clippy::unwrap_used, missing_docs)]

use backend_rocksdb::{Db, RocksBackend, RocksFactory};
use backup_core::{Record, StorageBackend, StoreFactory, Value};
use conformance_tests::{Harness, Model, Op, TestStore, Writer};
use rocksdb::{Options, WriteBatch};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

pub struct RocksStore {
    backend: RocksBackend,
}

fn apply(db: &Db, ops: &[Op]) {
    let mut batch = WriteBatch::default();
    for op in ops {
        match op {
            Op::Put {
                collection,
                key,
                value,
            } => batch.put_cf(&db.cf_handle(collection).unwrap(), key, value),
            Op::Delete { collection, key } => {
                batch.delete_cf(&db.cf_handle(collection).unwrap(), key)
            }
        }
    }
    db.write(batch).unwrap();
}

impl TestStore for RocksStore {
    fn backend(&self) -> &dyn StorageBackend {
        &self.backend
    }

    fn create_collection(&self, name: &str) {
        let db = self.backend.db().unwrap();
        if db.cf_handle(name).is_none() {
            db.create_cf(name, &Options::default()).unwrap();
        }
    }

    fn write(&self, ops: &[Op]) {
        apply(self.backend.db().unwrap(), ops);
    }

    fn writer(&self) -> Writer {
        let db = self.backend.db().unwrap().clone();
        Box::new(move |ops| apply(&db, ops))
    }

    fn decode(&self, record: &Record) -> (Vec<u8>, Vec<u8>) {
        let value = match &record.value {
            Value::Bytes(v) => v.clone(),
            Value::Row(_) => panic!("RocksDB records are bytes"),
        };
        (record.key.0.clone(), value)
    }
}

/// Options an application would use: WAL kept for incrementals.
pub fn app_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_wal_ttl_seconds(3600);
    opts
}

pub fn open_app_db(path: &Path) -> Arc<Db> {
    let names = Db::list_cf(&Options::default(), path).unwrap_or_else(|_| vec!["default".into()]);
    Arc::new(Db::open_cf(&app_options(), path, names).unwrap())
}

pub struct RocksHarness;

impl Harness for RocksHarness {
    type Store = RocksStore;

    fn create(&self, path: &Path) -> RocksStore {
        RocksStore {
            backend: RocksBackend::from_db(open_app_db(path)),
        }
    }

    fn open(&self, path: &Path) -> RocksStore {
        RocksStore {
            backend: RocksBackend::from_db(open_app_db(path)),
        }
    }

    fn factory(&self) -> Box<dyn StoreFactory> {
        Box::new(RocksFactory::default())
    }

    fn trims_changes(&self) -> bool {
        false
    }

    fn read_plain(&self, path: &Path) -> (Model, BTreeSet<String>) {
        let names = Db::list_cf(&Options::default(), path).unwrap();
        let db = Db::open_cf_for_read_only(&Options::default(), path, &names, false).unwrap();
        let mut model = Model::new();
        for name in &names {
            let cf = db.cf_handle(name).unwrap();
            for item in db.iterator_cf(&cf, rocksdb::IteratorMode::Start) {
                let (k, v) = item.unwrap();
                model.insert((name.clone(), k.to_vec()), v.to_vec());
            }
        }
        (model, names.into_iter().collect())
    }
}

conformance_tests::conformance_suite!(rocksdb_suite, crate::RocksHarness);
