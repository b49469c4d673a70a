//! Three `faultline serve` processes on one PostgreSQL database and one Redis, requests spread
//! across them: one rate limit, one exactly-once idempotency, one cursor secret.
//!
//! Needs `FAULTLINE_TEST_POSTGRES_URL` and Redis (`FAULTLINE_REDIS_URL`, default
//! `redis://127.0.0.1:6379`); without them each test prints a `skipped:` line and passes
//! (unless `FAULTLINE_REQUIRE_REDIS` is set).
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

#[path = "common/servers.rs"]
mod servers;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use servers::{Cluster, ClusterOptions, create_key, delete_redis_prefix, http, redis_available};

/// # One per-org limit for every instance
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_org_limit_admits_exactly_its_quota_across_three_instances() {
    if !redis_available("a_per_org_limit").await {
        return;
    }
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    // Two keys of one free organisation: 10 requests a minute for the organisation.
    let keys = [
        create_key(&cluster, "acme", None),
        create_key(&cluster, "acme", None),
    ];
    cluster.launch(&ClusterOptions {
        redis_url: Some(servers::redis_url()),
        ..ClusterOptions::default()
    });
    let addrs = cluster.addrs();
    let mut statuses = Vec::new();
    // One at a time (the free tier allows 2 in flight), round robin over servers and keys.
    for i in 0..30 {
        let bearer = format!("Bearer {}", keys[i % 2]);
        let answer = http(
            addrs[i % 3],
            "GET",
            "/v1/chatbots",
            &[("Authorization", &bearer)],
            None,
        )
        .await
        .unwrap();
        if answer.status == 429 {
            assert!(answer.headers.contains_key("retry-after"), "{answer:?}");
        }
        statuses.push(answer.status);
    }
    let prefix = cluster.prefix.clone();
    drop(cluster);
    delete_redis_prefix(&prefix).await;
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((ok, limited), (10, 20), "{statuses:?}");
    // Every server admitted some: the quota is theirs together.
    for server in 0..3 {
        assert!(
            statuses.iter().skip(server).step_by(3).any(|&s| s == 200),
            "server {server} admitted nothing: {statuses:?}"
        );
    }
}

/// # Exactly once across instances, and cursors that travel
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_create_once_under_200_concurrent_posts_and_share_cursors() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    let key = create_key(&cluster, "acme", None);
    cluster.launch(&ClusterOptions::default());
    let addrs = cluster.addrs();
    let bearer = format!("Bearer {key}");

    // 200 POSTs with one Idempotency-Key at once, spread over the three; each retries while
    // the first is in progress, until it gets the 201 (the original or its replay).
    let body = json!({"name": "Exactly once"});
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (addr, bearer, body) = (addrs[i % 3], bearer.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..200 {
                let answer = http(
                    addr,
                    "POST",
                    "/v1/chatbots",
                    &[
                        ("Authorization", &bearer),
                        ("Idempotency-Key", "same-key-for-all-200"),
                    ],
                    Some(&body),
                )
                .await
                .unwrap();
                match answer.status {
                    201 => return answer.body["id"].as_str().unwrap().to_owned(),
                    409 | 503 => {
                        assert!(answer.headers.contains_key("retry-after"), "{answer:?}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ => panic!("unexpected answer: {answer:?}"),
                }
            }
            panic!("never got the 201");
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "every POST got the same chatbot: {ids:?}");
    let listed = http(
        addrs[0],
        "GET",
        "/v1/chatbots?limit=100",
        &[("Authorization", &bearer)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        listed.body["data"].as_array().unwrap().len(),
        1,
        "{listed:?}"
    );

    // Four more, then pages of two, each page from the next server: a cursor signed by one
    // opens on the others.
    for i in 0..4 {
        let created = http(
            addrs[i % 3],
            "POST",
            "/v1/chatbots",
            &[("Authorization", &bearer)],
            Some(&json!({"name": format!("Bot {i}")})),
        )
        .await
        .unwrap();
        assert_eq!(created.status, 201, "{created:?}");
    }
    let (mut seen, mut path, mut page_no) = (Vec::new(), "/v1/chatbots?limit=2".to_owned(), 0);
    loop {
        let page = http(
            addrs[page_no % 3],
            "GET",
            &path,
            &[("Authorization", &bearer)],
            None,
        )
        .await
        .unwrap();
        assert_eq!(page.status, 200, "page {page_no}: {page:?}");
        for bot in page.body["data"].as_array().unwrap() {
            seen.push(bot["id"].as_str().unwrap().to_owned());
        }
        page_no += 1;
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/chatbots?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(page_no, 3, "five chatbots in pages of two");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 5, "{seen:?}");
}
