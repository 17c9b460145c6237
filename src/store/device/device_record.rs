//! wacore's `DeviceStore` over the device keyspace: the one `Device` row
//! (this session's own identity, pairing state and account details).
//!
//! Which writes flush before returning `Ok` is listed under *Durability* in
//! the parent module.

use std::sync::Arc;

use async_trait::async_trait;
use wacore::store::Device;
use wacore::store::error::Result as WaResult;
use wacore::store::traits::DeviceStore;

use super::{DeviceBackend, kind};

const DEVICE_KEY: [u8; 1] = [kind::DEVICE];

#[async_trait]
impl DeviceStore for DeviceBackend {
    async fn save(&self, device: &Device) -> WaResult<()> {
        let result = self
            .encode_json(device, "device")
            .and_then(|plain| self.put(&DEVICE_KEY, &plain));
        self.durably(result).await
    }

    async fn load(&self) -> WaResult<Option<Device>> {
        let Some(mut device) = self.get_json::<Device>(&DEVICE_KEY, "device")? else {
            return Ok(None);
        };
        // Both are `#[serde(skip)]`: restore what `Device::new` would set, or
        // an unpaired device would register with empty DeviceProps.
        device.device_props = Arc::new(wacore::store::device::DEVICE_PROPS.clone());
        device.client_profile = wacore::client_profile::ClientProfile::web();
        Ok(Some(device))
    }

    async fn exists(&self) -> WaResult<bool> {
        Ok(self.with_tree(|tree| Ok(tree.contains_key(DEVICE_KEY)?))?)
    }

    /// Persists a fresh `Device::new()` unless one exists, so the identity
    /// (and the QR) stays stable across restarts before pairing. One device
    /// per keyspace: the id is always 1.
    async fn create(&self) -> WaResult<i32> {
        let result = self
            .encode_json(&Device::new(), "device")
            .and_then(|plain| self.seal(&DEVICE_KEY, &plain))
            .and_then(|sealed| {
                self.with_tree(|tree| {
                    // Insert only if absent; an existing device wins.
                    let _ =
                        tree.compare_and_swap(DEVICE_KEY, None as Option<&[u8]>, Some(sealed))?;
                    Ok(())
                })
            });
        self.durably(result).await?;
        Ok(1)
    }
}
