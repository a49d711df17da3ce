//! Process memory: how freed buffers go back to the system.

/// Makes the C allocator hand every allocation of 1 MiB or more straight to the kernel
/// (`mmap`) and back when it is freed, instead of keeping it in its heap. Archive runs allocate
/// and free buffers of a few MiB all the time (parts, compressed output, sort runs); with
/// glibc's default the threshold for that rises after the first large free, the buffers end up
/// in the heap, and the heap's free space is kept: peak memory of a 4M-record full backup was
/// 144–176 MiB with the default and 114–120 MiB with this (docs/BENCHMARKS.md).
///
/// It changes a setting of the whole process, so the library never calls it itself; a service
/// that embeds tidemark and keeps glibc's allocator may call it at start. (The `tidemark`
/// command uses mimalloc instead: ARCHITECTURE.md, "The allocator".) A no-op where the C
/// library is not glibc.
pub fn release_large_buffers_promptly() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
