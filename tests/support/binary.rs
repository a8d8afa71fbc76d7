//! The real `confirmd` binary, run to the end as a user runs a command.

use std::process::{Command, Output};

/// Runs `confirmd ARGS` with an empty config folder, so that only the compiled-in defaults and
/// `env` apply, and none of the caller's logging, backtrace or `CONFIRMD_ENV` settings: an error
/// is then the one line a user would see.
pub fn run_confirmd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let config = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_confirmd"))
        .args(args)
        .args(["--config", config.path().to_str().unwrap()])
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("CONFIRMD_ENV")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}
