//! `serve` processes started at the same instant on a new SQLite file all come up, and agree
//! on one cursor secret (a cursor from one pages on the others).
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

#[path = "common/servers.rs"]
mod servers;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use servers::{Server, create_key_on_file, http};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_together_on_a_new_file_share_one_cursor_secret() {
    for round in 0..3 {
        let dir = std::env::temp_dir().join(format!("faultline-start-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        // The keys file exists; the reference tables and the secret do not yet.
        let db = dir.join("reference.db");
        let key = create_key_on_file(&db, "acme");
        let bearer = format!("Bearer {key}");
        let addrs: Vec<_> = (0..4)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap()
            })
            .collect();
        let mut servers: Vec<Server> = addrs
            .iter()
            .map(|addr| {
                let child = Command::new(env!("CARGO_BIN_EXE_faultline"))
                    .args(["serve", "--no-limits", "--addr", &addr.to_string(), "--db"])
                    .arg(&db)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                Server::new(child, *addr)
            })
            .collect();
        for server in &mut servers {
            let started = Instant::now();
            while std::net::TcpStream::connect(server.addr).is_err() {
                assert!(
                    server.exited().is_none(),
                    "round {round}: serve on {} exited at start",
                    server.addr
                );
                assert!(started.elapsed() < Duration::from_secs(20));
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for i in 0..3 {
            let created = http(
                addrs[0],
                "POST",
                "/v1/chatbots",
                &[("Authorization", &bearer)],
                Some(&json!({"name": format!("Bot {i}")})),
            )
            .await
            .unwrap();
            assert_eq!(created.status, 201, "{created:?}");
        }
        let first = http(
            addrs[1],
            "GET",
            "/v1/chatbots?limit=1",
            &[("Authorization", &bearer)],
            None,
        )
        .await
        .unwrap();
        let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
        for addr in &addrs {
            let next = http(
                *addr,
                "GET",
                &format!("/v1/chatbots?limit=1&cursor={cursor}"),
                &[("Authorization", &bearer)],
                None,
            )
            .await
            .unwrap();
            assert_eq!(next.status, 200, "round {round}, {addr}: {next:?}");
        }
        drop(servers);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
