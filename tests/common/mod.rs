//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub mod api;
pub mod azure;
pub mod flaky;
pub mod moto;
pub mod peers;
pub mod tls;
pub mod tmpfs;
