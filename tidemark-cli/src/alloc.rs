//! The process's memory allocator: mimalloc, set to give freed memory back within 10 ms and to
//! use no transparent huge pages.
//!
//! Archive runs allocate and free a few small blocks per record (a key, a row's columns, a
//! parsed line) on one thread and free them on another (the workers decode, the store's thread
//! writes), millions of times a run. glibc's allocator spent about a third of a restore's CPU
//! on that (`perf`, 1M records of 100 bytes: `_int_malloc`, `cfree`, `malloc_consolidate` and
//! its arena lock), mimalloc's per-thread free lists do not. Measured with
//! `./scripts/bench.sh` (docs/BENCHMARKS.md, "The allocator").
//!
//! mimalloc keeps freed pages for a while by default (1 s) and commits its arenas eagerly,
//! which raised peak memory of a restore from 88 to 156 MiB; [`configure`] makes it purge freed
//! pages after 10 ms and commit arena memory as it is used, which keeps peak memory below
//! glibc's (docs/BENCHMARKS.md). Purging at once (0 ms) kept another 5–9 MiB off a run's peak,
//! but a part's records are freed by a worker page by page while the reader allocates the next
//! part's, so the kernel zeroed and mapped the same pages again and again: full archives and
//! restores were 4–8% slower (docs/BENCHMARKS.md, "The purge delay").
//!
//! Only the `tidemark` command does this: the library crates never choose a process's
//! allocator, a service that embeds them chooses its own.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc.h of the pinned libmimalloc-sys (v3 sources):
/// the crate names only some options.
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
/// `mi_option_purge_delay`, as above: milliseconds before freed pages go back to the system.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// The purge delay set: pages freed and allocated again within a part's time stay mapped,
/// and a run's peak stays near its working set.
const PURGE_DELAY_MS: std::ffi::c_long = 10;
/// `mi_option_allow_thp`, as above: whether mimalloc asks for transparent huge pages.
const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Sets the allocator's options; called first thing in `main`. An option set in the
/// environment (mimalloc's own `MIMALLOC_ARENA_EAGER_COMMIT`, `MIMALLOC_PURGE_DELAY`) is left
/// as the environment sets it.
pub fn configure() {
    for (option, env, value) in [
        (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 0),
        (PURGE_DELAY, "MIMALLOC_PURGE_DELAY", PURGE_DELAY_MS),
    ] {
        if std::env::var_os(env).is_some() {
            continue;
        }
        #[allow(unsafe_code)]
        // SAFETY: mi_option_set only stores an option's value (atomically); both options are
        // read when memory is next committed or purged, so setting them at any time is sound.
        unsafe {
            libmimalloc_sys::mi_option_set(option, value);
        }
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        disable_transparent_huge_pages();
    }
}

/// Called once the command's work is done, before the process exits: mimalloc's exit
/// collection then returns nothing to the kernel page by page (20-odd `madvise` calls after a
/// small incremental), since the kernel takes the whole address space back at once.
pub fn exiting() {
    #[allow(unsafe_code)]
    // SAFETY: mi_option_set only stores an option's value (atomically).
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
    }
}

/// No transparent huge pages for this process: mimalloc stops asking for them, and the kernel
/// stops giving them (`prctl(PR_SET_THP_DISABLE)`, which mimalloc itself makes only when
/// `MIMALLOC_ALLOW_THP=0` is set at start). The first arena, reserved before `main`, is never
/// advised to use them either: mimalloc is built with its `no_thp` feature (Cargo.toml).
/// A run touches a few bytes of many 2 MiB regions (a thread's heap, a part's buffers), and
/// the kernel zeroed each whole: with them, the archive steps peaked 7–13 MiB higher (SQLite,
/// 1M × 100 B) and an incremental 16–26 MiB higher, for no measurable speed
/// (docs/BENCHMARKS.md, "Transparent huge pages off"). The flag is inherited by child
/// processes; the command starts none.
fn disable_transparent_huge_pages() {
    #[allow(unsafe_code)]
    // SAFETY: mi_option_set only stores an option's value (atomically).
    unsafe {
        libmimalloc_sys::mi_option_set(ALLOW_THP, 0);
    }
    #[cfg(target_os = "linux")]
    {
        #[allow(unsafe_code)]
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes a flag of this
        // process's memory map; it cannot fail in a way that affects memory safety (an error,
        // e.g. from an old kernel, leaves huge pages on, which is only slower to zero).
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use libmimalloc_sys::{mi_option_get, mi_option_t};

    fn get(option: mi_option_t) -> std::ffi::c_long {
        #[allow(unsafe_code)]
        // SAFETY: reading an option's value has no precondition.
        unsafe {
            mi_option_get(option)
        }
    }

    /// The numbers name the options meant: before `configure`, each holds the default that
    /// mimalloc.h gives it (2 and 1000, which no neighbouring option has), after it, the values
    /// set. Run without MIMALLOC_* variables set (as the test suite runs).
    #[test]
    fn the_numbers_name_the_options_meant() {
        assert_eq!(
            get(super::ARENA_EAGER_COMMIT),
            2,
            "arena_eager_commit's default"
        );
        assert_eq!(get(super::PURGE_DELAY), 1000, "purge_delay's default");
        // allow_thp (1) sits after page_max_reclaim (-1) and page_cross_thread_max_reclaim
        // (32, options.c): the neighbours pin its number.
        assert_eq!(get(super::ALLOW_THP - 2), -1, "page_max_reclaim");
        assert_eq!(
            get(super::ALLOW_THP - 1),
            32,
            "page_cross_thread_max_reclaim"
        );
        assert_eq!(get(super::ALLOW_THP), 1, "allow_thp's default");
        super::configure();
        assert_eq!(get(super::ARENA_EAGER_COMMIT), 0);
        assert_eq!(get(super::PURGE_DELAY), super::PURGE_DELAY_MS);
        assert_eq!(get(super::ALLOW_THP), 0);
        super::exiting();
        assert_eq!(get(super::PURGE_DELAY), -1, "no purging at exit");
        #[cfg(target_os = "linux")]
        {
            #[allow(unsafe_code)]
            // SAFETY: PR_GET_THP_DISABLE reads a flag of this process.
            let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
            assert_eq!(disabled, 1, "the kernel gives this process no huge pages");
        }
    }
}
