//! What the integration tests share: the binary under test, a sidecar for a
//! testbed NGINX, and reading JSON answers. Each test file includes it with
//! `mod support;` (not every file uses every helper).
#![allow(dead_code)]

use std::path::Path;

use serde_json::Value;
use testbed::client::Fetched;
use testbed::{Nginx, Sidecar};

pub mod pod_rules;
pub mod renders;

/// The `nginx-drain` binary cargo built for these tests.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nginx-drain"))
}

/// `nginx-drain serve` for `nginx` (its pid file and port), with `extra` flags.
pub fn sidecar_for(nginx: &Nginx, extra: &[&str]) -> Sidecar {
    Sidecar::for_nginx(bin(), nginx, extra).expect("start sidecar")
}

/// The JSON body of an answer (every JSON answer ends with a newline).
pub fn json(f: &Fetched) -> Value {
    assert!(f.body.ends_with(b"\n"), "JSON bodies end with a newline");
    serde_json::from_slice(&f.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", f.text()))
}
