//! The whole conformance suite against the in-memory reference backend: the contract in its
//! simplest form, and a check of the suite itself (a case that a trivially correct store fails
//! is a wrong case).

conformance_tests::conformance_suite!(memory_suite, conformance_tests::memory::MemoryHarness);
