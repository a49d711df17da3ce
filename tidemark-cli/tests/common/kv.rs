//! Key-value stores read and written with their own libraries (rocksdb, sled, rusqlite), never
//! through tidemark: what a test compares a restore with.

use super::open_sled;
use std::collections::BTreeMap;
use std::path::Path;

/// (collection, key) → value, as a store's own API returns them.
pub type Content = BTreeMap<(String, Vec<u8>), Vec<u8>>;

pub fn rocks_content(path: &Path) -> Content {
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), path).unwrap();
    let db = rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), path, &names, false)
        .unwrap();
    let mut out = Content::new();
    for name in &names {
        let cf = db.cf_handle(name).unwrap();
        for item in db.iterator_cf(&cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.unwrap();
            out.insert((name.clone(), k.to_vec()), v.to_vec());
        }
    }
    out
}

pub fn sled_content(path: &Path) -> Content {
    let db = open_sled(path);
    let mut out = Content::new();
    for name in db.tree_names() {
        if name.starts_with(b"__tidemark_") {
            continue;
        }
        for item in db.open_tree(&name).unwrap().iter() {
            let (k, v) = item.unwrap();
            out.insert(
                (String::from_utf8(name.to_vec()).unwrap(), k.to_vec()),
                v.to_vec(),
            );
        }
    }
    out
}

/// A SQLite database restored from a key-value store: `(key, value)` tables, TEXT or BLOB.
pub fn sqlite_kv_content(path: &Path) -> Content {
    let conn = rusqlite::Connection::open(path).unwrap();
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let bytes = |v: rusqlite::types::ValueRef<'_>| match v {
        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => t.to_vec(),
        other => panic!("unexpected {other:?}"),
    };
    let mut out = Content::new();
    for name in names {
        let mut stmt = conn
            .prepare(&format!("SELECT key, value FROM \"{name}\""))
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            out.insert(
                (name.clone(), bytes(row.get_ref(0).unwrap())),
                bytes(row.get_ref(1).unwrap()),
            );
        }
    }
    out
}

/// The content a key-value source holds, read with its own library.
pub fn kv_content(kind: &str, path: &Path) -> Content {
    match kind {
        "rocksdb" => rocks_content(path),
        "sled" => sled_content(path),
        other => panic!("{other} is not a key-value store"),
    }
}

/// Writes `puts` and `deletes` into a key-value store as an application would.
pub fn kv_write(
    kind: &str,
    path: &Path,
    puts: &[(&str, Vec<u8>, Vec<u8>)],
    deletes: &[(&str, &[u8])],
) {
    match kind {
        "rocksdb" => {
            let mut opts = rocksdb::Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            opts.set_wal_ttl_seconds(3600);
            let mut names =
                rocksdb::DB::list_cf(&opts, path).unwrap_or_else(|_| vec!["default".to_string()]);
            for (c, _, _) in puts {
                if !names.iter().any(|n| n == c) {
                    names.push((*c).to_string());
                }
            }
            let db = rocksdb::DB::open_cf(&opts, path, &names).unwrap();
            for (c, k, v) in puts {
                db.put_cf(&db.cf_handle(c).unwrap(), k, v).unwrap();
            }
            for (c, k) in deletes {
                db.delete_cf(&db.cf_handle(c).unwrap(), k).unwrap();
            }
            db.flush_wal(true).unwrap();
        }
        "sled" => {
            let db = open_sled(path);
            for (c, k, v) in puts {
                db.open_tree(c).unwrap().insert(k, v.clone()).unwrap();
            }
            for (c, k) in deletes {
                db.open_tree(c).unwrap().remove(k).unwrap();
            }
            db.flush().unwrap();
        }
        other => panic!("{other} is not a key-value store"),
    }
}

/// Verifies the backup `from` (it must be intact), restores it into a new `kind` store `name`
/// in `d`, and asserts that the store's own library reads there what `want` holds. `ok` runs
/// `tidemark` with the arguments in a directory and returns its stdout (it must succeed).
pub fn assert_kv_restores(
    ok: impl Fn(&[&str], &Path) -> String,
    d: &Path,
    kind: &str,
    from: &str,
    name: &str,
    want: &Content,
) {
    let v = ok(&["verify", from], d);
    assert!(v.contains("is intact"), "{kind} {from}: {v}");
    ok(
        &["restore", "--from", from, "--to", &format!("{kind}:{name}")],
        d,
    );
    let diff = differences(&kv_content(kind, &d.join(name)), want);
    assert!(diff.is_empty(), "{kind} restored from {from}: {diff:#?}");
}

/// The differences between two contents, briefly (a few entries, not two whole maps).
pub fn differences(got: &Content, want: &Content) -> Vec<String> {
    let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut out = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => out.push(format!("missing {}/{}", k.0, show(&k.1))),
            Some(g) if g != v => out.push(format!(
                "{}/{}: got {:?}, want {:?}",
                k.0,
                show(&k.1),
                show(g),
                show(v)
            )),
            _ => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        out.push(format!("unexpected {}/{}", k.0, show(&k.1)));
    }
    let n = out.len();
    out.truncate(8);
    if n > 8 {
        out.push(format!("… {} differences in all", n));
    }
    out
}
