//! The `chain_store` suite against an object store: a real S3-compatible server (moto) on
//! loopback, through the same code as a local directory. Damage is made with a plain S3 PUT
//! from `object_store`, not through tidemark.
#![allow(missing_docs)]

use backup_core::{ChainItem, ChainStore};
use conformance_tests::chain_store::{run_all, ChainFixture};
use conformance_tests::s3;
use object_store::ObjectStoreExt;
use tidemark_remote::RemoteChain;

/// A bucket, and the chain key when its chains are encrypted.
struct Bucket(String, Option<std::sync::Arc<backup_core::ChainKey>>);

impl ChainFixture for Bucket {
    fn chain(&self, name: &str) -> Box<dyn ChainStore> {
        let url = format!("{}/{name}", self.0);
        let chain = RemoteChain::open_with(&url, s3::env()).expect("open the chain");
        Box::new(match &self.1 {
            Some(key) => chain.with_key(key.clone()),
            None => chain,
        })
    }

    /// Damage to the content; an encrypted chain's is sealed again with its key (see the local
    /// suite's `Sealed` fixture).
    fn overwrite(&self, chain: &dyn ChainStore, item: &ChainItem, bytes: Vec<u8>) {
        let bytes = match &self.1 {
            Some(key) => {
                // As long as the archive's plaintext: the sealed object keeps its size.
                let mut bytes = bytes;
                bytes.resize(chain.open(item).expect("open").size() as usize, 0x5a);
                key.seal_bytes(&bytes)
            }
            None => bytes,
        };
        let (store, object) = object_of(chain, item, "zip");
        runtime()
            .block_on(store.put(&object, bytes.into()))
            .expect("overwrite the object");
    }

    fn delete(&self, chain: &dyn ChainStore, item: &ChainItem) {
        let rt = runtime();
        for ext in ["json", "zip"] {
            let (store, object) = object_of(chain, item, ext);
            rt.block_on(store.delete(&object))
                .expect("delete an object");
        }
    }
}

/// The store behind `chain` (opened with a plain `object_store` client, not tidemark's) and
/// `item`'s object with extension `ext` (`zip` the archive, `json` its seal).
fn object_of(
    chain: &dyn ChainStore,
    item: &ChainItem,
    ext: &str,
) -> (Box<dyn object_store::ObjectStore>, object_store::path::Path) {
    let url = url::Url::parse(&chain.location().to_string_lossy()).expect("a URL");
    let (store, prefix) = object_store::parse_url_opts(&url, s3::env()).expect("a store");
    let kind = match item.manifest.kind {
        backup_core::RunKind::Full => "full",
        backup_core::RunKind::Incremental => "incr",
    };
    // docs/FORMAT.md §4: a compacted archive's names carry its first and last sequence.
    let object = prefix.clone().join(match &item.manifest.covers {
        None => format!("tidemark-{:06}-{kind}.{ext}", item.manifest.sequence),
        Some(c) => format!(
            "tidemark-{:06}-{:06}-{kind}.{ext}",
            c.first, item.manifest.sequence
        ),
    });
    (store, object)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn an_object_store_passes_the_chain_store_suite() {
    run_all(&Bucket(s3::bucket("chain-store-suite"), None));
}

#[test]
fn an_encrypted_object_store_chain_passes_the_chain_store_suite() {
    run_all(&Bucket(
        s3::bucket("chain-store-sealed"),
        Some(std::sync::Arc::new(backup_core::ChainKey::generate())),
    ));
}

/// A writer whose lock was taken over (it expired during an outage and another writer took
/// it) does not seal its archive: the backup fails naming the new holder, and the chain is
/// unchanged.
#[test]
fn a_writer_that_lost_its_lock_does_not_seal() {
    use conformance_tests::memory::MemoryHarness;
    use conformance_tests::{Harness, Op, TestStore};
    let url = format!("{}/lost-lock", s3::bucket("lost-lock"));
    let chain = RemoteChain::open_with(&url, s3::env()).expect("open the chain");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = MemoryHarness.create(&dir.path().join("src"));
    store.create_collection("c");
    store.write(&[Op::Put {
        collection: "c".into(),
        key: b"k".to_vec(),
        value: b"v".to_vec(),
    }]);
    let _lock = chain.lock("backup --live").expect("the lock");
    // Another machine takes the lock over, as it would once this one's had expired.
    let (objects, prefix) =
        object_store::parse_url_opts(&url::Url::parse(&url).expect("a URL"), s3::env())
            .expect("a store");
    let other = serde_json::json!({
        "holder": "pid 1 on elsewhere, since then: tidemark backup",
        "token": "someone-else",
        "expires_at": u64::MAX / 2,
        "host": "elsewhere",
        "pid": 1,
    });
    runtime()
        .block_on(objects.put(
            &prefix.clone().join(tidemark_remote::LOCK_OBJECT),
            serde_json::to_vec(&other).expect("JSON").into(),
        ))
        .expect("replace the lock object");
    let err = backup_core::backup_archive_to(
        store.backend(),
        &chain,
        &dir.path().join("state"),
        &backup_core::BackupOptions::default(),
        &backup_core::ArchiveOptions::default(),
        &mut |_| {},
    )
    .expect_err("a writer without its lock must not seal");
    assert!(
        matches!(&err, backup_core::Error::Locked { holder, .. } if holder.contains("elsewhere")),
        "{err}"
    );
    assert!(
        chain.read_chain().expect("list").is_empty(),
        "nothing was sealed"
    );
}
