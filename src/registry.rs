//! How a service plugs in: it implements [`Module`] in its folder and is
//! named once in the list in `services/mod.rs` (`crate::services!`). From
//! that list follow its configuration section (and so its validation,
//! schema and reference row), its gRPC routes, its health names (from the
//! generated `SERVICE_NAME`), its metrics labels and its key spaces.

use tonic::service::RoutesBuilder;

use crate::grpc::Shared;
use crate::keys::Space;
use crate::settings::Setting;
use crate::store::Backend;

/// A service of the product.
pub trait Module {
    /// Its folder and configuration section, e.g. `ratelimit`.
    const NAME: &'static str;
    /// Its `<NAME>.*` settings, which are also its bounds.
    type Settings: Setting + Default + Clone + std::fmt::Debug + Send + Sync + 'static;
    /// The key spaces its stores write (unique across services).
    const SPACES: &'static [Space];
    /// Builds its store on `registrar.backend()` and adds its handler(s).
    fn register(
        settings: &Self::Settings,
        registrar: &mut Registrar<'_>,
    ) -> Result<(), RegisterError>;
}

/// A service that could not be built from its settings.
#[derive(Debug, thiserror::Error)]
#[error("{service}: {message}")]
pub struct RegisterError {
    pub service: &'static str,
    pub message: String,
}

/// The message limits every service is served with.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
}

/// What a service registers into.
pub struct Registrar<'a> {
    backend: &'a Backend,
    shared: Shared,
    limits: Limits,
    routes: &'a mut RoutesBuilder,
    served: Vec<&'static str>,
    /// What one service hands to a later one in the list (the rate
    /// limiter's decision recorder, which analytics flushes).
    handoffs: http::Extensions,
}

/// A handler that can be served (implemented by [`crate::grpc_service!`]).
pub trait IntoService {
    fn add_to(self, registrar: &mut Registrar<'_>);
}

impl<'a> Registrar<'a> {
    pub fn new(
        backend: &'a Backend,
        shared: Shared,
        limits: Limits,
        routes: &'a mut RoutesBuilder,
    ) -> Self {
        Self {
            backend,
            shared,
            limits,
            routes,
            served: Vec::new(),
            handoffs: http::Extensions::new(),
        }
    }

    pub fn backend(&self) -> &Backend {
        self.backend
    }

    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn routes(&mut self) -> &mut RoutesBuilder {
        self.routes
    }

    /// Records a served gRPC service's full name (health reports on it).
    pub fn served(&mut self, name: &'static str) {
        self.served.push(name);
    }

    /// Leaves `value` for a service later in the list.
    pub fn hand_off<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.handoffs.insert(value);
    }

    /// What an earlier service left with [`Registrar::hand_off`].
    pub fn handed<T: Clone + Send + Sync + 'static>(&mut self) -> Option<T> {
        self.handoffs.remove::<T>()
    }

    /// Serves `handler`.
    pub fn add(&mut self, handler: impl IntoService) {
        handler.add_to(self);
    }

    /// Every gRPC service name registered, in order.
    pub fn into_served(self) -> Vec<&'static str> {
        self.served
    }
}

/// The registration list: declares each service's module and derives the
/// whole [`crate::config::Settings`] (the core sections, then one section
/// per service), [`register_all`](crate::services::register_all) and
/// [`key_spaces`](crate::services::key_spaces) from it.
#[macro_export]
macro_rules! services {
    ($( $(#[$attr:meta])* $name:ident ),* $(,)?) => {
        $( $(#[$attr])* pub mod $name; )*

        /// Every setting, by section: `server`, `redis`, `keys`, `health`,
        /// `telemetry`, `metrics`, `auth`, then one section per service.
        #[derive(Debug, Clone, Default, ::serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Settings {
            #[serde(deserialize_with = "crate::settings::de")]
            pub server: $crate::grpc::ServerSettings,
            #[serde(deserialize_with = "crate::settings::de")]
            pub redis: $crate::store::redis::RedisSettings,
            #[serde(deserialize_with = "crate::settings::de")]
            pub keys: $crate::keys::KeySettings,
            #[serde(deserialize_with = "crate::settings::de")]
            pub health: $crate::health::HealthSettings,
            #[serde(deserialize_with = "crate::settings::de")]
            pub telemetry: $crate::telemetry::TelemetrySettings,
            #[serde(deserialize_with = "crate::settings::de")]
            pub metrics: $crate::metrics::MetricsSettings,
            #[serde(deserialize_with = "crate::settings::de")]
            pub auth: $crate::auth::AuthSettings,
            $(
                $(#[$attr])*
                #[serde(deserialize_with = "crate::settings::de")]
                pub $name: <$name::Service as $crate::registry::Module>::Settings,
            )*
        }

        impl Settings {
            /// `(section, its settings)` for every section, in order.
            pub fn sections(&self) -> Vec<(&'static str, &dyn $crate::settings::Check)> {
                let mut sections: Vec<(&'static str, &dyn $crate::settings::Check)> = vec![
                    ("server", &self.server),
                    ("redis", &self.redis),
                    ("keys", &self.keys),
                    ("health", &self.health),
                    ("telemetry", &self.telemetry),
                    ("metrics", &self.metrics),
                    ("auth", &self.auth),
                ];
                $(
                    $(#[$attr])*
                    sections.push((stringify!($name), &self.$name));
                )*
                sections
            }

            /// Every setting as in force, by section (secrets redacted):
            /// what `datalayer print-config` prints.
            pub fn effective(&self) -> ::serde_json::Value {
                ::serde_json::Value::Object(
                    self.sections()
                        .into_iter()
                        .map(|(name, section)| (name.to_owned(), section.effective_value()))
                        .collect(),
                )
            }

            /// The JSON Schema of every section, in order.
            pub fn section_schemas() -> Vec<(&'static str, ::serde_json::Value)> {
                use $crate::settings::Setting;
                let mut schemas = vec![
                    ("server", $crate::grpc::ServerSettings::schema()),
                    ("redis", $crate::store::redis::RedisSettings::schema()),
                    ("keys", $crate::keys::KeySettings::schema()),
                    ("health", $crate::health::HealthSettings::schema()),
                    ("telemetry", $crate::telemetry::TelemetrySettings::schema()),
                    ("metrics", $crate::metrics::MetricsSettings::schema()),
                    ("auth", $crate::auth::AuthSettings::schema()),
                ];
                $(
                    $(#[$attr])*
                    schemas.push((
                        stringify!($name),
                        <<$name::Service as $crate::registry::Module>::Settings>::schema(),
                    ));
                )*
                schemas
            }
        }

        /// Registers every service's handlers, in list order.
        pub fn register_all(
            settings: &Settings,
            registrar: &mut $crate::registry::Registrar<'_>,
        ) -> Result<(), $crate::registry::RegisterError> {
            $(
                $(#[$attr])*
                <$name::Service as $crate::registry::Module>::register(&settings.$name, registrar)?;
            )*
            Ok(())
        }

        /// `(service, space)` for every key space of every service.
        pub fn key_spaces() -> Vec<(&'static str, $crate::keys::Space)> {
            let mut spaces = Vec::new();
            $(
                $(#[$attr])*
                for space in <$name::Service as $crate::registry::Module>::SPACES {
                    spaces.push((stringify!($name), *space));
                }
            )*
            spaces
        }

        /// The services' names (their folders and config sections), in order.
        #[allow(clippy::vec_init_then_push)]
        pub fn names() -> Vec<&'static str> {
            let mut names = Vec::new();
            $(
                $(#[$attr])*
                names.push(stringify!($name));
            )*
            names
        }
    };
}
