//! The `chain_store` suite against a local directory.
#![allow(missing_docs)]

use backup_core::{ChainItem, ChainStore, LocalChain};
use conformance_tests::chain_store::{run_all, ChainFixture};

struct Local(tempfile::TempDir);

impl ChainFixture for Local {
    fn chain(&self, name: &str) -> Box<dyn ChainStore> {
        let dir = self.0.path().join(name);
        std::fs::create_dir_all(&dir).expect("a chain directory");
        Box::new(LocalChain::new(&dir))
    }

    fn overwrite(&self, _: &dyn ChainStore, item: &ChainItem, bytes: Vec<u8>) {
        std::fs::write(&item.path, bytes).expect("overwrite the archive");
    }

    fn delete(&self, _: &dyn ChainStore, item: &ChainItem) {
        std::fs::remove_file(&item.path).expect("delete the archive");
    }
}

#[test]
fn a_local_directory_passes_the_chain_store_suite() {
    run_all(&Local(tempfile::tempdir().expect("a temporary directory")));
}

/// A local directory whose chain is encrypted: every archive sealed with one chain key.
struct Sealed(tempfile::TempDir, std::sync::Arc<backup_core::ChainKey>);

impl ChainFixture for Sealed {
    fn chain(&self, name: &str) -> Box<dyn ChainStore> {
        let dir = self.0.path().join(name);
        std::fs::create_dir_all(&dir).expect("a chain directory");
        Box::new(LocalChain::encrypted(&dir, self.1.clone()))
    }

    /// The suite's damage is to an archive's content (a flipped byte in an entry, garbage):
    /// sealed again with the chain's key, so that it reaches the zip and record checks as in a
    /// plain chain. (Damage to the sealed bytes themselves fails authentication: the CLI's
    /// `encryption` tests flip those.)
    fn overwrite(&self, chain: &dyn ChainStore, item: &ChainItem, mut bytes: Vec<u8>) {
        // As long as the archive's plaintext: the sealed file keeps its size.
        bytes.resize(chain.open(item).expect("open").size() as usize, 0x5a);
        std::fs::write(&item.path, self.1.seal_bytes(&bytes)).expect("overwrite the archive");
    }

    fn delete(&self, _: &dyn ChainStore, item: &ChainItem) {
        std::fs::remove_file(&item.path).expect("delete the archive");
    }
}

#[test]
fn an_encrypted_local_directory_passes_the_chain_store_suite() {
    run_all(&Sealed(
        tempfile::tempdir().expect("a temporary directory"),
        std::sync::Arc::new(backup_core::ChainKey::generate()),
    ));
}
