//! The state-store conformance suite on the in-memory test store, so the stand-in other crates' tests use
//! behaves like the real backends.

use esgf_events_meta::testing::MemoryMetaStore;

esgf_events_meta::meta_conformance_suite!(((), MemoryMetaStore::default()));
