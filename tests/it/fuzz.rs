//! Bounded fuzzing of every RPC of every registered service, from the
//! descriptors the binary serves: random messages shaped by each request
//! type (every field, every wire type, odd values: huge, negative, empty,
//! invalid UTF-8), then mutated (bytes flipped, cut short, junk appended),
//! sent raw on both stores. Whatever arrives, the answer is never INTERNAL
//! or UNKNOWN, and the service keeps serving. A new service is fuzzed by
//! being registered. The seed is printed, so a failure can be replayed
//! with `DATALAYER_FUZZ_SEED=<seed>`.

use std::collections::HashMap;

use prost::Message;
use prost_types::{DescriptorProto, FieldDescriptorProto, field_descriptor_proto::Type};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::harness::{Backend, raw, spawn_app};

/// Cases per method and store.
const CASES: usize = 150;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn odd_number(rng: &mut Rng) -> u64 {
    match rng.below(9) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => i64::MIN as u64,
        4 => 1 << 53,
        5 => (1 << 53) + 1,
        6 => rng.below(1000),
        7 => u32::MAX as u64,
        _ => rng.next(),
    }
}

fn odd_text(rng: &mut Rng) -> Vec<u8> {
    match rng.below(8) {
        0 => Vec::new(),
        1 => vec![b'a'; 5000 + rng.below(20_000) as usize],
        2 => vec![0xff, 0xfe, b'x'],
        3 => "\u{0}\u{1b}[31m\n\t{}%".as_bytes().to_vec(),
        4 => "ünïcödé 🚀".as_bytes().to_vec(),
        5 => b"policy".to_vec(),
        _ => (0..rng.below(80))
            .map(|_| b"abcdefghij:{}-_.0123456789"[rng.below(26) as usize])
            .collect(),
    }
}

struct Schema {
    messages: HashMap<String, DescriptorProto>,
}

impl Schema {
    fn load() -> Self {
        let set = prost_types::FileDescriptorSet::decode(datalayer::proto::FILE_DESCRIPTOR_SET)
            .expect("the served descriptor set");
        let mut messages = HashMap::new();
        for file in set.file {
            let scope = format!(".{}", file.package());
            for message in file.message_type {
                collect(&scope, message, &mut messages);
            }
        }
        Self { messages }
    }

    fn message(&self, name: &str, depth: u32, rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        let Some(message) = self.messages.get(name) else {
            out.extend(odd_text(rng));
            return out;
        };
        for field in &message.field {
            if !rng.chance(70) {
                continue;
            }
            let times = if field.label() == prost_types::field_descriptor_proto::Label::Repeated {
                rng.below(4)
            } else {
                1
            };
            for _ in 0..times {
                self.field(field, depth, rng, &mut out);
            }
        }
        if rng.chance(10) {
            // An unknown field, sometimes of a wire type no field has.
            varint(
                (u64::from(rng.below(2000) as u32) << 3) | rng.below(6),
                &mut out,
            );
            varint(rng.below(50), &mut out);
        }
        out
    }

    fn field(&self, f: &FieldDescriptorProto, depth: u32, rng: &mut Rng, out: &mut Vec<u8>) {
        let number = u64::from(f.number() as u32);
        match f.r#type() {
            Type::Double | Type::Fixed64 | Type::Sfixed64 => {
                varint((number << 3) | 1, out);
                out.extend(odd_number(rng).to_le_bytes());
            }
            Type::Float | Type::Fixed32 | Type::Sfixed32 => {
                varint((number << 3) | 5, out);
                out.extend((odd_number(rng) as u32).to_le_bytes());
            }
            Type::String | Type::Bytes => {
                varint((number << 3) | 2, out);
                let text = odd_text(rng);
                varint(text.len() as u64, out);
                out.extend(text);
            }
            Type::Message | Type::Group => {
                varint((number << 3) | 2, out);
                let inner = if depth < 4 {
                    self.message(f.type_name(), depth + 1, rng)
                } else {
                    Vec::new()
                };
                varint(inner.len() as u64, out);
                out.extend(inner);
            }
            _ => {
                varint(number << 3, out);
                varint(odd_number(rng), out);
            }
        }
    }
}

fn collect(scope: &str, message: DescriptorProto, into: &mut HashMap<String, DescriptorProto>) {
    let name = format!("{scope}.{}", message.name());
    for nested in message.nested_type.clone() {
        collect(&name, nested, into);
    }
    into.insert(name, message);
}

fn mutate(mut bytes: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    match rng.below(5) {
        0 if !bytes.is_empty() => {
            for _ in 0..=rng.below(4) {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
        }
        1 if !bytes.is_empty() => bytes.truncate(rng.below(bytes.len() as u64) as usize),
        2 => bytes.extend((0..rng.below(20)).map(|_| rng.next() as u8)),
        _ => {}
    }
    bytes
}

/// `(path, request type, server streaming)` of every method of every
/// `datalayer.*` service.
fn methods() -> Vec<(String, String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(datalayer::proto::FILE_DESCRIPTOR_SET)
        .expect("the served descriptor set");
    let mut methods = Vec::new();
    for file in set.file {
        if !file.package().starts_with("datalayer.") {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                methods.push((
                    format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                    method.input_type().to_owned(),
                    method.server_streaming(),
                ));
            }
        }
    }
    methods
}

async fn fuzz(backend: Backend) {
    let seed = std::env::var("DATALAYER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            u64::from_str_radix(&datalayer::random::hex(8).unwrap(), 16).unwrap() | 1
        });
    println!("fuzz seed {seed} ({backend:?})");
    let mut rng = Rng(seed);
    let schema = Schema::load();
    let app = spawn_app(backend).await;
    let client = raw::Raw::connect(app.addr).await;
    let methods = methods();
    assert!(
        methods.len() >= 21,
        "every service's methods: {}",
        methods.len()
    );
    let mut sent = 0;
    for (path, input, streaming) in &methods {
        // A stream is cut off by its deadline: keep that short.
        let timeout = if *streaming { "200m" } else { "2S" };
        let calls = (0..CASES).map(|_| {
            let mut message = schema.message(input, 0, &mut rng);
            if rng.chance(30) {
                message = mutate(message, &mut rng);
            }
            let mut client = client.clone();
            let path = path.clone();
            async move {
                let answer = client
                    .call(
                        &path,
                        &[("grpc-timeout", timeout)],
                        raw::frame(false, &message),
                    )
                    .await;
                (message, answer)
            }
        });
        for (message, answer) in futures::future::join_all(calls).await {
            sent += 1;
            assert_eq!(answer.http, 200, "seed {seed} {path}: {answer:?}");
            assert!(
                !matches!(answer.grpc_status, Some(2) | Some(13) | None),
                "seed {seed} {path}: {answer:?} for {message:02x?}"
            );
        }
    }
    println!("fuzz: {sent} calls, none INTERNAL, UNKNOWN or unanswered");
    assert_eq!(app.health_status("").await, ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_on_memory() {
    fuzz(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_on_redis() {
    fuzz(Backend::Redis).await;
}
