//! The two worked examples of seed 003, reproduced exactly by the flat profile.

use faultline::details::FieldErrors;
use faultline::{ApiError, ErrorDef, Profile, RenderContext, RetryAdvice};
use serde_json::json;

const INVALID_PAYLOAD: ErrorDef = ErrorDef {
    code: "invalid_payload",
    status: 400,
    title: "Invalid payload",
    message: "Request body failed validation.",
    retry: RetryAdvice::Never,
};

const NOT_FOUND: ErrorDef = ErrorDef {
    code: "not_found",
    status: 404,
    title: "Not found",
    message: "The requested resource was not found.",
    retry: RetryAdvice::Never,
};

#[test]
fn validation_error_on_post_chatbots() {
    let error =
        ApiError::from_def(&INVALID_PAYLOAD)
            .with_details(FieldErrors::new().field("name", "Required").field(
            "status",
            "Invalid enum value. Expected 'draft' | 'active' | 'paused' | 'archived', got 'live'.",
        ));
    let ctx = RenderContext::new().with_request_id("req_8fK2x9aLp0qR");
    let expected = json!({
      "error": "invalid_payload",
      "message": "Request body failed validation.",
      "request_id": "req_8fK2x9aLp0qR",
      "details": {
        "formErrors": [],
        "fieldErrors": {
          "name": ["Required"],
          "status": ["Invalid enum value. Expected 'draft' | 'active' | 'paused' | 'archived', got 'live'."]
        }
      }
    });
    assert_eq!(Profile::Flat.to_value(&error, &ctx), expected);
    let bytes = Profile::Flat.render(&error, &ctx);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
        expected
    );
}

#[test]
fn cross_org_access_is_a_plain_not_found() {
    let error = ApiError::from_def(&NOT_FOUND).with_message("Chatbot not found.");
    let ctx = RenderContext::new().with_request_id("req_2c1b4a9f7e8d");
    assert_eq!(
        Profile::Flat.to_value(&error, &ctx),
        json!({"error": "not_found", "message": "Chatbot not found.", "request_id": "req_2c1b4a9f7e8d"})
    );
}

#[test]
fn every_profile_renders_the_validation_example() {
    let error = ApiError::from_def(&INVALID_PAYLOAD)
        .with_details(FieldErrors::new().field("name", "Required"));
    let ctx = RenderContext::new()
        .with_request_id("req_1")
        .with_instance("/v1/chatbots")
        .with_docs_url("https://docs.example.com/errors#invalid_payload")
        .with_domain("api.example.com");
    let details = json!({"formErrors": [], "fieldErrors": {"name": ["Required"]}});
    assert_eq!(
        Profile::Code.to_value(&error, &ctx),
        json!({"code": "invalid_payload", "message": "Request body failed validation.", "details": details, "request_id": "req_1"})
    );
    assert_eq!(
        Profile::Nested.to_value(&error, &ctx),
        json!({"error": {"code": "invalid_payload", "message": "Request body failed validation.", "request_id": "req_1", "details": details}})
    );
    assert_eq!(
        Profile::Problem.to_value(&error, &ctx),
        json!({
            "type": "https://docs.example.com/errors#invalid_payload",
            "title": "Invalid payload",
            "status": 400,
            "detail": "Request body failed validation.",
            "instance": "/v1/chatbots",
            "code": "invalid_payload",
            "request_id": "req_1",
            "details": details
        })
    );
    assert_eq!(
        Profile::Google.to_value(&error, &ctx),
        json!({"error": {
            "code": 400,
            "message": "Request body failed validation.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "INVALID_PAYLOAD",
                    "domain": "api.example.com",
                    "metadata": {"code": "invalid_payload", "formErrors": "[]", "fieldErrors": r#"{"name":["Required"]}"#}
                },
                {"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": "req_1"},
                {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": "name", "description": "Required"}]},
                {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Invalid payload: invalid_payload", "url": "https://docs.example.com/errors#invalid_payload"}]}
            ]
        }})
    );
    assert_eq!(Profile::Problem.content_type(), "application/problem+json");
    assert_eq!(Profile::Flat.content_type(), "application/json");
}
