faultline_macros::catalog!(mod errors = "../fixtures/shop.toml");

fn main() {
    // `gone` is not in the catalog, so there is no constructor for it.
    let _error = errors::gone();
}
