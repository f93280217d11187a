//! `datalayer.v1.SessionService`: parse (validate) → apply (store) → map.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::error::{Error, Violations};
use crate::methods;
use crate::proto::{
    self, ConsumeOneTimeTokenRequest, ConsumeOneTimeTokenResponse, CountUserSessionsRequest,
    CountUserSessionsResponse, CreateSessionRequest, CreateSessionResponse, GetSessionRequest,
    GetSessionResponse, IssueOneTimeTokenRequest, IssueOneTimeTokenResponse,
    ListUserSessionsRequest, ListUserSessionsResponse, RevokeSessionRequest, RevokeSessionResponse,
    RevokeUserSessionsRequest, RevokeUserSessionsResponse, RotateSessionRequest,
    RotateSessionResponse, TouchSessionRequest, TouchSessionResponse, UpdateSessionRequest,
    UpdateSessionResponse, session_service_server::SessionService,
};
use crate::rpc::{self, Deadlines};
use crate::services::to_duration;
use crate::session::{
    self, Bounds, CreateOutcome, DataUpdate, NewSession, OnLimit, SessionRecord, TokenRef,
    UpdateOutcome,
};
use crate::store::SessionStore;

methods!("datalayer.v1.SessionService":
    CREATE = "CreateSession",
    GET = "GetSession",
    UPDATE = "UpdateSession",
    TOUCH = "TouchSession",
    ROTATE = "RotateSession",
    REVOKE = "RevokeSession",
    LIST = "ListUserSessions",
    REVOKE_USER = "RevokeUserSessions",
    COUNT = "CountUserSessions",
    ISSUE_ONE_TIME = "IssueOneTimeToken",
    CONSUME_ONE_TIME = "ConsumeOneTimeToken",
);

const NO_SESSION: &str = "no such session: the token is unknown, expired or revoked";

pub struct SessionHandler {
    store: Arc<dyn SessionStore>,
    bounds: Bounds,
    deadlines: Deadlines,
}

fn randomness(e: getrandom::Error) -> Error {
    Error::Internal(format!("no randomness for a token: {e}"))
}

fn timestamp(us: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (us / 1_000_000) as i64,
        nanos: ((us % 1_000_000) * 1_000) as i32,
    }
}

fn to_proto(s: SessionRecord) -> proto::Session {
    proto::Session {
        expires_at: Some(timestamp(s.expires_at_us())),
        session_id: s.session_id,
        user_id: s.user_id,
        data: s.data.into_iter().collect(),
        version: s.version,
        created_at: Some(timestamp(s.created_us)),
        last_seen_at: Some(timestamp(s.last_seen_us)),
        absolute_expires_at: Some(timestamp(s.absolute_at_us)),
        client_ip: s.client_ip,
        user_agent: s.user_agent,
    }
}

fn found(session: Option<SessionRecord>) -> Result<SessionRecord, Error> {
    session.ok_or_else(|| Error::NotFound(NO_SESSION.to_owned()))
}

impl SessionHandler {
    pub fn new(store: Arc<dyn SessionStore>, bounds: Bounds, deadlines: Deadlines) -> Self {
        Self {
            store,
            bounds,
            deadlines,
        }
    }

    fn token(&self, token: &str) -> Result<TokenRef, Error> {
        Ok(session::parse_session_token(token, "token")?)
    }

    /// A validated session and its new token (the only copy of the secret).
    fn parse_create(&self, req: CreateSessionRequest) -> Result<(String, NewSession), Error> {
        let b = &self.bounds;
        let mut bad = Violations::default();
        bad.check(b.user_id(&req.user_id, "user_id"));
        let data = req.data.into_iter().collect();
        bad.check(b.data(&data, "data"));
        bad.check(b.client_ip(&req.client_ip));
        bad.check(b.user_agent(&req.user_agent));
        let idle = bad
            .check(to_duration(req.idle_ttl.as_ref(), "idle_ttl"))
            .and_then(|d| {
                bad.check(b.ttl(
                    d,
                    Some(b.default_idle_ttl),
                    b.max_absolute_ttl,
                    "session.max_absolute_ttl",
                    "idle_ttl",
                ))
            });
        let absolute = bad
            .check(to_duration(req.absolute_ttl.as_ref(), "absolute_ttl"))
            .and_then(|d| {
                bad.check(b.ttl(
                    d,
                    Some(b.default_absolute_ttl),
                    b.max_absolute_ttl,
                    "session.max_absolute_ttl",
                    "absolute_ttl",
                ))
            });
        if req.max_sessions_per_user > b.max_sessions_per_user {
            bad.push(
                "max_sessions_per_user",
                format!(
                    "must be at most {} (session.max_sessions_per_user)",
                    b.max_sessions_per_user
                ),
            );
        }
        let on_limit = match proto::OnSessionLimit::try_from(req.on_limit) {
            Ok(proto::OnSessionLimit::Reject) => OnLimit::Reject,
            Ok(_) => OnLimit::EvictOldest,
            Err(_) => {
                bad.push(
                    "on_limit",
                    format!("unknown OnSessionLimit {}", req.on_limit),
                );
                OnLimit::EvictOldest
            }
        };
        bad.finish()?;
        let (Some(idle_us), Some(absolute_us)) = (idle, absolute) else {
            return Err(Error::Internal("validated TTLs missing".to_owned()));
        };
        let (token, reference) = session::new_session_token(&req.user_id).map_err(randomness)?;
        let new = NewSession {
            token: reference,
            session_id: session::new_session_id().map_err(randomness)?,
            user_id: req.user_id,
            data,
            idle_us,
            absolute_us,
            max_sessions: match req.max_sessions_per_user {
                0 => b.max_sessions_per_user,
                n => n,
            },
            on_limit,
            client_ip: req.client_ip,
            user_agent: req.user_agent,
        };
        Ok((token, new))
    }
}

#[tonic::async_trait]
impl SessionService for SessionHandler {
    async fn create_session(
        &self,
        request: Request<CreateSessionRequest>,
    ) -> Result<Response<CreateSessionResponse>, Status> {
        rpc::serve(&CREATE, self.deadlines, request, |req, call| async move {
            let (token, new) = self.parse_create(req)?;
            match call.store(self.store.create(&new)).await? {
                CreateOutcome::Created {
                    session,
                    evicted_session_ids,
                } => Ok(CreateSessionResponse {
                    token,
                    session: Some(to_proto(session)),
                    evicted_session_ids,
                }),
                CreateOutcome::LimitReached => Err(Error::FailedPrecondition(format!(
                    "user already has {} live sessions (on_limit = REJECT)",
                    new.max_sessions
                ))),
            }
        })
        .await
    }

    async fn get_session(
        &self,
        request: Request<GetSessionRequest>,
    ) -> Result<Response<GetSessionResponse>, Status> {
        rpc::serve(&GET, self.deadlines, request, |req, call| async move {
            let token = self.token(&req.token)?;
            let session = found(call.store(self.store.get(&token, req.touch)).await?)?;
            Ok(GetSessionResponse {
                session: Some(to_proto(session)),
            })
        })
        .await
    }

    async fn update_session(
        &self,
        request: Request<UpdateSessionRequest>,
    ) -> Result<Response<UpdateSessionResponse>, Status> {
        rpc::serve(&UPDATE, self.deadlines, request, |req, call| async move {
            let mut bad = Violations::default();
            let token = bad.check(session::parse_session_token(&req.token, "token"));
            let data = req.data.into_iter().collect();
            bad.check(self.bounds.data(&data, "data"));
            bad.check(crate::error::expected_version(
                req.expected_version,
                "expected_version",
            ));
            let update = match proto::UpdateMode::try_from(req.mode) {
                Ok(proto::UpdateMode::Replace) => {
                    if !req.remove_keys.is_empty() {
                        bad.push("remove_keys", "only with mode MERGE");
                    }
                    DataUpdate::Replace(data)
                }
                Ok(_) => DataUpdate::Merge {
                    set: data,
                    remove: req.remove_keys,
                },
                Err(_) => {
                    bad.push("mode", format!("unknown UpdateMode {}", req.mode));
                    DataUpdate::Replace(data)
                }
            };
            bad.finish()?;
            let token = token.ok_or_else(|| Error::Internal("token checked".to_owned()))?;
            let outcome = call
                .store(self.store.update(
                    &token,
                    &update,
                    req.expected_version,
                    self.bounds.max_data_bytes,
                ))
                .await?
                .ok_or_else(|| Error::NotFound(NO_SESSION.to_owned()))?;
            match outcome {
                UpdateOutcome::Updated(s) => Ok(UpdateSessionResponse {
                    updated: true,
                    session: Some(to_proto(s)),
                }),
                UpdateOutcome::VersionMismatch(s) => Ok(UpdateSessionResponse {
                    updated: false,
                    session: Some(to_proto(s)),
                }),
                UpdateOutcome::TooLarge => Err(Error::invalid(
                    "data",
                    format!(
                        "the merged data would exceed {} bytes (session.max_data_bytes)",
                        self.bounds.max_data_bytes
                    ),
                )),
            }
        })
        .await
    }

    async fn touch_session(
        &self,
        request: Request<TouchSessionRequest>,
    ) -> Result<Response<TouchSessionResponse>, Status> {
        rpc::serve(&TOUCH, self.deadlines, request, |req, call| async move {
            let token = self.token(&req.token)?;
            let session = found(call.store(self.store.get(&token, true)).await?)?;
            Ok(TouchSessionResponse {
                expires_at: Some(timestamp(session.expires_at_us())),
            })
        })
        .await
    }

    async fn rotate_session(
        &self,
        request: Request<RotateSessionRequest>,
    ) -> Result<Response<RotateSessionResponse>, Status> {
        rpc::serve(&ROTATE, self.deadlines, request, |req, call| async move {
            let old = self.token(&req.token)?;
            // Same user tag: the session stays in its user's slot.
            let secret = session::new_one_time_token().map_err(randomness)?.0;
            let token = format!("{}{secret}", old.user_tag);
            let new = session::parse_session_token(&token, "token")
                .map_err(|v| Error::Internal(v.description))?;
            let session = found(call.store(self.store.rotate(&old, &new)).await?)?;
            Ok(RotateSessionResponse {
                token,
                session: Some(to_proto(session)),
            })
        })
        .await
    }

    async fn revoke_session(
        &self,
        request: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionResponse>, Status> {
        rpc::serve(&REVOKE, self.deadlines, request, |req, call| async move {
            let token = self.token(&req.token)?;
            let revoked = call.store(self.store.revoke(&token)).await?;
            Ok(RevokeSessionResponse { revoked })
        })
        .await
    }

    async fn list_user_sessions(
        &self,
        request: Request<ListUserSessionsRequest>,
    ) -> Result<Response<ListUserSessionsResponse>, Status> {
        rpc::serve(&LIST, self.deadlines, request, |req, call| async move {
            self.bounds.user_id(&req.user_id, "user_id")?;
            let tag = session::user_tag(&req.user_id);
            let sessions = call.store(self.store.list(&tag, &req.user_id)).await?;
            Ok(ListUserSessionsResponse {
                sessions: sessions.into_iter().map(to_proto).collect(),
            })
        })
        .await
    }

    async fn revoke_user_sessions(
        &self,
        request: Request<RevokeUserSessionsRequest>,
    ) -> Result<Response<RevokeUserSessionsResponse>, Status> {
        rpc::serve(
            &REVOKE_USER,
            self.deadlines,
            request,
            |req, call| async move {
                let mut bad = Violations::default();
                bad.check(self.bounds.user_id(&req.user_id, "user_id"));
                let except = if req.except_token.is_empty() {
                    None
                } else {
                    bad.check(session::parse_session_token(
                        &req.except_token,
                        "except_token",
                    ))
                };
                bad.finish()?;
                let tag = session::user_tag(&req.user_id);
                let revoked = call
                    .store(self.store.revoke_user(
                        &tag,
                        &req.user_id,
                        except.as_ref().map(|t| t.hash.as_str()),
                    ))
                    .await?;
                Ok(RevokeUserSessionsResponse { revoked })
            },
        )
        .await
    }

    async fn count_user_sessions(
        &self,
        request: Request<CountUserSessionsRequest>,
    ) -> Result<Response<CountUserSessionsResponse>, Status> {
        rpc::serve(&COUNT, self.deadlines, request, |req, call| async move {
            self.bounds.user_id(&req.user_id, "user_id")?;
            let tag = session::user_tag(&req.user_id);
            let count = call.store(self.store.count(&tag, &req.user_id)).await?;
            Ok(CountUserSessionsResponse { count })
        })
        .await
    }

    async fn issue_one_time_token(
        &self,
        request: Request<IssueOneTimeTokenRequest>,
    ) -> Result<Response<IssueOneTimeTokenResponse>, Status> {
        rpc::serve(
            &ISSUE_ONE_TIME,
            self.deadlines,
            request,
            |req, call| async move {
                let b = &self.bounds;
                let mut bad = Violations::default();
                bad.check(b.purpose(&req.purpose));
                bad.check(b.subject(&req.subject));
                let ttl = bad
                    .check(to_duration(req.ttl.as_ref(), "ttl"))
                    .and_then(|d| {
                        bad.check(b.ttl(
                            d,
                            None,
                            b.max_one_time_ttl,
                            "session.max_one_time_ttl",
                            "ttl",
                        ))
                    });
                bad.finish()?;
                let ttl_us = ttl.ok_or_else(|| Error::Internal("ttl checked".to_owned()))?;
                let (token, hash) = session::new_one_time_token().map_err(randomness)?;
                let expires_at = call
                    .store(
                        self.store
                            .issue_one_time(&hash, &req.purpose, &req.subject, ttl_us),
                    )
                    .await?;
                Ok(IssueOneTimeTokenResponse {
                    token,
                    expires_at: Some(timestamp(expires_at)),
                })
            },
        )
        .await
    }

    async fn consume_one_time_token(
        &self,
        request: Request<ConsumeOneTimeTokenRequest>,
    ) -> Result<Response<ConsumeOneTimeTokenResponse>, Status> {
        rpc::serve(&CONSUME_ONE_TIME, self.deadlines, request, |req, call| async move {
            let mut bad = Violations::default();
            bad.check(self.bounds.purpose(&req.purpose));
            let hash = bad.check(session::parse_one_time_token(&req.token, "token"));
            bad.finish()?;
            let hash = hash.ok_or_else(|| Error::Internal("token checked".to_owned()))?;
            let subject = call
                .store(self.store.consume_one_time(&hash, &req.purpose))
                .await?
                .ok_or_else(|| {
                    Error::NotFound(
                        "no such one-time token: unknown, expired, already used, or for another purpose"
                            .to_owned(),
                    )
                })?;
            Ok(ConsumeOneTimeTokenResponse { subject })
        })
        .await
    }
}
