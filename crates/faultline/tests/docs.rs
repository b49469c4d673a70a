//! The reference page of each example catalog: Markdown snapshots and HTML properties.

use std::path::Path;

use faultline::Catalog;

const CATALOGS: [&str; 5] = ["chatbots", "media", "prompts", "registrations", "runs"];

fn load(name: &str) -> Catalog {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../examples/catalogs/{name}.toml"));
    let source = std::fs::read_to_string(&path).expect("example catalog exists");
    Catalog::from_toml_str(&source)
        .unwrap_or_else(|e| panic!("{}", e.report(&path.display().to_string())))
}

#[test]
fn markdown_pages_are_stable() {
    for name in CATALOGS {
        insta::assert_snapshot!(
            format!("markdown_{name}"),
            faultline::docs::markdown(&load(name))
        );
    }
}

#[test]
fn markdown_lists_every_code_with_its_status() {
    for name in CATALOGS {
        let catalog = load(name);
        let page = faultline::docs::markdown(&catalog);
        for e in catalog.errors() {
            let row = format!("| {} | `{}`", e.status, e.code);
            assert!(page.contains(&row), "{name}: no row for {}", e.code);
        }
    }
}

#[test]
fn html_is_self_contained_with_an_anchor_per_code_and_a_filter() {
    for name in CATALOGS {
        let catalog = load(name);
        let page = faultline::docs::html(&catalog);
        assert!(page.starts_with("<!doctype html>"));
        assert!(
            page.contains("<input id=\"filter\""),
            "{name}: no filter box"
        );
        for e in catalog.errors() {
            assert!(
                page.contains(&format!("<tr id=\"{}\">", e.code)),
                "{name}: no anchor for {}",
                e.code
            );
        }
        for external in ["<link", "src=\"http", "@import", "url("] {
            assert!(
                !page.contains(external),
                "{name}: external asset `{external}`"
            );
        }
    }
}

#[test]
fn categories_are_ordered_by_status() {
    let catalog = load("chatbots");
    let page = faultline::docs::markdown(&catalog);
    let section = page
        .split("### Authentication")
        .nth(1)
        .unwrap()
        .split("###")
        .next()
        .unwrap();
    let statuses: Vec<u16> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| ")?.split(' ').next()?.parse().ok())
        .collect();
    assert!(!statuses.is_empty());
    assert!(statuses.windows(2).all(|w| w[0] <= w[1]), "{statuses:?}");
}
