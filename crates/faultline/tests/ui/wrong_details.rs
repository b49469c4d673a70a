faultline_macros::catalog!(mod errors = "../fixtures/shop.toml");

fn main() {
    // `invalid_payload` takes field errors, not a free-form reason.
    let _error = errors::invalid_payload(faultline::details::Reason { reason: "nope".into() });
}
