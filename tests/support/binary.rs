//! The real `confirmd` binary as a child process: [`confirmd`] is the one way every test starts
//! it, and [`run_confirmd`] runs it to the end as a user runs a command. A service that keeps
//! running is [`super::process`]'s.

use std::process::{Command, Output};

/// `confirmd`, with none of the environment running the tests: no logging, backtrace or
/// `CONFIRMD_*` settings of CI's or a developer's, so that only what the test sets applies and
/// an error is the one line a user would see. The caller adds the arguments (and a `--config`
/// folder: the repository's `./config` must not change what the test asked for).
pub fn confirmd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_confirmd"));
    command
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    for (key, _) in std::env::vars() {
        if key.starts_with("CONFIRMD_") {
            command.env_remove(key);
        }
    }
    command
}

/// Runs `confirmd ARGS` with an empty config folder, so that only the compiled-in defaults and
/// `env` apply.
pub fn run_confirmd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let config = tempfile::tempdir().unwrap();
    confirmd()
        .args(args)
        .args(["--config", config.path().to_str().unwrap()])
        .envs(env.iter().copied())
        .output()
        .unwrap()
}
