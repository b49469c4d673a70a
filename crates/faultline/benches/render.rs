//! Rendering an `ApiError` with field-error details in every profile.
#![allow(missing_docs)] // criterion_group! generates an undocumented public function

use criterion::{Criterion, criterion_group, criterion_main};
use faultline::details::FieldErrors;
use faultline::{ApiError, ErrorDef, Profile, RenderContext, RetryAdvice};
use std::hint::black_box;

const INVALID_PAYLOAD: ErrorDef = ErrorDef {
    code: "invalid_payload",
    status: 400,
    title: "Invalid payload",
    message: "Request body failed validation.",
    retry: RetryAdvice::Never,
};

fn render(c: &mut Criterion) {
    let error =
        ApiError::from_def(&INVALID_PAYLOAD)
            .with_details(FieldErrors::new().field("name", "Required").field(
            "status",
            "Invalid enum value. Expected 'draft' | 'active' | 'paused' | 'archived', got 'live'.",
        ));
    let ctx = RenderContext::new()
        .with_request_id("req_8fK2x9aLp0qR7sT3uV5w")
        .with_instance("/v1/chatbots")
        .with_docs_url("https://docs.example.com/errors#invalid_payload")
        .with_domain("api.example.com");
    let mut group = c.benchmark_group("render_field_errors");
    for profile in Profile::ALL {
        group.bench_function(profile.as_str(), |b| {
            b.iter(|| black_box(profile).render(black_box(&error), black_box(&ctx)));
        });
    }
    group.finish();
}

criterion_group!(benches, render);
criterion_main!(benches);
