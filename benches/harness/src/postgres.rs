//! A PostgreSQL database of a measurement's own, on the server the benchmarks are pointed at:
//! created empty at the start, dropped at the end, so that no run sees another's rows.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The development and CI machines' server: 127.0.0.1:5432, user `postgres`, trust auth.
pub const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The secret every instance of a run derives its links with. Instances that share a database
/// must share it (confirmd's `token.secret`); a benchmark's links are never followed.
pub const TOKEN_SECRET: &str = "confirmd-benches-token-secret-0123456789";

/// A database named `confirmd_bench_<pid>_<n>` on `server`. Drop it with [`FreshDatabase::drop`]:
/// that needs the server, so it is not done on `Drop`.
pub struct FreshDatabase {
    server: String,
    name: String,
    url: String,
}

impl FreshDatabase {
    /// Creates the database on the server that `server` (any database URL of it) points at.
    pub async fn create(server: &str) -> anyhow::Result<FreshDatabase> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "confirmd_bench_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = PgConnection::connect(server)
            .await
            .with_context(|| format!("no PostgreSQL server answers at {server}"))?;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot create the database {name}"))?;
        admin.close().await?;
        Ok(FreshDatabase {
            url: with_database(server, &name)?,
            server: server.to_owned(),
            name,
        })
    }

    /// The URL of the database: the server's URL with its name in the path.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database, closing whatever connections are still open to it.
    pub async fn drop(self) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect(&self.server).await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await
        .with_context(|| format!("cannot drop the database {}", self.name))?;
        admin.close().await?;
        Ok(())
    }
}

/// `server` (`postgres://user@host:port/db?params`) with `database` in place of `db`.
fn with_database(server: &str, database: &str) -> anyhow::Result<String> {
    let Some((scheme, rest)) = server.split_once("://") else {
        bail!("{server:?} is not a postgres:// URL");
    };
    let (authority, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let host = authority.split('/').next().unwrap_or(authority);
    let mut url = format!("{scheme}://{host}/{database}");
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_replaces_the_servers_and_keeps_the_parameters() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "b").unwrap(),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            with_database("postgresql://u@h?sslmode=disable", "b").unwrap(),
            "postgresql://u@h/b?sslmode=disable"
        );
        assert!(with_database("127.0.0.1:5432", "b").is_err());
    }
}
