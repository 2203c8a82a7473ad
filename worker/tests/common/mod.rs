//! Helpers shared by the worker's integration tests.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub use roomcast_broker::testkit::{inbound_event as event, unique as random_name};
pub use roomcast_store::testkit::PgDatabase;

/// Sends the code's tracing output to the test's output (filtered by `RUST_LOG`, off by
/// default).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}
