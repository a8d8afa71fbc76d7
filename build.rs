//! Compiles the tests' PostgreSQL runs only where a server is named for them: with
//! `CONFIRMD_TEST_POSTGRES_URL` set, the cfg `confirmd_test_postgres` is on (tests/api/main.rs,
//! tests/store.rs); without it, `cargo test` runs the SQLite suite and lists the PostgreSQL
//! runs as one ignored test that says how to run them.
fn main() {
    println!("cargo::rerun-if-env-changed=CONFIRMD_TEST_POSTGRES_URL");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("CONFIRMD_TEST_POSTGRES_URL").is_ok_and(|url| !url.trim().is_empty()) {
        println!("cargo::rustc-cfg=confirmd_test_postgres");
    }
}
