//! The reference API's storage on a file: another process holding the write lock makes writes
//! answer 503 with `Retry-After` while reads go on; files are created owner-only.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, TempDir};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_lock_held_elsewhere_is_a_503_and_reads_do_not_wait() {
    let dir = TempDir::new();
    let api = Api::on_file(&dir.db()).await;
    let created = api
        .send("POST", "/v1/chatbots", Some(json!({"name": "Before"})))
        .await;
    assert_eq!(created.status, 201);
    let path = format!("/v1/chatbots/{}", created.body["id"].as_str().unwrap());

    // Another process (here: another connection) takes the write lock and keeps it.
    let other = rusqlite::Connection::open(dir.db()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();

    let writer = api.clone();
    let post = tokio::spawn(async move {
        writer
            .send("POST", "/v1/chatbots", Some(json!({"name": "Blocked"})))
            .await
    });
    // While the write waits for the lock, reads of both kinds are answered.
    for _ in 0..5 {
        assert_eq!(api.send("GET", &path, None).await.status, 200);
        let listed = api.send("GET", "/v1/chatbots", None).await;
        assert_eq!(listed.status, 200);
        assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
    }
    assert!(
        !post.is_finished(),
        "the reads were answered while the write still waited for the lock"
    );
    let refused = post.await.unwrap();
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.code(), Some("service_unavailable"));
    assert!(refused.retry_after.is_some(), "503 without Retry-After");

    // Once the lock is released, writes go through again.
    other.execute_batch("ROLLBACK").unwrap();
    let after = api
        .send("POST", "/v1/chatbots", Some(json!({"name": "After"})))
        .await;
    assert_eq!(after.status, 201);
}

#[cfg(unix)]
#[tokio::test]
async fn serve_creates_its_database_readable_by_its_owner_only() {
    use faultline_cli::reference::{app_on_file, keys_on_file};
    use std::os::unix::fs::PermissionsExt;

    let dir = TempDir::new();
    let db = dir.db();
    // `serve` opens the key store first, then the app, both on the same new file.
    let keys = keys_on_file(&db).unwrap();
    let _app = app_on_file(common::catalog(), None, &db, keys).unwrap();
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
}
