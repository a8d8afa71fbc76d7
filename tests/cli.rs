//! The binary itself: its help, `migrate`, and configuration errors that name their key.

use std::process::{Command, Output};

fn confirmd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_confirmd"))
        .args(args)
        // An empty config folder: only the compiled-in defaults and the variables below apply.
        .args(["--config", dir.path().to_str().unwrap()])
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn help_documents_every_command() {
    let output = confirmd(&["--help"], &[]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in ["serve", "migrate", "outbox", "--config", "CONFIRMD_"] {
        assert!(
            help.contains(needle),
            "--help should mention {needle}:\n{help}"
        );
    }
}

#[test]
fn migrate_creates_the_database_and_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nested/folder/confirmd.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());

    let output = confirmd(&["migrate"], &[("CONFIRMD_DATABASE__URL", &url)]);

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(db.exists());
    // Running it again is a no-op, not an error.
    assert!(
        confirmd(&["migrate"], &[("CONFIRMD_DATABASE__URL", &url)])
            .status
            .success()
    );
}

#[test]
fn a_bad_environment_value_stops_start_up_and_names_its_key() {
    for (var, value, key) in [
        ("CONFIRMD_SMTP__PORT", "not-a-port", "smtp.port"),
        ("CONFIRMD_SMTP__TLS", "sometimes", "smtp.tls"),
        ("CONFIRMD_WORKER__CONCURRENCY", "0", "worker.concurrency"),
        (
            "CONFIRMD_DELIVERY__DEFAULT_MODE",
            "later",
            "delivery.default_mode",
        ),
        ("CONFIRMD_MAIL__FROM", "nobody", "mail.from"),
    ] {
        let output = confirmd(&["migrate"], &[(var, value)]);
        assert!(!output.status.success(), "{var}={value} should be refused");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(key),
            "{var}={value}: the error should name {key}:\n{stderr}"
        );
    }
}
