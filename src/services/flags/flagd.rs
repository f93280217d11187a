//! flagd's evaluation protocol, v1 and v2, served from this replica's
//! compiled flags. The `flagd-selector` header picks the flag set; without
//! one, every set is served (a later source's flag wins).
//!
//! Errors are the codes flagd providers read: NOT_FOUND (FLAG_NOT_FOUND),
//! INVALID_ARGUMENT (TYPE_MISMATCH), DATA_LOSS (PARSE_ERROR), and
//! FAILED_PRECONDITION for a flag that resolves to no variant (GENERAL).

use std::sync::Arc;

use futures::{Stream, StreamExt, stream};
use prost_types::Struct;
use serde_json::{Map, Value, json};
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};

use super::convert::{json_to_struct, struct_to_json};
use super::eval::{self, EvalError, Kind, Resolution};
use super::model;
use super::{Flags, now_secs};
use crate::error::Error;
use crate::grpc::Ctx;

/// flagd evaluation v1 (`flagd.evaluation.v1.Service`).
pub struct V1(pub Arc<Flags>);
/// flagd evaluation v2 (`flagd.evaluation.v2.Service`).
pub struct V2(pub Arc<Flags>);

impl From<EvalError> for Error {
    fn from(e: EvalError) -> Self {
        match e {
            EvalError::NotFound(_) => Error::NotFound(e.to_string()),
            EvalError::TypeMismatch(m) => Error::invalid("flag_key", m),
            EvalError::Parse(m) => Error::DataLoss(m),
            EvalError::General(m) => Error::FailedPrecondition(m),
        }
    }
}

/// Evaluates `key` for the request's context.
async fn evaluate(
    flags: &Flags,
    ctx: &Ctx,
    key: &str,
    context: Option<&Struct>,
    kind: Kind,
) -> Result<Resolution, Error> {
    model::name(key, "flag_key")?;
    flags.ensure(&ctx.tenant).await;
    let selector = ctx.header("flagd-selector").filter(|s| !s.is_empty());
    let (set, flag) = flags.registry.lookup(&ctx.tenant, selector, key)?;
    let context = context.map(struct_to_json).unwrap_or_default();
    let data = eval::rule_context(key, &context, &flags.registry.static_context, now_secs());
    let resolution = eval::resolve(&flag, &set.metadata, data, kind)?;
    metrics::counter!(crate::metrics::FLAG_EVALUATIONS, "reason" => resolution.reason.as_str())
        .increment(1);
    Ok(resolution)
}

fn metadata(resolution: &Resolution) -> Option<Struct> {
    Some(json_to_struct(&resolution.metadata))
}

fn as_bool(v: &Option<Value>) -> Option<bool> {
    v.as_ref().and_then(Value::as_bool)
}
fn as_string(v: &Option<Value>) -> Option<String> {
    v.as_ref().and_then(Value::as_str).map(str::to_owned)
}
fn as_i64(v: &Option<Value>) -> Option<i64> {
    v.as_ref()
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
}
fn as_f64(v: &Option<Value>) -> Option<f64> {
    v.as_ref().and_then(Value::as_f64)
}
fn as_struct(v: &Option<Value>) -> Option<Struct> {
    v.as_ref().and_then(Value::as_object).map(json_to_struct)
}

/// flagd's EventStream: `provider_ready` at once (once this replica has
/// loaded its flags), `configuration_change` for every change of the
/// served sets, `keep_alive` on an interval.
async fn events(
    flags: &Arc<Flags>,
    ctx: &Ctx,
) -> Result<impl Stream<Item = Result<(String, Option<Struct>), Error>> + Send + use<>, Error> {
    flags.ensure(&ctx.tenant).await;
    let mut ready = flags.registry.ready();
    // Bounded by the call's deadline: a provider waits for ready.
    let _ = ready.wait_for(|ready| *ready).await;
    let changes = BroadcastStream::new(flags.registry.subscribe());
    let tenant = ctx.tenant.clone();
    let selector = ctx
        .header("flagd-selector")
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let changes = changes.filter_map(move |change| {
        let keep = match change {
            Ok(change)
                if change.tenant == tenant
                    && selector.as_ref().is_none_or(|s| *s == change.set) =>
            {
                let mut changed = Map::new();
                for (key, kind) in &change.flags {
                    changed.insert(key.clone(), json!({"type": kind.as_str()}));
                }
                Some(Ok((
                    "configuration_change".to_owned(),
                    Some(json_to_struct(
                        &json!({"flags": changed})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    )),
                )))
            }
            Ok(_) => None,
            // This subscriber fell behind the broadcast: tell it that
            // something changed, so it re-reads.
            Err(_) => Some(Ok(("configuration_change".to_owned(), None))),
        };
        async move { keep }
    });
    let period = flags.settings.keep_alive;
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let keep_alive = IntervalStream::new(interval).map(|_| Ok(("keep_alive".to_owned(), None)));
    let ready = stream::once(async { Ok(("provider_ready".to_owned(), None)) });
    Ok(ready.chain(stream::select(changes, keep_alive)))
}

/// Writes the handler of one flagd version. The two differ only in how an
/// absent value or variant travels: v1 as the type's zero, v2 as unset.
macro_rules! flagd {
    ($handler:ident, $pb:ident, $value:ident, $variant:ident) => {
        mod $pb {
            pub use crate::proto::flagd::evaluation::$pb::*;
        }

        impl $handler {
            async fn resolve_boolean(
                &self,
                ctx: Ctx,
                req: $pb::ResolveBooleanRequest,
            ) -> Result<$pb::ResolveBooleanResponse, Error> {
                let r = evaluate(
                    &self.0,
                    &ctx,
                    &req.flag_key,
                    req.context.as_ref(),
                    Kind::Bool,
                )
                .await?;
                Ok($pb::ResolveBooleanResponse {
                    value: $value(as_bool(&r.value)),
                    reason: r.reason.as_str().into(),
                    variant: $variant(r.variant.clone()),
                    metadata: metadata(&r),
                })
            }

            async fn resolve_string(
                &self,
                ctx: Ctx,
                req: $pb::ResolveStringRequest,
            ) -> Result<$pb::ResolveStringResponse, Error> {
                let r = evaluate(
                    &self.0,
                    &ctx,
                    &req.flag_key,
                    req.context.as_ref(),
                    Kind::String,
                )
                .await?;
                Ok($pb::ResolveStringResponse {
                    value: $value(as_string(&r.value)),
                    reason: r.reason.as_str().into(),
                    variant: $variant(r.variant.clone()),
                    metadata: metadata(&r),
                })
            }

            async fn resolve_int(
                &self,
                ctx: Ctx,
                req: $pb::ResolveIntRequest,
            ) -> Result<$pb::ResolveIntResponse, Error> {
                let r = evaluate(
                    &self.0,
                    &ctx,
                    &req.flag_key,
                    req.context.as_ref(),
                    Kind::Int,
                )
                .await?;
                Ok($pb::ResolveIntResponse {
                    value: $value(as_i64(&r.value)),
                    reason: r.reason.as_str().into(),
                    variant: $variant(r.variant.clone()),
                    metadata: metadata(&r),
                })
            }

            async fn resolve_float(
                &self,
                ctx: Ctx,
                req: $pb::ResolveFloatRequest,
            ) -> Result<$pb::ResolveFloatResponse, Error> {
                let r = evaluate(
                    &self.0,
                    &ctx,
                    &req.flag_key,
                    req.context.as_ref(),
                    Kind::Float,
                )
                .await?;
                Ok($pb::ResolveFloatResponse {
                    value: $value(as_f64(&r.value)),
                    reason: r.reason.as_str().into(),
                    variant: $variant(r.variant.clone()),
                    metadata: metadata(&r),
                })
            }

            async fn resolve_object(
                &self,
                ctx: Ctx,
                req: $pb::ResolveObjectRequest,
            ) -> Result<$pb::ResolveObjectResponse, Error> {
                let r = evaluate(
                    &self.0,
                    &ctx,
                    &req.flag_key,
                    req.context.as_ref(),
                    Kind::Object,
                )
                .await?;
                Ok($pb::ResolveObjectResponse {
                    value: as_struct(&r.value),
                    reason: r.reason.as_str().into(),
                    variant: $variant(r.variant.clone()),
                    metadata: metadata(&r),
                })
            }

            async fn event_stream(
                &self,
                ctx: Ctx,
                _req: $pb::EventStreamRequest,
            ) -> Result<
                impl Stream<Item = Result<$pb::EventStreamResponse, Error>> + Send + 'static,
                Error,
            > {
                Ok(events(&self.0, &ctx).await?.map(|event| {
                    event.map(|(r#type, data)| $pb::EventStreamResponse { r#type, data })
                }))
            }
        }
    };
}

fn plain<T: Default>(v: Option<T>) -> T {
    v.unwrap_or_default()
}

fn optional<T>(v: Option<T>) -> Option<T> {
    v
}

flagd!(V1, v1, plain, plain);
flagd!(V2, v2, optional, optional);

impl V1 {
    /// Every flag the selector serves, evaluated; flags that fail, or that
    /// leave the value to the caller's default, are left out.
    async fn resolve_all(
        &self,
        ctx: Ctx,
        req: v1::ResolveAllRequest,
    ) -> Result<v1::ResolveAllResponse, Error> {
        self.0.ensure(&ctx.tenant).await;
        let selector = ctx.header("flagd-selector").filter(|s| !s.is_empty());
        let context = req.context.as_ref().map(struct_to_json).unwrap_or_default();
        let mut out = std::collections::HashMap::new();
        for (set, flag) in self.0.registry.all(&ctx.tenant, selector) {
            let data = eval::rule_context(
                &flag.key,
                &context,
                &self.0.registry.static_context,
                now_secs(),
            );
            let Ok(r) = eval::resolve(&flag, &set.metadata, data, Kind::Any) else {
                continue;
            };
            let Some(value) = &r.value else { continue };
            use v1::any_flag::Value as V;
            let value = match value {
                Value::Bool(b) => V::BoolValue(*b),
                Value::String(s) => V::StringValue(s.clone()),
                Value::Number(n) => V::DoubleValue(n.as_f64().unwrap_or_default()),
                Value::Object(o) => V::ObjectValue(json_to_struct(o)),
                _ => continue,
            };
            out.insert(
                flag.key.clone(),
                v1::AnyFlag {
                    reason: r.reason.as_str().into(),
                    variant: r.variant.clone().unwrap_or_default(),
                    value: Some(value),
                    metadata: metadata(&r),
                },
            );
        }
        Ok(v1::ResolveAllResponse {
            flags: out,
            metadata: None,
        })
    }
}

crate::grpc_service! {
    v1::service_server::{Service, ServiceServer} for V1 {
        unary ResolveAll => resolve_all(v1::ResolveAllRequest) -> v1::ResolveAllResponse;
        unary ResolveBoolean => resolve_boolean(v1::ResolveBooleanRequest) -> v1::ResolveBooleanResponse;
        unary ResolveString => resolve_string(v1::ResolveStringRequest) -> v1::ResolveStringResponse;
        unary ResolveFloat => resolve_float(v1::ResolveFloatRequest) -> v1::ResolveFloatResponse;
        unary ResolveInt => resolve_int(v1::ResolveIntRequest) -> v1::ResolveIntResponse;
        unary ResolveObject => resolve_object(v1::ResolveObjectRequest) -> v1::ResolveObjectResponse;
        stream EventStream => event_stream(v1::EventStreamRequest) -> v1::EventStreamResponse as EventStreamStream;
    }
}

crate::grpc_service! {
    v2::service_server::{Service, ServiceServer} for V2 {
        unary ResolveBoolean => resolve_boolean(v2::ResolveBooleanRequest) -> v2::ResolveBooleanResponse;
        unary ResolveString => resolve_string(v2::ResolveStringRequest) -> v2::ResolveStringResponse;
        unary ResolveFloat => resolve_float(v2::ResolveFloatRequest) -> v2::ResolveFloatResponse;
        unary ResolveInt => resolve_int(v2::ResolveIntRequest) -> v2::ResolveIntResponse;
        unary ResolveObject => resolve_object(v2::ResolveObjectRequest) -> v2::ResolveObjectResponse;
        stream EventStream => event_stream(v2::EventStreamRequest) -> v2::EventStreamResponse as EventStreamStream;
    }
}
