//! Helpers shared by the worker's integration tests.
#![allow(dead_code, unreachable_pub)]

use roomcast_schemas::{ENVELOPE_VERSION, InboundEvent};
use serde_json::value::RawValue;
use sqlx::{Connection, Executor, PgConnection};

/// The PostgreSQL server the tests use; override with `ROOMCAST_TEST_POSTGRES_URL`.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn admin_url() -> String {
    std::env::var("ROOMCAST_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

/// A fresh PostgreSQL database, dropped (with its connections) when this is dropped.
pub struct PgDatabase {
    /// URL of the new database.
    pub url: String,
    name: String,
}

impl PgDatabase {
    /// Creates `rc_<random>` on the test server; panics with a clear message when the server
    /// cannot be reached (these tests need it and never skip).
    pub async fn create() -> PgDatabase {
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|error| {
            panic!(
                "this test needs PostgreSQL at {admin} (set ROOMCAST_TEST_POSTGRES_URL to \
                 change it), which is unreachable: {error}"
            )
        });
        let name = format!("rc_{}", uuid::Uuid::new_v4().simple());
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap_or_else(|error| panic!("cannot create test database {name}: {error}"));
        let _ = conn.close().await;
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        PgDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin = admin_url();
        let name = std::mem::take(&mut self.name);
        // Drop runs inside the test's runtime: use a thread with its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&admin).await?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await?;
                conn.close().await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop a test database: {dropped:?}");
        }
    }
}

/// Sends the code's tracing output to the test's output (filtered by `RUST_LOG`, off by
/// default).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

/// A random name with a readable prefix (rooms, senders, groups).
pub fn random_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// An inbound event with `data` given as JSON text.
pub fn event(room: &str, from: &str, id: &str, data: &str) -> InboundEvent {
    InboundEvent {
        v: ENVELOPE_VERSION,
        id: id.to_owned(),
        room: room.to_owned(),
        event: "say".to_owned(),
        from: from.to_owned(),
        ts: 1_700_000_000_000,
        data: RawValue::from_string(data.to_owned()).expect("test data is JSON"),
    }
}
