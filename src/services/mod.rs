//! The registration list: every service of the product, one line each.
//!
//! A service is its folder here (domain, settings, handler, store trait,
//! memory and Redis stores, Lua scripts), its proto under `proto/`, its
//! tests under `tests/it/`, and one line below. Its configuration section,
//! routes, health names, metrics labels and key spaces follow from the line.

crate::services! {
    ratelimit,
    cache,
    session,
    flags,
    state,
    queue,
    leaderboard,
    topic,
    analytics,
    audit,
    #[cfg(feature = "echo")]
    echo,
}
