//! The workspace builds its bundled SQLite without memory statistics and with a page cache per
//! connection (`.cargo/config.toml`, `LIBSQLITE3_FLAGS`): neither then takes a process-wide
//! mutex on every allocation and page fetch. A build that lost the setting would still work,
//! only slower, so this checks it.
#![allow(clippy::unwrap_used, missing_docs)]

#[test]
fn the_bundled_sqlite_has_the_workspaces_compile_options() {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    let mut stmt = conn.prepare("PRAGMA compile_options").unwrap();
    let options: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
        "{options:?}"
    );
    assert!(
        !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
        "{options:?}"
    );
    assert!(options.iter().any(|o| o == "THREADSAFE=1"), "{options:?}");
}
