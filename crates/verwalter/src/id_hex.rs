//! Serde for machine ids as 32 lowercase hex digits (the spelling of the HTTP API).

use protocol::domain::MachineId;
use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(id: &MachineId, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(id)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<MachineId, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}
