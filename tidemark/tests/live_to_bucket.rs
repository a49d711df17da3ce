//! A service's in-process live backup straight to object storage: a sled database written by
//! the service's threads through `TrackedDb`, followed by `LiveBackup` over a chain in a bucket
//! of a real S3-compatible server (moto, on loopback, behind a proxy that goes down for 6
//! seconds mid-way), compacted as it grows, and stopped with a last run. The chain verifies, and restores into a new sled database equal, tree by tree,
//! to the service's (read with sled's own API). sled allows one process per database, so this
//! is the way a sled database is backed up live: the CLI refuses `--live` on it.
#![cfg(all(feature = "sled", feature = "remote"))]
#![allow(clippy::unwrap_used, missing_docs)]

use conformance_tests::s3;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidemark::remote::RemoteChain;
use tidemark::sled::{SledBackend, SledFactory, TrackedDb};
use tidemark::{
    restore_chain, verify_chain, ArchiveOptions, ChainStore, CompactOptions, Compression,
    LiveBackup, LiveEvent, LiveFormat, LiveOptions, RestoreOptions, RestorePoint,
};

/// A tree's (key, value) pairs in key order.
type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Every tree but tidemark's own and sled's default, as sled's API reads them.
fn trees(db: &sled::Db) -> BTreeMap<Vec<u8>, Rows> {
    db.tree_names()
        .into_iter()
        .filter(|n| !n.starts_with(b"__tidemark_") && &n[..] != b"__sled__default")
        .map(|n| {
            let rows = db
                .open_tree(&n)
                .unwrap()
                .iter()
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
                .collect();
            (n.to_vec(), rows)
        })
        .collect()
}

#[test]
fn a_sled_service_backs_up_live_to_a_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/cache", s3::bucket("sled-live"));
    // Through a proxy that the test cuts for a while (a network outage).
    let proxy = s3::Proxy::start(s3::moto());
    let env: Vec<_> = s3::env()
        .into_iter()
        .map(|(k, v)| match k {
            "AWS_ENDPOINT" => (k, proxy.endpoint()),
            _ => (k, v),
        })
        .collect();
    let chain: Arc<dyn ChainStore> = Arc::new(RemoteChain::open_with(&url, env).unwrap());
    let db = TrackedDb::open(&dir.path().join("cache")).unwrap();
    for i in 0..200u32 {
        db.insert("pages", format!("page-{i:03}").as_bytes(), &i.to_be_bytes())
            .unwrap();
    }
    let archive = ArchiveOptions {
        compression: Compression::Zstd(3),
        ..ArchiveOptions::default()
    };
    let live = LiveBackup::start(
        Arc::new(SledBackend::new(db.clone())),
        dir.path().join("state"),
        LiveOptions {
            format: LiveFormat::Chain(chain.clone(), archive),
            flush_interval: Duration::from_millis(200),
            compact: Some(CompactOptions {
                fanout: 3,
                archive,
                dry_run: false,
            }),
            ..LiveOptions::default()
        },
    );
    let first = live.wait_initial(&mut |_| {}).expect("the initial backup");
    assert_eq!(first.records_total, 200);

    // The service's writer, until the backup has completed six more runs.
    let stopping = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stopping) = (db.clone(), stopping.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stopping.load(Ordering::SeqCst) {
                let page = format!("page-{:03}", n % 300);
                db.insert("pages", page.as_bytes(), &n.to_be_bytes())
                    .unwrap();
                if n % 4 == 0 {
                    let gone = format!("page-{:03}", (n / 4) % 300);
                    db.remove("pages", gone.as_bytes()).unwrap();
                }
                db.insert("hits", &n.to_be_bytes(), b"1").unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            n
        })
    };
    // Six more runs; after the second, the bucket is away for 6 seconds while the writer goes
    // on (a run then fails and is retried, or the client's own retries outlast the outage:
    // their backoff is random, so either may come; the proxy counts the connections refused).
    let mut runs = 0;
    let mut written = 0;
    let mut outage_over = false;
    while runs < 6 {
        if runs == 2 && !outage_over {
            proxy.down();
            std::thread::sleep(Duration::from_secs(6));
            proxy.up();
            outage_over = true;
        }
        match live.events().recv_timeout(Duration::from_secs(60)) {
            Ok(LiveEvent::Completed(s)) => {
                runs += 1;
                written += s.records_written;
            }
            Ok(LiveEvent::Run(_)) => {}
            Err(e) => panic!("no run completed in 60 s: {e}"),
        }
    }
    assert!(proxy.refused() > 0, "no request met the outage");
    stopping.store(true, Ordering::SeqCst);
    let rounds = writer.join().unwrap();
    assert!(
        rounds > 0 && written > 0,
        "{rounds} rounds, {written} written"
    );
    // The last run, taken by the stop, holds everything the writer did.
    let summary = live.stop().unwrap();
    assert!(summary.runs >= 7, "{summary:?}");

    let report = verify_chain(chain.as_ref()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let items = chain.read_chain().unwrap();
    assert!(
        items.iter().any(|i| i.manifest.covers.is_some()),
        "the live backup compacted nothing: {:?}",
        items.iter().map(|i| &i.path).collect::<Vec<_>>()
    );
    let target = dir.path().join("restored");
    restore_chain(
        chain.as_ref(),
        &RestorePoint::Latest,
        &SledFactory,
        &target,
        &RestoreOptions::default(),
        &archive,
    )
    .unwrap();
    let restored = sled::open(&target).unwrap();
    let want = trees(db.db());
    assert!(want[&b"hits"[..].to_vec()].len() as u32 == rounds);
    assert_eq!(trees(&restored), want);
}
