//! The `chain_store` suite against an object store: a real S3-compatible server (moto) on
//! loopback, through the same code as a local directory. Damage is made with a plain S3 PUT
//! from `object_store`, not through tidemark.
#![allow(missing_docs)]

use backup_core::archive::{ChainItem, ChainStore};
use conformance_tests::chain_store::{run_all, ChainFixture};
use conformance_tests::s3;
use object_store::ObjectStoreExt;
use tidemark_remote::RemoteChain;

struct Bucket(String);

impl ChainFixture for Bucket {
    fn chain(&self, name: &str) -> Box<dyn ChainStore> {
        let url = format!("{}/{name}", self.0);
        Box::new(RemoteChain::open_with(&url, s3::env()).expect("open the chain"))
    }

    fn overwrite(&self, chain: &dyn ChainStore, item: &ChainItem, bytes: Vec<u8>) {
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
    let object = prefix.clone().join(format!(
        "tidemark-{:06}-{kind}.{ext}",
        item.manifest.sequence
    ));
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
    run_all(&Bucket(s3::bucket("chain-store-suite")));
}
