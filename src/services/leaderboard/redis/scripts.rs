//! The leaderboard scripts and the keys they touch.

use std::sync::LazyLock;

use crate::keys::{self, Tenant};
use crate::services::leaderboard::model::{Definition, SortOrder};
use crate::services::leaderboard::store::Which;
use crate::services::leaderboard::{BOARD_SPACE, PERIODIC_SPACE, RECORD_SPACE};
use crate::store::redis::NamedScript;

const PRELUDE: &str = include_str!("../lua/prelude.lua");

pub(super) struct Scripts {
    pub(super) create: NamedScript,
    pub(super) update: NamedScript,
    pub(super) delete: NamedScript,
    pub(super) submit: NamedScript,
    pub(super) top: NamedScript,
    pub(super) around: NamedScript,
    pub(super) records: NamedScript,
    pub(super) delete_record: NamedScript,
}

pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    create: NamedScript::new("leaderboard.create", &[include_str!("../lua/create.lua")]),
    update: NamedScript::new("leaderboard.update", &[include_str!("../lua/update.lua")]),
    delete: NamedScript::new("leaderboard.delete", &[include_str!("../lua/delete.lua")]),
    submit: NamedScript::new(
        "leaderboard.submit",
        &[PRELUDE, include_str!("../lua/submit.lua")],
    ),
    top: NamedScript::read_only(
        "leaderboard.top",
        &[PRELUDE, include_str!("../lua/top.lua")],
    ),
    around: NamedScript::read_only(
        "leaderboard.around",
        &[PRELUDE, include_str!("../lua/around.lua")],
    ),
    records: NamedScript::read_only(
        "leaderboard.records",
        &[PRELUDE, include_str!("../lua/records.lua")],
    ),
    delete_record: NamedScript::new(
        "leaderboard.delete_record",
        &[PRELUDE, include_str!("../lua/delete_record.lua")],
    ),
});

/// How often a call re-reads a definition that changed under it.
pub(super) const ATTEMPTS: usize = 4;

pub(super) fn board_key(tenant: &Tenant, id: &str, part: &str) -> String {
    keys::key(tenant, BOARD_SPACE, id, &[part])
}

pub(super) fn periods_key(tenant: &Tenant, def: &Definition) -> String {
    keys::key(
        tenant,
        BOARD_SPACE,
        &def.id,
        &[&def.generation.to_string(), "p"],
    )
}

/// `<prefix>:<start>:z|h|n` are a period's keys.
pub(super) fn period_prefix(tenant: &Tenant, def: &Definition) -> String {
    let space = if def.reset_cron.is_empty() {
        RECORD_SPACE
    } else {
        PERIODIC_SPACE
    };
    keys::key(tenant, space, &def.id, &[&def.generation.to_string()])
}

pub(super) struct PeriodKeys {
    pub(super) z: String,
    pub(super) h: String,
    pub(super) n: String,
}

impl PeriodKeys {
    pub(super) fn of(tenant: &Tenant, def: &Definition, start: u64) -> Self {
        let p = format!("{}:{start}", period_prefix(tenant, def));
        Self {
            z: format!("{p}:z"),
            h: format!("{p}:h"),
            n: format!("{p}:n"),
        }
    }
}

pub(super) fn sort_arg(def: &Definition) -> &'static str {
    match def.sort {
        SortOrder::Descending => "desc",
        SortOrder::Ascending => "asc",
    }
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn start_of(def: &Definition, which: Which) -> u64 {
    match which {
        Which::Current => def.period_at(now_ms()).start_ms,
        Which::Started(start) => start,
    }
}
