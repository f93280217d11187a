//! A full queue (`queue.max_messages`) on every backend: unary and batch
//! enqueues are RESOURCE_EXHAUSTED, a batch with `allow_partial` answers
//! each message on its own, and a duplicate is still answered.

use datalayer::proto::datalayer::queue::v1 as pb;
use tonic::Code;

use super::{client, enqueue, spec, stats};
use crate::harness::{Backend, spawn_app_with, timed};
use crate::invariants::fresh;

/// Room for 3: one unary enqueue, then a batch of five with
/// `allow_partial`. Two fit, two do not, and the last repeats the first
/// one's dedup id.
async fn a_full_queue_refuses_each_message_past_it(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.queue.max_messages = 3).await;
    let q = fresh("full");
    enqueue(&app, &q, spec("0")).await;
    let mut first = spec("1");
    first.dedup_id = "d1".into();
    let mut again = spec("1 again");
    again.dedup_id = "d1".into();
    let batch = |allow_partial, messages| pb::EnqueueBatchRequest {
        queue: q.clone(),
        messages,
        allow_partial,
    };
    let results = client(&app)
        .enqueue_batch(timed(batch(
            true,
            vec![first, spec("2"), spec("3"), spec("4"), again],
        )))
        .await
        .expect("a partial batch answers OK")
        .into_inner()
        .results;
    let shape: Vec<(bool, bool, bool)> = results
        .iter()
        .map(|r| (r.message_id.is_empty(), r.deduplicated, r.queue_full))
        .collect();
    assert_eq!(
        shape,
        [
            (false, false, false),
            (false, false, false),
            (true, false, true),
            (true, false, true),
            (false, true, false),
        ],
        "{results:?}"
    );
    assert_eq!(results[4].message_id, results[0].message_id);
    assert_eq!(stats(&app, &q).await.waiting, 3);

    // Without allow_partial the batch fails, and says none of it is in.
    let refused = client(&app)
        .enqueue_batch(timed(batch(false, vec![spec("5")])))
        .await
        .expect_err("a full batch fails");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("0 of this call's messages"),
        "{refused:?}"
    );
    let refused = client(&app)
        .enqueue(timed(pb::EnqueueRequest {
            queue: q.clone(),
            message: Some(spec("6")),
        }))
        .await
        .expect_err("a full enqueue fails");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(stats(&app, &q).await.waiting, 3, "nothing more got in");
}

crate::conformance!(a_full_queue_refuses_each_message_past_it);
