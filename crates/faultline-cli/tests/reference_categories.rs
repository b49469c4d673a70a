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
