//! The gRPC side every service shares: one call path ([`serve`]), the call's
//! context ([`Ctx`]: tenant and deadline), the one error mapping
//! ([`status`]), the request codec ([`codec`]), conversions of protobuf
//! well-known types ([`convert`]), and `server.*` settings.
//!
//! A service writes its handler as plain async methods
//! `async fn check(&self, ctx: Ctx, req: pb::CheckRequest) -> Result<pb::CheckResponse, Error>`
//! and lists them in [`crate::grpc_service!`], which writes the tonic trait
//! implementation (span, deadline, metrics, status) once for all of them.

mod audited;
pub mod codec;
pub mod context;
pub mod convert;
mod method;
pub mod serve;
pub mod settings;
pub mod slots;
pub mod status;

pub use context::{Ctx, Deadlines};
pub use serve::{Method, Served, ServerStream, Shared, server_stream, unary};
pub use settings::ServerSettings;

/// The full name of the gRPC service a handler serves, from the generated
/// `SERVICE_NAME` (implemented by [`crate::grpc_service!`]).
pub trait ServiceName {
    const NAME: &'static str;
}

/// Implements a generated service trait for [`Served<Handler>`] by calling
/// the handler's methods through [`unary`] / [`server_stream`], and lets
/// the registry add the service (with the configured message limits and
/// compression) to the server:
///
/// ```ignore
/// crate::grpc_service! {
///     pb::rate_limit_service_server::{RateLimitService, RateLimitServiceServer} for Handler {
///         unary Check => check(pb::CheckRequest) -> pb::CheckResponse;
///         stream Watch => watch(pb::WatchRequest) -> pb::Event as WatchStream;
///     }
/// }
/// ```
///
/// Method names come from the generated `SERVICE_NAME` and the RPC names
/// listed here; the compiler checks the list against the trait.
#[macro_export]
macro_rules! grpc_service {
    (
        $($module:ident)::+ :: { $trait_:ident, $server:ident } for $handler:ty {
            $( unary $rpc:ident => $fn_:ident($req:ty) -> $resp:ty; )*
            $( stream $srpc:ident => $sfn:ident($sreq:ty) -> $sitem:ty as $stype:ident; )*
        }
    ) => {
        impl $crate::grpc::ServiceName for $crate::grpc::Served<$handler> {
            const NAME: &'static str = $($module)::+ :: SERVICE_NAME;
        }

        #[::tonic::async_trait]
        impl $($module)::+ :: $trait_ for $crate::grpc::Served<$handler> {
            $(
                async fn $fn_(
                    &self,
                    request: ::tonic::Request<$req>,
                ) -> Result<::tonic::Response<$resp>, ::tonic::Status> {
                    static METHOD: ::std::sync::LazyLock<$crate::grpc::Method> =
                        ::std::sync::LazyLock::new(|| {
                            $crate::grpc::Method::new(
                                <$crate::grpc::Served<$handler> as $crate::grpc::ServiceName>::NAME,
                                stringify!($rpc),
                            )
                        });
                    $crate::grpc::unary(&self.shared, &*METHOD, request, |ctx, req| {
                        self.handler.$fn_(ctx, req)
                    })
                    .await
                }
            )*
            $(
                type $stype = $crate::grpc::ServerStream<$sitem>;

                async fn $sfn(
                    &self,
                    request: ::tonic::Request<$sreq>,
                ) -> Result<::tonic::Response<Self::$stype>, ::tonic::Status> {
                    static METHOD: ::std::sync::LazyLock<$crate::grpc::Method> =
                        ::std::sync::LazyLock::new(|| {
                            $crate::grpc::Method::new(
                                <$crate::grpc::Served<$handler> as $crate::grpc::ServiceName>::NAME,
                                stringify!($srpc),
                            )
                        });
                    $crate::grpc::server_stream(&self.shared, &*METHOD, request, |ctx, req| {
                        self.handler.$sfn(ctx, req)
                    })
                    .await
                }
            )*
        }

        impl $crate::registry::IntoService for $handler {
            fn add_to(self, registrar: &mut $crate::registry::Registrar<'_>) {
                let limits = registrar.limits();
                let server = $($module)::+ :: $server::new($crate::grpc::Served {
                    handler: self,
                    shared: registrar.shared(),
                })
                .max_decoding_message_size(limits.max_request_bytes)
                .max_encoding_message_size(limits.max_response_bytes)
                .accept_compressed(::tonic::codec::CompressionEncoding::Gzip)
                .send_compressed(::tonic::codec::CompressionEncoding::Gzip);
                registrar.routes().add_service(server);
                registrar.served(<$crate::grpc::Served<$handler> as $crate::grpc::ServiceName>::NAME);
            }
        }
    };
}
