//! `datalayer.session.v1.SessionService`: the wire ↔ the domain, then the
//! store.

use std::sync::Arc;

use super::store::Store;
use super::{
    self as session, CreateOutcome, DataUpdate, NewSession, OnLimit, SessionRecord, Settings,
    TokenRef, UpdateOutcome,
};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::{duration_in, timestamp_out};
use crate::proto::datalayer::session::v1 as pb;
use crate::validate::{self, FieldViolation};

const NO_SESSION: &str = "no such session: the token is unknown, expired or revoked";
const NO_ONE_TIME_TOKEN: &str =
    "no such one-time token: unknown, expired, already used, or for another purpose";

pub struct Handler {
    store: Arc<dyn Store>,
    settings: Settings,
}

crate::grpc_service! {
    pb::session_service_server::{SessionService, SessionServiceServer} for Handler {
        unary Create => create(pb::CreateRequest) -> pb::CreateResponse;
        unary Get => get(pb::GetRequest) -> pb::GetResponse;
        unary Update => update(pb::UpdateRequest) -> pb::UpdateResponse;
        unary Touch => touch(pb::TouchRequest) -> pb::TouchResponse;
        unary Rotate => rotate(pb::RotateRequest) -> pb::RotateResponse;
        unary Revoke => revoke(pb::RevokeRequest) -> pb::RevokeResponse;
        unary ListUserSessions => list_user_sessions(pb::ListUserSessionsRequest) -> pb::ListUserSessionsResponse;
        unary RevokeUserSessions => revoke_user_sessions(pb::RevokeUserSessionsRequest) -> pb::RevokeUserSessionsResponse;
        unary CountUserSessions => count_user_sessions(pb::CountUserSessionsRequest) -> pb::CountUserSessionsResponse;
        unary IssueOneTimeToken => issue_one_time_token(pb::IssueOneTimeTokenRequest) -> pb::IssueOneTimeTokenResponse;
        unary ConsumeOneTimeToken => consume_one_time_token(pb::ConsumeOneTimeTokenRequest) -> pb::ConsumeOneTimeTokenResponse;
    }
}

fn randomness(e: getrandom::Error) -> Error {
    Error::Internal(format!("no randomness for a token: {e}"))
}

fn to_proto(s: SessionRecord) -> pb::Session {
    pb::Session {
        expires_at: Some(timestamp_out(s.expires_at_us())),
        session_id: s.session_id,
        user_id: s.user_id,
        data: s.data.into_iter().collect(),
        version: s.version,
        created_at: Some(timestamp_out(s.created_us)),
        last_seen_at: Some(timestamp_out(s.last_seen_us)),
        absolute_expires_at: Some(timestamp_out(s.absolute_at_us)),
        client_ip: s.client_ip,
        user_agent: s.user_agent,
    }
}

fn found(session: Option<SessionRecord>) -> Result<SessionRecord, Error> {
    session.ok_or_else(|| Error::NotFound(NO_SESSION.to_owned()))
}

fn on_limit(raw: i32) -> Result<OnLimit, FieldViolation> {
    match pb::OnSessionLimit::try_from(raw) {
        Ok(pb::OnSessionLimit::Reject) => Ok(OnLimit::Reject),
        Ok(_) => Ok(OnLimit::EvictOldest),
        Err(_) => Err(FieldViolation::new(
            "on_limit",
            format!("unknown OnSessionLimit {raw}"),
        )),
    }
}

fn token(token: &str) -> Result<TokenRef, FieldViolation> {
    session::parse_session_token(token, "token")
}

impl Handler {
    pub fn new(store: Arc<dyn Store>, settings: Settings) -> Self {
        Self { store, settings }
    }

    /// A validated session and its new token (the only copy of the secret).
    fn parse_create(&self, req: pb::CreateRequest) -> Result<(String, NewSession), Error> {
        let s = &self.settings;
        let data = req.data.into_iter().collect();
        let idle = duration_in(req.idle_ttl.as_ref(), "idle_ttl").and_then(|d| s.idle_ttl(d));
        let absolute =
            duration_in(req.absolute_ttl.as_ref(), "absolute_ttl").and_then(|d| s.absolute_ttl(d));
        let (_, _, _, _, idle_us, absolute_us, max_sessions, on_limit) = validate::all((
            s.user_id(&req.user_id, "user_id"),
            s.data(&data, "data"),
            s.client_ip(&req.client_ip),
            s.user_agent(&req.user_agent),
            idle,
            absolute,
            s.max_sessions(req.max_sessions_per_user),
            on_limit(req.on_limit),
        ))?;
        let (token, reference) = session::new_session_token(&req.user_id).map_err(randomness)?;
        let new = NewSession {
            token: reference,
            session_id: session::new_session_id().map_err(randomness)?,
            user_id: req.user_id,
            data,
            idle_us,
            absolute_us,
            max_sessions,
            on_limit,
            client_ip: req.client_ip,
            user_agent: req.user_agent,
        };
        Ok((token, new))
    }

    async fn create(&self, ctx: Ctx, req: pb::CreateRequest) -> Result<pb::CreateResponse, Error> {
        let (token, new) = self.parse_create(req)?;
        match ctx.store(self.store.create(&ctx.tenant, &new)).await? {
            CreateOutcome::Created {
                session,
                evicted_session_ids,
            } => Ok(pb::CreateResponse {
                token,
                session: Some(to_proto(session)),
                evicted_session_ids,
            }),
            CreateOutcome::LimitReached => Err(Error::FailedPrecondition(format!(
                "user already has {} live sessions (on_limit = REJECT)",
                new.max_sessions
            ))),
        }
    }

    async fn get(&self, ctx: Ctx, req: pb::GetRequest) -> Result<pb::GetResponse, Error> {
        let token = token(&req.token)?;
        let session = found(
            ctx.store(self.store.get(&ctx.tenant, &token, req.touch))
                .await?,
        )?;
        Ok(pb::GetResponse {
            session: Some(to_proto(session)),
        })
    }

    async fn update(&self, ctx: Ctx, req: pb::UpdateRequest) -> Result<pb::UpdateResponse, Error> {
        let data = req.data.into_iter().collect();
        let update = match pb::UpdateMode::try_from(req.mode) {
            Ok(pb::UpdateMode::Replace) if !req.remove_keys.is_empty() => {
                Err(FieldViolation::new("remove_keys", "only with mode MERGE"))
            }
            Ok(pb::UpdateMode::Replace) => Ok(None),
            Ok(_) => Ok(Some(req.remove_keys)),
            Err(_) => Err(FieldViolation::new(
                "mode",
                format!("unknown UpdateMode {}", req.mode),
            )),
        };
        let (token, (), expected_version, remove) = validate::all((
            token(&req.token),
            self.settings.data(&data, "data"),
            validate::expected_version(req.expected_version, "expected_version"),
            update,
        ))?;
        let update = match remove {
            None => DataUpdate::Replace(data),
            Some(remove) => DataUpdate::Merge { set: data, remove },
        };
        let max_data_bytes = self.settings.max_data_bytes;
        let outcome = ctx
            .store(self.store.update(
                &ctx.tenant,
                &token,
                &update,
                expected_version,
                max_data_bytes,
            ))
            .await?
            .ok_or_else(|| Error::NotFound(NO_SESSION.to_owned()))?;
        match outcome {
            UpdateOutcome::Updated(s) => Ok(pb::UpdateResponse {
                updated: true,
                session: Some(to_proto(s)),
            }),
            UpdateOutcome::VersionMismatch(s) => Ok(pb::UpdateResponse {
                updated: false,
                session: Some(to_proto(s)),
            }),
            UpdateOutcome::TooLarge => Err(Error::invalid(
                "data",
                format!(
                    "the merged data would exceed {max_data_bytes} bytes (session.max_data_bytes)"
                ),
            )),
        }
    }

    async fn touch(&self, ctx: Ctx, req: pb::TouchRequest) -> Result<pb::TouchResponse, Error> {
        let token = token(&req.token)?;
        let session = found(ctx.store(self.store.get(&ctx.tenant, &token, true)).await?)?;
        Ok(pb::TouchResponse {
            expires_at: Some(timestamp_out(session.expires_at_us())),
        })
    }

    async fn rotate(&self, ctx: Ctx, req: pb::RotateRequest) -> Result<pb::RotateResponse, Error> {
        let old = token(&req.token)?;
        let (token, new) = session::rotated_token(&old).map_err(randomness)?;
        let session = found(
            ctx.store(self.store.rotate(&ctx.tenant, &old, &new))
                .await?,
        )?;
        Ok(pb::RotateResponse {
            token,
            session: Some(to_proto(session)),
        })
    }

    async fn revoke(&self, ctx: Ctx, req: pb::RevokeRequest) -> Result<pb::RevokeResponse, Error> {
        // The token is a secret: only that a session was named is logged.
        ctx.audit_target("one session (token not logged)");
        let token = token(&req.token)?;
        let revoked = ctx.store(self.store.revoke(&ctx.tenant, &token)).await?;
        Ok(pb::RevokeResponse { revoked })
    }

    async fn list_user_sessions(
        &self,
        ctx: Ctx,
        req: pb::ListUserSessionsRequest,
    ) -> Result<pb::ListUserSessionsResponse, Error> {
        self.settings.user_id(&req.user_id, "user_id")?;
        let sessions = ctx
            .store(self.store.list(&ctx.tenant, &req.user_id))
            .await?;
        Ok(pb::ListUserSessionsResponse {
            sessions: sessions.into_iter().map(to_proto).collect(),
        })
    }

    async fn revoke_user_sessions(
        &self,
        ctx: Ctx,
        req: pb::RevokeUserSessionsRequest,
    ) -> Result<pb::RevokeUserSessionsResponse, Error> {
        ctx.audit_target(crate::audit::target(&["user", &req.user_id]));
        let except = match req.except_token.as_str() {
            "" => Ok(None),
            except => session::parse_session_token(except, "except_token").map(Some),
        };
        let ((), except) = validate::all((self.settings.user_id(&req.user_id, "user_id"), except))?;
        let revoked = ctx
            .store(self.store.revoke_user(
                &ctx.tenant,
                &req.user_id,
                except.as_ref().map(|t| t.hash.as_str()),
            ))
            .await?;
        Ok(pb::RevokeUserSessionsResponse { revoked })
    }

    async fn count_user_sessions(
        &self,
        ctx: Ctx,
        req: pb::CountUserSessionsRequest,
    ) -> Result<pb::CountUserSessionsResponse, Error> {
        self.settings.user_id(&req.user_id, "user_id")?;
        let count = ctx
            .store(self.store.count(&ctx.tenant, &req.user_id))
            .await?;
        Ok(pb::CountUserSessionsResponse { count })
    }

    async fn issue_one_time_token(
        &self,
        ctx: Ctx,
        req: pb::IssueOneTimeTokenRequest,
    ) -> Result<pb::IssueOneTimeTokenResponse, Error> {
        let s = &self.settings;
        let ttl = duration_in(req.ttl.as_ref(), "ttl").and_then(|d| s.one_time_ttl(d));
        let ((), (), ttl_us) =
            validate::all((s.purpose(&req.purpose), s.subject(&req.subject), ttl))?;
        let (token, hash) = session::new_one_time_token().map_err(randomness)?;
        let expires_at = ctx
            .store(self.store.issue_one_time(
                &ctx.tenant,
                &hash,
                &req.purpose,
                &req.subject,
                ttl_us,
            ))
            .await?;
        Ok(pb::IssueOneTimeTokenResponse {
            token,
            expires_at: Some(timestamp_out(expires_at)),
        })
    }

    async fn consume_one_time_token(
        &self,
        ctx: Ctx,
        req: pb::ConsumeOneTimeTokenRequest,
    ) -> Result<pb::ConsumeOneTimeTokenResponse, Error> {
        let ((), hash) = validate::all((
            self.settings.purpose(&req.purpose),
            session::parse_one_time_token(&req.token, "token"),
        ))?;
        let subject = ctx
            .store(
                self.store
                    .consume_one_time(&ctx.tenant, &hash, &req.purpose),
            )
            .await?
            .ok_or_else(|| Error::NotFound(NO_ONE_TIME_TOKEN.to_owned()))?;
        Ok(pb::ConsumeOneTimeTokenResponse { subject })
    }
}
