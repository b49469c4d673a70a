//! Categories: blank names, nesting depth, bounded cascades, schema migration, and deletes
//! that do not outlive their request.
#![allow(clippy::unwrap_used)]

mod common;

use common::Api;
use serde_json::json;

#[tokio::test]
async fn a_blank_category_name_is_refused_like_a_blank_chatbot_name() {
    let api = Api::in_memory().await;
    let category = api
        .send("POST", "/v1/categories", Some(json!({"name": "  \t "})))
        .await;
    let chatbot = api
        .send("POST", "/v1/chatbots", Some(json!({"name": "  \t "})))
        .await;
    assert_eq!(category.status, 400, "{category:?}");
    assert_eq!(category.code(), Some("invalid_payload"));
    assert_eq!(
        category.body["details"]["fieldErrors"]["name"],
        json!(["Must not be blank."])
    );
    assert_eq!(category.body["details"], chatbot.body["details"]);
}

#[tokio::test]
async fn categories_nest_at_most_32_levels_and_a_full_chain_can_be_deleted() {
    let api = Api::in_memory().await;
    let mut parent: Option<String> = None;
    let mut root = String::new();
    for level in 1..=32 {
        let created = api
            .send(
                "POST",
                "/v1/categories",
                Some(json!({"name": format!("level {level}"), "parent_id": parent})),
            )
            .await;
        assert_eq!(created.status, 201, "level {level}: {created:?}");
        let id = created.body["id"].as_str().unwrap().to_owned();
        if level == 1 {
            root.clone_from(&id);
        }
        parent = Some(id);
    }
    let too_deep = api
        .send(
            "POST",
            "/v1/categories",
            Some(json!({"name": "level 33", "parent_id": parent})),
        )
        .await;
    assert_eq!(too_deep.status, 400, "{too_deep:?}");
    assert_eq!(too_deep.code(), Some("invalid_payload"));
    assert_eq!(
        too_deep.body["details"]["fieldErrors"]["parent_id"],
        json!(["Categories nest at most 32 levels deep."])
    );
    let deleted = api
        .send(
            "DELETE",
            &format!("/v1/categories/{root}?cascade=true"),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    let deepest = parent.unwrap();
    assert_eq!(
        api.send("GET", &format!("/v1/categories/{deepest}"), None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn a_parent_of_another_organisation_is_unprocessable() {
    let api = Api::in_memory().await;
    let theirs = api
        .send_as(
            &api.other_bearer,
            "POST",
            "/v1/categories",
            Some(json!({"name": "Theirs"})),
        )
        .await;
    let refused = api
        .send(
            "POST",
            "/v1/categories",
            Some(json!({"name": "Mine", "parent_id": theirs.body["id"]})),
        )
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (422, Some("unprocessable"))
    );
}

/// Writes a tree straight into the file: `root` with `children` children, in one transaction.
fn insert_tree(db: &std::path::Path, org_of: &str, children: usize) -> (String, Vec<String>) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    let tx = conn.transaction().unwrap();
    let org: String = tx
        .query_row(
            "SELECT org_id FROM categories WHERE id = ?1",
            [org_of],
            |r| r.get(0),
        )
        .unwrap();
    let root = uuid::Uuid::new_v4().to_string();
    let insert = |id: &str, parent: Option<&str>| {
        tx.execute(
            "INSERT INTO categories (id, org_id, parent_id, name, created_at) \
             VALUES (?1, ?2, ?3, 'n', '2026-01-01T00:00:00.000+00:00')",
            rusqlite::params![id, org, parent],
        )
        .unwrap();
    };
    insert(&root, None);
    let mut ids = Vec::new();
    for _ in 0..children {
        let id = uuid::Uuid::new_v4().to_string();
        insert(&id, Some(&root));
        ids.push(id);
    }
    tx.commit().unwrap();
    (root, ids)
}

fn count_categories(db: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT COUNT(*) FROM categories", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_cascade_above_10000_descendants_is_refused_whole() {
    let dir = common::TempDir::new();
    let api = Api::on_file(&dir.db()).await;
    // A category of the organisation, to learn its id in the file.
    let mine = api
        .send("POST", "/v1/categories", Some(json!({"name": "Mine"})))
        .await;
    let mine = mine.body["id"].as_str().unwrap().to_owned();
    let (root, children) = insert_tree(&dir.db(), &mine, 10_001);
    let before = count_categories(&dir.db());

    let refused = api
        .send(
            "DELETE",
            &format!("/v1/categories/{root}?cascade=true"),
            None,
        )
        .await;
    assert_eq!((refused.status, refused.code()), (409, Some("conflict")));
    assert!(
        refused.body["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("10000"),
        "{refused:?}"
    );
    assert_eq!(count_categories(&dir.db()), before, "nothing was deleted");

    // At exactly 10,000 descendants the cascade goes through.
    let one = &children[0];
    assert_eq!(
        api.send("DELETE", &format!("/v1/categories/{one}"), None)
            .await
            .status,
        204
    );
    let done = api
        .send(
            "DELETE",
            &format!("/v1/categories/{root}?cascade=true"),
            None,
        )
        .await;
    assert_eq!(done.status, 204, "{done:?}");
    assert_eq!(count_categories(&dir.db()), 1, "only `Mine` is left");
}

/// The schema of files written before deletion moved into the application.
const OLD_SCHEMA: &str = "
PRAGMA journal_mode = WAL;
CREATE TABLE settings (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE chatbots (
    id TEXT PRIMARY KEY, org_id TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, deleted_at TEXT
);
CREATE INDEX chatbots_by_org ON chatbots (org_id, created_at, id);
CREATE TABLE categories (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    parent_id TEXT REFERENCES categories (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL
);
";

const PARENT: &str = "00000000-0000-4000-8000-000000000001";
const CHILD: &str = "00000000-0000-4000-8000-000000000002";
const GRANDCHILD: &str = "00000000-0000-4000-8000-000000000003";

#[tokio::test]
async fn an_old_file_loses_on_delete_cascade_and_keeps_its_rows() {
    let dir = common::TempDir::new();
    let db = dir.db();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(OLD_SCHEMA).unwrap();
        for (id, parent) in [
            (PARENT, None),
            (CHILD, Some(PARENT)),
            (GRANDCHILD, Some(CHILD)),
        ] {
            conn.execute(
                "INSERT INTO categories VALUES (?1, 'legacy', ?2, 'n', '2026-01-01T00:00:00.000+00:00')",
                rusqlite::params![id, parent],
            )
            .unwrap();
        }
    }
    let api = Api::on_file(&db).await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'categories'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!sql.to_uppercase().contains("CASCADE"), "{sql}");
    let indexes: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' \
             AND tbl_name = 'categories' AND sql IS NOT NULL ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(indexes, ["categories_by_org", "categories_by_parent"]);
    assert_eq!(count_categories(&db), 3, "the rows were kept");

    // Hand the rows to the key's organisation, then delete them through the API.
    conn.execute(
        "UPDATE categories SET org_id = ?1",
        rusqlite::params![api.org],
    )
    .unwrap();
    let parent = format!("/v1/categories/{PARENT}");
    assert_eq!(
        api.send("DELETE", &parent, None).await.code(),
        Some("category_not_empty")
    );
    assert_eq!(
        api.send("DELETE", &format!("{parent}?cascade=true"), None)
            .await
            .status,
        204
    );
    assert_eq!(count_categories(&db), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadline_hit_during_a_cascade_leaves_the_tree_intact() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = common::TempDir::new();
    let store = faultline_cli::reference::store::Store::open(&dir.db()).unwrap();
    let api = Api::on(store, std::time::Duration::from_millis(500)).await;
    let mine = api
        .send("POST", "/v1/categories", Some(json!({"name": "Mine"})))
        .await;
    let mine = mine.body["id"].as_str().unwrap().to_owned();
    // More than one batch of descendants.
    let (root, _) = insert_tree(&dir.db(), &mine, 1_200);
    let before = count_categories(&dir.db());

    // On the writer connection only: every deleted row waits for `release`, and tells that
    // the delete has started.
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let release = Arc::new(AtomicBool::new(false));
    let gate = Arc::clone(&release);
    api.store
        .pool()
        .expect("the store is on SQLite")
        .write_blocking(move |conn| {
            conn.create_scalar_function(
                "hold_delete",
                0,
                rusqlite::functions::FunctionFlags::SQLITE_UTF8,
                move |_| {
                    let _ = started_tx.send(());
                    while !gate.load(Ordering::Relaxed) {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Ok(0)
                },
            )?;
            conn.execute_batch(
                "CREATE TEMP TRIGGER hold BEFORE DELETE ON main.categories \
                 BEGIN SELECT hold_delete(); END;",
            )
        })
        .unwrap();

    let timed_out = api
        .send(
            "DELETE",
            &format!("/v1/categories/{root}?cascade=true"),
            None,
        )
        .await;
    assert_eq!(
        (timed_out.status, timed_out.code()),
        (504, Some("request_timeout"))
    );
    assert!(
        started.try_recv().is_ok(),
        "the deadline was hit while the delete ran"
    );
    release.store(true, Ordering::Relaxed);

    // The next write runs once the interrupted one has rolled back.
    let after = api
        .send("POST", "/v1/categories", Some(json!({"name": "After"})))
        .await;
    assert_eq!(after.status, 201);
    assert_eq!(
        count_categories(&dir.db()),
        before + 1,
        "the tree is intact"
    );
    assert_eq!(
        api.send("GET", &format!("/v1/categories/{root}"), None)
            .await
            .status,
        200
    );
}
