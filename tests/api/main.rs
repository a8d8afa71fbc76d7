//! Integration tests: the real application on a random port, its own database, and an SMTP
//! server inside the test process that receives the email (or fails on purpose).
//!
//! The suite runs once per database engine: `sqlite::…` on a temporary file, `postgres::…` on a
//! fresh database of the server `CONFIRMD_TEST_POSTGRES_URL` names. Without that variable the
//! PostgreSQL copy is not compiled (build.rs), and one ignored test says so.
//!
//! `storage_faults` is SQLite's alone: it breaks the database file (deletes or replaces it,
//! fills it to `database.max_size_mb`, holds its write lock from a second connection, runs out
//! of file descriptors), and a server database has none of those to break. What PostgreSQL can
//! fail with instead (the server restarting) is a child-process test's to show.

// Each test file is compiled once per engine, on purpose: that is the suite's parametrisation.
#![allow(clippy::duplicate_mod)]

#[path = "../support/mod.rs"]
mod support;
use support::{binary, smtp};

mod sqlite;

#[cfg(confirmd_test_postgres)]
mod postgres;

/// Stands in for the PostgreSQL copy of the suite when it is not compiled, so that the test
/// output says it was skipped and how to run it.
#[cfg(not(confirmd_test_postgres))]
#[test]
#[ignore = "the PostgreSQL runs of the API suite are skipped: set CONFIRMD_TEST_POSTGRES_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run them"]
fn postgres_runs_skipped() {}
