//! What a data dir knows of the fleet it belongs to, below both the store and the fleet's log
//! ([`super::fleet`]): its membership ([`Marker`], in node-local meta under [`META_FLEET`]), the
//! other node-local meta keys the log keeps, and the fleet's failures ([`FleetError`]). The store
//! reads these without knowing how the log works.

use serde::{Deserialize, Serialize};

/// Node-local meta key: which fleet this data dir belongs to, and as which node.
pub const META_FLEET: &[u8] = b"fleet";
/// Node-local meta key: the `fleet::LogKey` (32 bytes).
pub const META_LOG_KEY: &[u8] = b"fleet_log_key";
/// Node-local meta key: the tag of the last row this node applied or wrote.
pub const META_LOG_TAG: &[u8] = b"fleet_log_tag";

/// This node's membership, stored in its own meta ([`META_FLEET`]).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Marker {
    pub fleet_id: String,
    pub node: String,
}

/// Fleet failures, each with a stable code.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("store_unavailable: PostgreSQL: {0}; nothing was written")]
    Unavailable(String),
    #[error(
        "fleet_unconfigured: this data dir is node of fleet {0}; set store_url (or $AIRLOCK_STORE_URL) so writes go through the fleet"
    )]
    Unconfigured(String),
    #[error("fleet_mismatch: {0}")]
    Mismatch(String),
    #[error("fleet_log_corrupt: {0}")]
    Corrupt(String),
    #[error(
        "fleet_log_rejected: {0}; nothing of it was applied, and this node serves what it had (see `airlock fleet status`)"
    )]
    Rejected(String),
    #[error(
        "fleet_key_mismatch: the root key given does not open the fleet's vault ({0}); nothing was written"
    )]
    KeyMismatch(String),
    #[error("fleet_upgrade_needed: {0}")]
    UpgradeNeeded(String),
}

impl FleetError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "store_unavailable",
            Self::Unconfigured(_) => "fleet_unconfigured",
            Self::Mismatch(_) => "fleet_mismatch",
            Self::Corrupt(_) => "fleet_log_corrupt",
            Self::Rejected(_) => "fleet_log_rejected",
            Self::KeyMismatch(_) => "fleet_key_mismatch",
            Self::UpgradeNeeded(_) => "fleet_upgrade_needed",
        }
    }

    /// Whether the log itself is at fault (not the connection): following stops until it is
    /// repaired, and the node says so.
    pub fn is_log_problem(&self) -> bool {
        matches!(
            self,
            Self::Rejected(_) | Self::Corrupt(_) | Self::UpgradeNeeded(_)
        )
    }
}
