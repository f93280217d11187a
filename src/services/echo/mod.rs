//! Echo: the smallest service there is, built with the `echo` feature only.
//! It shows what a service takes: this folder (domain, settings, handler,
//! store trait, memory and Redis stores, a Lua script), a proto, tests, and
//! one line in `services/mod.rs`.

mod grpc;
mod memory;
mod redis;
pub mod store;

use crate::keys::Space;
use crate::registry::{Module, RegisterError, Registrar};

/// What was said lately, per text.
pub const SPACE: Space = Space::expiring("echo");

crate::section! {
    /// The echo example service.
    pub struct Settings {
        /// Longest text, in bytes.
        pub max_text_bytes: usize = 64, range(1, 4096);
        /// Most messages one `Repeat` streams.
        pub max_times: u32 = 100, range(1, 10_000);
    }
}

pub struct Service;

impl Module for Service {
    const NAME: &'static str = "echo";
    type Settings = Settings;
    const SPACES: &'static [Space] = &[SPACE];

    fn register(settings: &Settings, registrar: &mut Registrar<'_>) -> Result<(), RegisterError> {
        let store = store::build(registrar.backend());
        registrar.add(grpc::Handler {
            store,
            settings: settings.clone(),
        });
        Ok(())
    }
}

/// How long a said text is remembered.
pub const MEMORY_US: u64 = 60_000_000;
