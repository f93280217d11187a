//! Watch: every change of a collection, in order, on memory, Redis and a
//! cluster; a watcher that falls behind the log is told so.

use std::time::Duration;

use datalayer::proto::datalayer::state::v1 as pb;
use futures::StreamExt;
use serde_json::json;
use tonic::Code;

use super::{client, patch_req, put, put_req};
use crate::harness::{Backend, TestApp, spawn_app, spawn_app_with, timed};

async fn watch(
    app: &TestApp,
    collection: &str,
    prefix: &str,
) -> tonic::Streaming<pb::WatchResponse> {
    client(app)
        .watch(pb::WatchRequest {
            collection: collection.into(),
            prefix: prefix.into(),
        })
        .await
        .expect("watch opens")
        .into_inner()
}

async fn next(stream: &mut tonic::Streaming<pb::WatchResponse>) -> pb::WatchResponse {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a change within 5 s")
        .expect("the stream goes on")
        .expect("a change, not an error")
}

/// Puts, patches and deletes arrive in the order they were made, with the
/// version each made; a prefix narrows the stream.
async fn watch_delivers_every_change_in_order(backend: Backend) {
    let app = spawn_app(backend).await;
    put(&app, put_req("w", "before", b"{}")).await;
    let mut all = watch(&app, "w", "").await;
    let mut only_a = watch(&app, "w", "a:").await;
    let mut c = client(&app);
    let mut expected = Vec::new();
    for i in 0..30 {
        let key = format!("{}:{}", if i % 2 == 0 { "a" } else { "b" }, i % 4);
        let change = match i % 3 {
            0 => {
                let v = put(&app, put_req("w", &key, b"{}")).await.version;
                (key, pb::ChangeType::Put, v)
            }
            1 => {
                let r = c
                    .patch(timed(patch_req("w", &key, json!({ "i": i }))))
                    .await
                    .unwrap();
                (
                    key,
                    pb::ChangeType::Patch,
                    r.into_inner().document.unwrap().version,
                )
            }
            _ => {
                let gone = c
                    .delete(timed(pb::DeleteRequest {
                        collection: "w".into(),
                        key: key.clone(),
                        expected_version: None,
                    }))
                    .await
                    .unwrap()
                    .into_inner()
                    .deleted;
                if !gone {
                    continue;
                }
                (key, pb::ChangeType::Delete, 0)
            }
        };
        expected.push(change);
    }
    for (key, kind, version) in &expected {
        let got = next(&mut all).await;
        assert_eq!(
            (&got.key, got.r#type, got.version),
            (key, *kind as i32, *version)
        );
    }
    for (key, kind, version) in expected.iter().filter(|(k, _, _)| k.starts_with("a:")) {
        let got = next(&mut only_a).await;
        assert_eq!(
            (&got.key, got.r#type, got.version),
            (key, *kind as i32, *version)
        );
    }
}

/// A watcher further behind than the log keeps gets RESOURCE_EXHAUSTED,
/// never a stream with changes silently missing.
async fn a_watcher_behind_the_log_is_told(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.state.max_log_entries = 100;
        s.state.watch_poll_interval = Duration::from_secs(2);
    })
    .await;
    let mut stream = watch(&app, "behind", "").await;
    // The first read finds nothing; the next is 2 s later, after 400 writes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..400 {
        put(&app, put_req("behind", &format!("k{i}"), b"1")).await;
    }
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an answer")
        .expect("an item");
    let status = end.expect_err("the watcher is told it fell behind");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("state.max_log_entries"));
}

crate::conformance!(
    watch_delivers_every_change_in_order,
    a_watcher_behind_the_log_is_told
);
