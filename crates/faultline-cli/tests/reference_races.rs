//! Concurrent PATCH and DELETE of chatbots on a file database, on a multi-thread runtime:
//! every state change is conditional, so no deleted chatbot comes back and no archive is
//! undone.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, TempDir};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_patches_and_deletes_never_undo_a_delete_or_an_archive() {
    let dir = TempDir::new();
    let api = Api::on_file(&dir.db()).await;
    for round in 0..30 {
        let created = api
            .send(
                "POST",
                "/v1/chatbots",
                Some(json!({"name": "Bot", "status": "active"})),
            )
            .await;
        assert_eq!(created.status, 201);
        let path = format!("/v1/chatbots/{}", created.body["id"].as_str().unwrap());
        // Requests that read the chatbot and write it back, racing one delete and one archive.
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (api, path) = (api.clone(), path.clone());
            tasks.push(tokio::spawn(async move {
                let (kind, reply) = match i {
                    0 => ("delete", api.send("DELETE", &path, None).await),
                    1 => (
                        "archive",
                        api.send("PATCH", &path, Some(json!({"status": "archived"})))
                            .await,
                    ),
                    n if n % 2 == 0 => (
                        "pause",
                        api.send("PATCH", &path, Some(json!({"status": "paused"})))
                            .await,
                    ),
                    _ => (
                        "rename",
                        api.send("PATCH", &path, Some(json!({"name": format!("Bot {i}")})))
                            .await,
                    ),
                };
                (kind, reply)
            }));
        }
        let mut deleted = false;
        let mut archived = false;
        for task in tasks {
            let (kind, reply) = task.await.unwrap();
            // Every answer is a success or the catalog's conflict or gone, never a 500.
            assert!(
                [200, 204, 409, 410].contains(&reply.status),
                "round {round}: {kind} answered {reply:?}"
            );
            match (kind, reply.status) {
                ("delete", 204) => deleted = true,
                ("archive", 200) => archived = true,
                _ => {}
            }
        }
        assert!(deleted, "round {round}: the only delete must succeed");
        let after = api.send("GET", &path, None).await;
        assert_eq!(
            (after.status, after.code()),
            (410, Some("gone")),
            "round {round}: a deleted chatbot came back (archive succeeded: {archived})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_status_changes_never_undo_an_archive() {
    let dir = TempDir::new();
    let api = Api::on_file(&dir.db()).await;
    for round in 0..30 {
        let created = api
            .send(
                "POST",
                "/v1/chatbots",
                Some(json!({"name": "Bot", "status": "active"})),
            )
            .await;
        let path = format!("/v1/chatbots/{}", created.body["id"].as_str().unwrap());
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (api, path) = (api.clone(), path.clone());
            let status = if i == 0 {
                "archived"
            } else if i % 2 == 0 {
                "paused"
            } else {
                "active"
            };
            tasks.push(tokio::spawn(async move {
                (
                    status,
                    api.send("PATCH", &path, Some(json!({"status": status})))
                        .await,
                )
            }));
        }
        for task in tasks {
            let (status, reply) = task.await.unwrap();
            assert!(
                [200, 409].contains(&reply.status),
                "round {round}: {status} answered {reply:?}"
            );
            if status == "archived" {
                assert_eq!(
                    reply.status, 200,
                    "round {round}: archiving is always allowed"
                );
            }
        }
        let after = api.send("GET", &path, None).await;
        assert_eq!(
            after.body["status"], "archived",
            "round {round}: an archive was undone"
        );
    }
}
