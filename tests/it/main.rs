//! The one integration-test binary: every suite shares one `redis-server`
//! and one 3-master cluster per run (tests isolate themselves by
//! namespace); tests that kill, freeze or fill Redis start their own.
//!
//! * [`harness`]: the servers, the app on port 0, the conformance macro;
//! * [`invariants`]: what every registered service must uphold, run for
//!   each through the registration list;
//! * one module per service, then the server as a whole.

#[macro_use]
mod harness;

mod analytics;
mod audit;
mod auth;
mod cache;
mod cli;
mod cluster;
mod commands;
mod config;
#[cfg(feature = "echo")]
mod echo;
mod flags;
mod fuzz;
mod hardening;
mod invariants;
mod layout;
mod leaderboard;
mod metrics;
mod queue;
mod ratelimit;
mod server;
mod session;
mod state;
mod telemetry;
mod tls;
mod topic;
