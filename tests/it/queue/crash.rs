//! Nothing accepted is lost: the release binary's behaviour under crashes.
//! 50 consumers (half over `Consume`, acking with the unary `Ack` or on the
//! stream itself, half over `Lease`) work a queue
//! while some of them crash mid-job, Redis (AOF, `appendfsync always`) is
//! killed with SIGKILL and restarted, and the service is killed with
//! SIGKILL and restarted. At the end every accepted message is acked or
//! dead, and no message was acked under two different leases.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datalayer::proto::datalayer::queue::v1::{
    self as pb, queue_service_client::QueueServiceClient,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::{RedisServer, pb_duration, redis::free_port, unique_namespace};

const BIN: &str = env!("CARGO_BIN_EXE_datalayer");
const QUEUE: &str = "crash";
const MESSAGES: usize = 600;
/// A job's work: long enough that jobs are in flight through every crash.
const WORK: Duration = Duration::from_millis(30);

/// The service process; killed when dropped (a failing test leaves none).
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn service(port: u16, redis: &str, namespace: &str) -> Service {
    let child = Command::new(BIN)
        .env_remove("RUST_LOG")
        .env("DATALAYER__SERVER__ADDR", format!("127.0.0.1:{port}"))
        .env("DATALAYER__METRICS__ADDR", "127.0.0.1:0")
        .env("DATALAYER__REDIS__URL", redis)
        .env("DATALAYER__KEYS__NAMESPACE", namespace)
        .env("DATALAYER__REDIS__COMMAND_TIMEOUT", "500ms")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    Service(child)
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(Duration::from_secs(2));
    r
}

type Acks = Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>;

/// Acks until it is answered: a repeated ack of one lease is fine, so an
/// ack whose answer was lost in a crash is retried. False: lease lost.
async fn ack(c: &mut QueueServiceClient<Channel>, m: &pb::Message, acks: &Acks) -> bool {
    for _ in 0..100 {
        let answer = c
            .ack(request(pb::AckRequest {
                queue: QUEUE.into(),
                message_id: m.message_id.clone(),
                lease_token: m.lease_token.clone(),
            }))
            .await;
        match answer {
            Ok(_) => {
                let mut acks = acks.lock().unwrap();
                acks.entry(m.message_id.clone())
                    .or_default()
                    .insert(m.lease_token.clone());
                return true;
            }
            Err(e) if e.code() == Code::FailedPrecondition => return false,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    false
}

/// Crash roughly one job in ten: take it and never answer.
fn crashes(n: &AtomicU64) -> bool {
    n.fetch_add(1, Ordering::Relaxed) % 10 == 7
}

async fn lease_consumer(
    mut c: QueueServiceClient<Channel>,
    acks: Acks,
    stop: Arc<AtomicBool>,
    jobs: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let got = c
            .lease(request(pb::LeaseRequest {
                queue: QUEUE.into(),
                max_messages: 5,
                wait: Some(pb_duration(Duration::from_millis(300))),
                ..Default::default()
            }))
            .await;
        let Ok(got) = got else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        for m in got.into_inner().messages {
            if !crashes(&jobs) {
                tokio::time::sleep(WORK).await;
                ack(&mut c, &m, &acks).await;
            }
        }
    }
}

async fn stream_consumer(
    mut c: QueueServiceClient<Channel>,
    acks: Acks,
    stop: Arc<AtomicBool>,
    jobs: Arc<AtomicU64>,
    ack_on_stream: bool,
) {
    while !stop.load(Ordering::Relaxed) {
        let (tx, rx) = mpsc::channel(16);
        let start = pb::ConsumeRequest {
            kind: Some(pb::consume_request::Kind::Start(
                pb::consume_request::Start {
                    queue: QUEUE.into(),
                    credits: 3,
                    lease_duration: None,
                },
            )),
        };
        if tx.send(start).await.is_err() {
            continue;
        }
        let Ok(stream) = c.consume(ReceiverStream::new(rx)).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        // Acked on the stream, their answers not yet seen.
        let mut outstanding: BTreeMap<String, pb::Message> = BTreeMap::new();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(Some(Ok(item))) = next else {
                if matches!(next, Ok(None) | Ok(Some(Err(_)))) {
                    break;
                }
                continue;
            };
            if let Some(acked) = item.acked {
                if let Some(m) = outstanding.remove(&acked.message_id) {
                    if acked.ok {
                        acks.lock()
                            .unwrap()
                            .entry(m.message_id.clone())
                            .or_default()
                            .insert(m.lease_token.clone());
                    } else if acked.code != Code::FailedPrecondition as i32 {
                        // Not applied (Redis down): ack again, unary.
                        ack(&mut c, &m, &acks).await;
                    }
                }
                continue;
            }
            let Some(m) = item.message else { continue };
            if crashes(&jobs) {
                // The consumer dies: its stream and unacked message go.
                break;
            }
            if ack_on_stream {
                tokio::time::sleep(WORK).await;
                outstanding.insert(m.message_id.clone(), m.clone());
                let _ = tx
                    .send(pb::ConsumeRequest {
                        kind: Some(pb::consume_request::Kind::Ack(
                            pb::consume_request::Settle {
                                message_id: m.message_id.clone(),
                                lease_token: m.lease_token.clone(),
                            },
                        )),
                    })
                    .await;
                continue;
            }
            ack(&mut c, &m, &acks).await;
            let _ = tx
                .send(pb::ConsumeRequest {
                    kind: Some(pb::consume_request::Kind::Credit(1)),
                })
                .await;
        }
        // The stream broke with acks unanswered: they may or may not have
        // been applied, and acks of one lease are idempotent, so ack again.
        for m in std::mem::take(&mut outstanding).into_values() {
            ack(&mut c, &m, &acks).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_accepted_is_lost_through_crashes() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let (port, namespace) = (free_port(), unique_namespace("crash"));
    let svc = service(port, &redis.url(), &namespace);
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy();
    let mut c = QueueServiceClient::new(channel.clone());

    let mut accepted = BTreeSet::new();
    let mut next = 0;
    let started = Instant::now();
    while next < MESSAGES {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the service never took the messages"
        );
        let messages: Vec<pb::MessageSpec> = (next..(next + 50).min(MESSAGES))
            .map(|i| pb::MessageSpec {
                payload: format!("job-{i}").into_bytes(),
                max_attempts: 50,
                lease_duration: Some(pb_duration(Duration::from_secs(1))),
                backoff: Some(pb::Backoff {
                    kind: Some(pb::backoff::Kind::Fixed(pb_duration(
                        Duration::from_millis(100),
                    ))),
                }),
                ..Default::default()
            })
            .collect();
        let n = messages.len();
        match c
            .enqueue_batch(request(pb::EnqueueBatchRequest {
                queue: QUEUE.into(),
                messages,
                allow_partial: false,
            }))
            .await
        {
            Ok(done) => {
                accepted.extend(done.into_inner().results.into_iter().map(|r| r.message_id));
                next += n;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }

    let acks: Acks = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let jobs = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for i in 0..50 {
        let (c, acks, stop, jobs) = (
            QueueServiceClient::new(channel.clone()),
            acks.clone(),
            stop.clone(),
            jobs.clone(),
        );
        consumers.push(if i % 2 == 0 {
            tokio::spawn(lease_consumer(c, acks, stop, jobs))
        } else {
            tokio::spawn(stream_consumer(c, acks, stop, jobs, i % 4 == 1))
        });
    }

    // More messages arrive through the crashes; those accepted count.
    let producer = {
        let mut c = QueueServiceClient::new(channel.clone());
        tokio::spawn(async move {
            let mut accepted = BTreeSet::new();
            let until = Instant::now() + Duration::from_millis(3500);
            let mut i = 0;
            while Instant::now() < until {
                let messages: Vec<pb::MessageSpec> = (0..10)
                    .map(|_| {
                        i += 1;
                        pb::MessageSpec {
                            payload: format!("late-{i}").into_bytes(),
                            max_attempts: 50,
                            lease_duration: Some(pb_duration(Duration::from_secs(1))),
                            ..Default::default()
                        }
                    })
                    .collect();
                if let Ok(done) = c
                    .enqueue_batch(request(pb::EnqueueBatchRequest {
                        queue: QUEUE.into(),
                        messages,
                        allow_partial: false,
                    }))
                    .await
                {
                    accepted.extend(done.into_inner().results.into_iter().map(|r| r.message_id));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            accepted
        })
    };

    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.restart();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // SIGKILL, as a crash: Drop kills and reaps it.
    drop(svc);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let svc = service(port, &redis.url(), &namespace);

    accepted.extend(producer.await.unwrap());
    // Until every accepted message is acked or dead.
    let deadline = Instant::now() + Duration::from_secs(90);
    let dead_ids = loop {
        let mut dead = BTreeSet::new();
        if let Ok(listed) = c
            .list_dead(request(pb::ListDeadRequest {
                queue: QUEUE.into(),
                limit: 1000,
                cursor: String::new(),
            }))
            .await
        {
            dead.extend(
                listed
                    .into_inner()
                    .messages
                    .into_iter()
                    .filter_map(|d| d.message.map(|m| m.message_id)),
            );
        }
        let acked: BTreeSet<String> = acks.lock().unwrap().keys().cloned().collect();
        if accepted
            .iter()
            .all(|id| acked.contains(id) || dead.contains(id))
        {
            break dead;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted messages are neither acked nor dead",
            accepted
                .iter()
                .filter(|id| !acked.contains(*id) && !dead.contains(*id))
                .count(),
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for consumer in consumers {
        let _ = consumer.await;
    }
    let acks = acks.lock().unwrap();
    for (id, tokens) in acks.iter() {
        assert_eq!(
            tokens.len(),
            1,
            "message {id} acked under two leases: {tokens:?}"
        );
    }
    let crashed = jobs.load(Ordering::Relaxed) / 10;
    println!(
        "{} accepted, {} acked, {} dead, about {crashed} jobs crashed",
        accepted.len(),
        acks.len(),
        dead_ids.len()
    );
    drop(svc);
}
