//! The ESGF Event Service's log engine: topics of partitions of records with dense offsets, stored durably.
//!
//! This crate knows nothing of HTTP, Kafka or JSON. Transports depend on it through the [`LogStore`] trait;
//! [`EmbeddedStore`] is the default backend (segment files on local disk, fsync before acknowledging), and
//! [`conformance`] is the test suite every backend must pass.

mod batch;
mod clock;
mod embedded;
mod error;
mod index;
mod model;
mod partition;
mod segment;
mod store;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use clock::{Clock, ManualClock, SystemClock};
pub use embedded::{Durability, EmbeddedConfig, EmbeddedStore};
pub use error::StoreError;
pub use model::{
    AppendOutcome, Header, NewRecord, PartitionOffsets, ReadLimits, ReadResult, Record, Retention,
    RetentionReport, TopicConfig, TopicInfo, validate_topic_name,
};
pub use store::LogStore;

/// Decoding of the on-disk batch framing, exposed for the fuzz targets only.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::batch::decode_batch_for_fuzzing as decode_batch;
}
