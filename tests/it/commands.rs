//! The operator's subcommands: `check-config` (every problem, exit 2),
//! `print-config` (effective settings, secrets redacted), `health` (exit
//! codes for probes and scripts) and `keys new`.

use std::process::{Command, Output};

use datalayer::auth::keys::sha256_hex;

use crate::harness::{Backend, spawn_app};

const BIN: &str = env!("CARGO_BIN_EXE_datalayer");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("DATALAYER_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_prints_every_problem() {
    let ok = run(&["check-config"], &[]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("configuration is valid"));
    let bad = run(
        &["check-config"],
        &[
            ("DATALAYER__REDIS__CONNECTIONS", "0"),
            ("DATALAYER__CACHE__MAX_BATCH", "0"),
        ],
    );
    assert_eq!(bad.status.code(), Some(2));
    let err = text(&bad.stderr);
    assert!(
        err.contains("redis.connections") && err.contains("cache.max_batch"),
        "{err}"
    );
}

#[test]
fn print_config_shows_settings_without_secrets() {
    let out = run(
        &["print-config"],
        &[
            ("DATALAYER__REDIS__URL", "redis://:hunter2@127.0.0.1:6379/0"),
            ("DATALAYER__CACHE__MAX_BATCH", "7"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(!printed.contains("hunter2"), "{printed}");
    let json: serde_json::Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(json["cache"]["max_batch"], 7);
    assert_eq!(json["server"]["default_timeout"], "1s");
    assert!(json["redis"]["url"].as_str().unwrap().contains("***"));
    assert!(json["auth"]["required"].is_boolean());
}

#[tokio::test]
async fn health_exits_by_status() {
    let app = spawn_app(Backend::Memory).await;
    let addr = app.addr.to_string();
    let serving = tokio::task::spawn_blocking(move || run(&["health", "--addr", &addr], &[]))
        .await
        .unwrap();
    assert!(serving.status.success(), "{}", text(&serving.stderr));
    assert!(text(&serving.stdout).contains("SERVING"));
    let addr = app.addr.to_string();
    let unknown = tokio::task::spawn_blocking(move || {
        run(
            &["health", "--addr", &addr, "--service", "no.such.Service"],
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(unknown.status.code(), Some(2), "unknown service: NOT_FOUND");
    let nobody = crate::harness::redis::free_port();
    let down = tokio::task::spawn_blocking(move || {
        run(
            &[
                "health",
                "--addr",
                &format!("127.0.0.1:{nobody}"),
                "--timeout",
                "500ms",
            ],
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(down.status.code(), Some(2));
    assert!(text(&down.stderr).contains("cannot connect"));
}

#[test]
fn keys_new_prints_a_key_and_only_its_hash_for_the_config() {
    let out = run(&["keys", "new", "--id", "bot", "--tenant", "t1"], &[]);
    assert!(out.status.success());
    let printed = text(&out.stdout);
    let key = printed
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("dlk_"))
        .expect("a key line");
    let config_line = printed.lines().find(|l| l.contains("sha256")).unwrap();
    assert!(config_line.contains(&sha256_hex(key)), "{printed}");
    assert!(!config_line.contains(key), "the entry never holds the key");
    assert!(config_line.contains("id: bot") && config_line.contains("tenant: t1"));
}
