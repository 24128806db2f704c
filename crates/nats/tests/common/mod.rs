//! Test harness: the crate's `testing` module (a real 3-node NATS JetStream cluster), shared with other crates.

pub use esgf_events_nats::testing::*;
