//! The pre-rendered fast path gives the very bytes of the one renderer.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken

use axum::response::Response;
use faultline::{Catalog, Profile, Situation};
use faultline_axum::{Contract, RequestId};
use http_body_util::BodyExt;

async fn parts(response: Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let status = response.status().as_u16();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

#[tokio::test]
async fn render_bound_equals_render_for_every_situation_profile_and_catalog() {
    let mut compared = 0;
    let mut prerendered = 0;
    for name in ["chatbots", "media", "prompts", "registrations", "runs"] {
        let path = format!(
            "{}/../../examples/catalogs/{name}.toml",
            env!("CARGO_MANIFEST_DIR")
        );
        let catalog = Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for profile in Profile::ALL {
            let Ok(contract) = Contract::new(catalog.clone()) else {
                continue;
            };
            let contract = contract.with_profile(profile);
            for &situation in Situation::ALL {
                let id = RequestId::generate("req_");
                let fast = parts(contract.render_bound(situation, &id, "/v1/x?y=1")).await;
                let slow =
                    parts(contract.render(&contract.bound(situation), &id, "/v1/x?y=1")).await;
                assert_eq!(fast, slow, "{name} {profile} {situation}");
                compared += 1;
                prerendered += usize::from(contract.is_prerendered(situation));
            }
        }
    }
    assert!(
        compared >= 5 * Situation::ALL.len(),
        "only {compared} compared"
    );
    assert!(prerendered > 0, "the fast path was never taken");
}

#[test]
fn problem_json_is_not_prerendered_because_it_holds_the_path() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    let catalog = Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let flat = Contract::new(catalog.clone()).unwrap();
    assert!(flat.is_prerendered(Situation::RouteNotFound));
    let problem = Contract::new(catalog)
        .unwrap()
        .with_profile(Profile::Problem);
    assert!(!problem.is_prerendered(Situation::RouteNotFound));
}
