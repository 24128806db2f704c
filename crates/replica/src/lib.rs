//! The reference index replica: a local SQLite index of ESGF datasets, kept in step with a topic of the ESGF
//! Event Service.
//!
//! - [`apply()`] turns one event (POST, PUT, PATCH as JSON Patch or merge patch, DELETE) into an index
//!   change; it is pure apart from the transaction it is given, and rejects bad events with a typed
//!   [`ApplyError`].
//! - [`Index`] is the SQLite file: items, searchable [`Facets`], per-partition consumer offsets committed in
//!   the same transaction as the changes ([`Index::apply_page`]), and an outbox of error reports.
//!   [`snapshot`] and [`bootstrap`] copy an index, offsets included, to start another replica.
//! - [`follow()`] reads a topic over HTTP ([`Source`]) into an index, publishing error reports to
//!   `<topic>.errors`.
//! - [`cli`] holds the `replicate` and `index` commands of the `esgf-events` binary.

pub mod apply;
pub mod canonical;
pub mod cli;
pub mod facets;
pub mod follow;
pub mod index;
pub mod source;

pub use apply::{Action, Applied, ApplyError, Change, Patch, Request, apply};
pub use canonical::{to_canonical, write_canonical};
pub use facets::{Condition, ConditionValue, Facet, Facets};
pub use follow::{FollowError, FollowOptions, FollowSummary, follow};
pub use index::{
    Bootstrapped, ErrorPolicy, Index, IndexError, IndexInfo, PageEvent, PageOutcome, PendingReport,
    SnapshotInfo, bootstrap, snapshot,
};
pub use source::{Source, SourceError, SourceOptions, TopicInfo};

#[cfg(test)]
mod tests;
