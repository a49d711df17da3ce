//! Checkpoints: positions in a store's stream of committed changes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The identity of one store instance (RocksDB's DB identity, a uuid kept by the backend for
/// sled and SQLite). A restored or replaced store has a different identity, so a checkpoint
/// taken on one store is never trusted on another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StoreId(pub String);

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A position in a store's stream of committed changes: every change at or before `position`
/// is included in a backup taken at this checkpoint, none after it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The store this position belongs to.
    pub store_id: StoreId,
    /// The position: RocksDB's sequence number, or the backend's change-log sequence.
    pub position: u64,
}

impl Checkpoint {
    /// A checkpoint of `store_id` at `position`.
    pub fn new(store_id: StoreId, position: u64) -> Self {
        Checkpoint { store_id, position }
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.store_id, self.position)
    }
}
