//! A fresh PostgreSQL database for one test, on the server `CONFIRMD_TEST_POSTGRES_URL` names
//! (`postgres://postgres@127.0.0.1:5432/postgres` in CI), dropped when the test is done with it.

use sqlx::{Connection, PgConnection};

/// The variable that names the server, and turns the PostgreSQL runs on (see build.rs).
pub const URL_VARIABLE: &str = "CONFIRMD_TEST_POSTGRES_URL";

/// A database of its own for one test: `confirmd_test_<random>`, empty, not migrated.
pub struct TestDatabase {
    /// Where the app connects.
    pub url: String,
    name: String,
    server: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let server = std::env::var(URL_VARIABLE)
            .unwrap_or_else(|_| panic!("{URL_VARIABLE} names the PostgreSQL server for the tests"));
        let name = format!("confirmd_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {server} ({URL_VARIABLE}): {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let url = match server.rsplit_once('/') {
            Some((base, _)) if base.contains("://") && !base.ends_with('/') => {
                format!("{base}/{name}")
            }
            _ => panic!("{URL_VARIABLE} must name a database: postgres://user@host:port/postgres"),
        };
        TestDatabase { url, name, server }
    }
}

impl Drop for TestDatabase {
    /// Drops the database on a thread of its own (a test's runtime may be shutting down),
    /// closing whatever connections the app left open; a failure leaves only a stray database.
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&server).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await
                .ok()?;
                admin.close().await.ok()
            })
        });
        let _ = dropped.join();
    }
}
