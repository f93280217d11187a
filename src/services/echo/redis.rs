use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use deadpool_redis::redis::FromRedisValue;

use super::{MEMORY_US, SPACE, store::Store};
use crate::keys::{self, Tenant};
use crate::store::StoreError;
use crate::store::redis::{NamedScript, Redis};

static SAY: LazyLock<NamedScript> =
    LazyLock::new(|| NamedScript::new("echo.say", &[include_str!("lua/say.lua")]));

pub struct RedisEcho(pub Arc<Redis>);

#[async_trait]
impl Store for RedisEcho {
    async fn say(&self, tenant: &Tenant, text: &str) -> Result<u64, StoreError> {
        let key = keys::key(tenant, SPACE, text, &[]);
        let reply = self.0.eval(SAY.call(&[&key], &[MEMORY_US])).await?;
        u64::from_redis_value(reply).map_err(|e| StoreError::internal(format!("echo.say: {e}")))
    }
}
