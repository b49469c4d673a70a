//! The library behind the `faultline` binary: the reference API, shared with its tests.

pub mod reference;
