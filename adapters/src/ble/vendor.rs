//! Placeholder until the declarative vendor profiles land (branch ble-pure).
#![allow(missing_docs)]
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct VendorProfile {
    pub name: String,
}

impl VendorProfile {
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

impl VendorProfile {
    pub fn reads(&self, _u: uuid::Uuid) -> bool {
        false
    }
    pub fn subscribes(&self, _u: uuid::Uuid) -> bool {
        false
    }
    pub fn decode(&self, _u: uuid::Uuid, _b: &[u8]) -> Result<Vec<crate::ble::Reading>, crate::ble::DecodeError> {
        Ok(Vec::new())
    }
}
