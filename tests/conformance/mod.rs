//! Conformance suites run unchanged against every `Log` and `StateStore` implementation.

#![allow(dead_code)]

pub mod log;
pub mod store;
