//! Redis Cluster transport: commands grouped by hash slot, one pipeline per
//! slot touched, the groups sent concurrently. The cluster client routes
//! each pipeline to the slot's master, follows MOVED/ASK and reconnects.
//!
//! Not deadpool's cluster pool: its recycle pings on every checkout and it
//! cannot set connect or response timeouts. One multiplexed cluster
//! connection already carries any number of concurrent calls.

use std::time::Duration;

use deadpool_redis::redis::{
    self, Cmd, RedisResult, Value,
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
};
use futures::future::join_all;
use tokio::sync::Mutex;

use super::RedisSettings;
use super::multiplexed::JobResult;
use crate::store::StoreError;

const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);
const SLOTS: u16 = 16384;

/// The cluster slot of `key`, honouring a `{hash tag}`.
pub(super) fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    CRC16.checksum(tagged) % SLOTS
}

/// The slot a command must run on, or `None` for keyless commands.
fn command_slot(cmd: &Cmd) -> Option<u16> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVAL" | b"EVALSHA" => (args.get(2)? != b"0").then(|| args.get(3)).flatten()?,
        b"PING" | b"SCRIPT" => return None,
        _ => args.get(1)?,
    };
    Some(slot(key))
}

pub(super) struct ClusterTransport {
    client: ClusterClient,
    connection: Mutex<Option<ClusterConnection>>,
    connect_timeout: Duration,
}

impl ClusterTransport {
    /// Connects lazily, so the service starts while the cluster is away.
    pub fn new(
        seeds: &[&str],
        s: &RedisSettings,
        tls: Option<redis::TlsCertificates>,
    ) -> Result<Self, StoreError> {
        let mut builder = ClusterClientBuilder::new(seeds.to_vec())
            .connection_timeout(s.connect_timeout)
            .response_timeout(s.response_timeout)
            .retries(2);
        if let Some(certs) = tls {
            builder = builder.certs(certs);
        }
        let client = builder.build().map_err(|e| {
            StoreError::new(
                crate::store::StoreErrorKind::Misconfigured,
                format!("redis.url (cluster seeds): {e}"),
            )
            .caused_by(e)
        })?;
        Ok(Self {
            client,
            connection: Mutex::new(None),
            connect_timeout: s.connect_timeout,
        })
    }

    async fn connection(&self) -> Result<ClusterConnection, StoreError> {
        let mut guard = self.connection.lock().await;
        if let Some(connection) = guard.as_ref() {
            return Ok(connection.clone());
        }
        let connection =
            tokio::time::timeout(self.connect_timeout, self.client.get_async_connection())
                .await
                .map_err(|_| StoreError::unavailable("redis cluster connect timed out"))?
                .map_err(|e| StoreError::from_redis(&e))?;
        Ok(guard.insert(connection).clone())
    }

    /// Runs `cmds`, one pipeline per slot; replies come back in order.
    pub async fn exec(&self, cmds: Vec<Cmd>) -> JobResult {
        let connection = self.connection().await?;
        let mut groups: Vec<(Option<u16>, Vec<usize>)> = Vec::new();
        for (index, cmd) in cmds.iter().enumerate() {
            let slot = command_slot(cmd);
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(index),
                None => groups.push((slot, vec![index])),
            }
        }
        let sent = groups.iter().map(|(_, members)| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &index in members {
                pipe.add_command(cmds[index].clone());
            }
            let mut connection = connection.clone();
            async move {
                pipe.query_async::<Vec<RedisResult<Value>>>(&mut connection)
                    .await
            }
        });
        let mut replies: Vec<Option<RedisResult<Value>>> = vec![None; cmds.len()];
        for ((_, members), result) in groups.iter().zip(join_all(sent).await) {
            match result {
                Ok(values) if values.len() == members.len() => {
                    for (&index, value) in members.iter().zip(values) {
                        replies[index] = Some(value);
                    }
                }
                Ok(values) => {
                    return Err(StoreError::internal(format!(
                        "pipeline of {} commands answered {}",
                        members.len(),
                        values.len()
                    )));
                }
                // This slot's master is unreachable: its calls fail, the
                // other slots' calls stand.
                Err(e) => {
                    metrics::counter!(crate::metrics::REDIS_ERRORS, "kind" => "unavailable")
                        .increment(1);
                    for &index in members {
                        replies[index] = Some(Err(e.clone()));
                    }
                }
            }
        }
        replies
            .into_iter()
            .map(|r| r.ok_or_else(|| StoreError::internal("missing reply")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"123456789"), 0x31C3 % SLOTS);
    }

    #[test]
    fn commands_route_by_their_first_key() {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("sha")
            .arg(2)
            .arg("dl:ns:c:{k}")
            .arg("dl:ns:c:{k}:lease");
        assert_eq!(command_slot(&eval), Some(slot(b"k")));
        let mut del = redis::cmd("DEL");
        del.arg("dl:ns:rl:{x}:inline");
        assert_eq!(command_slot(&del), Some(slot(b"x")));
        assert_eq!(command_slot(&redis::cmd("PING")), None);
    }
}
