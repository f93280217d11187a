//! The queue's scripts, each the prelude (`lua/prelude.lua`) and its body.

use std::sync::LazyLock;

use crate::store::redis::NamedScript;

const PRELUDE: &str = include_str!("../lua/prelude.lua");

pub(super) struct Scripts {
    pub enqueue: NamedScript,
    pub lease: NamedScript,
    pub ack: NamedScript,
    pub nack: NamedScript,
    pub extend: NamedScript,
    pub cancel: NamedScript,
    pub list_dead: NamedScript,
    pub redrive: NamedScript,
    pub purge: NamedScript,
    pub stats: NamedScript,
    pub schedule_put: NamedScript,
    pub schedule_delete: NamedScript,
    pub schedule_list: NamedScript,
    pub fire: NamedScript,
    pub give_back: NamedScript,
}

pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let w = |name, body| NamedScript::new(name, &[PRELUDE, body]);
    let r = |name, body| NamedScript::read_only(name, &[PRELUDE, body]);
    Scripts {
        enqueue: w("queue.enqueue", include_str!("../lua/enqueue.lua")),
        lease: w("queue.lease", include_str!("../lua/lease.lua")),
        ack: w("queue.ack", include_str!("../lua/ack.lua")),
        nack: w("queue.nack", include_str!("../lua/nack.lua")),
        extend: w("queue.extend", include_str!("../lua/extend.lua")),
        cancel: w("queue.cancel", include_str!("../lua/cancel.lua")),
        list_dead: r("queue.list_dead", include_str!("../lua/list_dead.lua")),
        redrive: w("queue.redrive", include_str!("../lua/redrive.lua")),
        purge: w("queue.purge", include_str!("../lua/purge.lua")),
        stats: r("queue.stats", include_str!("../lua/stats.lua")),
        schedule_put: w(
            "queue.schedule_put",
            include_str!("../lua/schedule_put.lua"),
        ),
        schedule_delete: w(
            "queue.schedule_delete",
            include_str!("../lua/schedule_delete.lua"),
        ),
        schedule_list: r(
            "queue.schedule_list",
            include_str!("../lua/schedule_list.lua"),
        ),
        fire: w("queue.fire", include_str!("../lua/fire.lua")),
        give_back: w("queue.give_back", include_str!("../lua/give_back.lua")),
    }
});
