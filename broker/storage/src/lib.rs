//! Warren's durable store: the [`warren_core::storage::Storage`] trait on files.
//!
//! - [`record`]: the record format (length, CRC32C, payload in AMQP's encodings).
//! - [`segment`]: one preallocated, memory-mapped, append-only segment file.
//! - [`store`]: [`FileStore`]: puts, removes and delivery counts as log records, recovery, compaction,
//!   segment deletion, the metadata log.
//! - `recover`: reading segments and the metadata log back at start-up, damage versus a
//!   torn tail.
//! - [`index`]: queue index files, a checkpoint written at a clean stop for a fast start.
//! - [`sync`]: group commit: a [`Syncer`] fsyncs what was written, in batches.
//! - [`disk`]: reserving space, and free space for the disk alarm.

pub mod disk;
pub mod index;
pub mod record;
mod recover;
pub mod segment;
pub mod store;
pub mod sync;

pub use store::{FileStore, Options, RecoveryReport};
pub use sync::{SyncError, SyncRound, SyncStop, Syncer};
