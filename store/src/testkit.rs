//! Helpers for tests that need a real store (the `testkit` feature).
//!
//! [`PgDatabase`] creates a throwaway PostgreSQL database on the test server
//! (`ROOMCAST_TEST_POSTGRES_URL`, default [`DEFAULT_POSTGRES_URL`]) and drops it afterwards.

use sqlx::{Connection, Executor, PgConnection};

/// The PostgreSQL server tests use unless `ROOMCAST_TEST_POSTGRES_URL` names another.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The test server's URL: `ROOMCAST_TEST_POSTGRES_URL`, or [`DEFAULT_POSTGRES_URL`].
pub fn postgres_test_url() -> String {
    std::env::var("ROOMCAST_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

/// The test server's URL if it accepts a connection within 5 seconds. Otherwise the test fails
/// with `CI=true` (a test never skips its database silently in CI) and is skipped with a note
/// outside CI.
pub async fn reachable_postgres_url() -> Option<String> {
    let url = postgres_test_url();
    let connect = PgConnection::connect(&url);
    if let Ok(Ok(conn)) = tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
        let _ = conn.close().await;
        return Some(url);
    }
    let problem = format!("PostgreSQL at {url} (ROOMCAST_TEST_POSTGRES_URL) is unreachable");
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("required in CI: {problem}");
    }
    eprintln!("skipping: {problem}");
    None
}

/// A fresh PostgreSQL database, dropped (with its connections) when this is dropped.
#[derive(Debug)]
pub struct PgDatabase {
    /// URL of the new database.
    pub url: String,
    name: String,
}

impl PgDatabase {
    /// Creates `rc_<random>` on the test server; panics with a clear message when the server
    /// cannot be reached (the tests that use it need it and never skip).
    pub async fn create() -> PgDatabase {
        let admin = postgres_test_url();
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
        let admin = postgres_test_url();
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
