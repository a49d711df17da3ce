//! The `chain_store` suite against a local directory.
#![allow(missing_docs)]

use backup_core::archive::{ChainItem, ChainStore, LocalChain};
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
