//! The binary itself: its help, `migrate`, and configuration errors that name their key.

mod support;
use support::binary;

use binary::run_confirmd as confirmd;

#[test]
fn help_documents_every_command() {
    let output = confirmd(&["--help"], &[]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let tools = if cfg!(feature = "tools") {
        ["bench", "demo"].as_slice()
    } else {
        [].as_slice()
    };
    for needle in ["serve", "migrate", "outbox", "--config", "CONFIRMD_"]
        .iter()
        .chain(tools)
    {
        assert!(
            help.contains(needle),
            "--help should mention {needle}:\n{help}"
        );
    }
}

/// The production build (`--no-default-features`) leaves the tooling out: `bench` and `demo` are
/// unknown commands there, and its help says which feature brings them.
#[cfg(not(feature = "tools"))]
#[test]
fn a_build_without_tools_has_no_bench_or_demo() {
    for command in ["bench", "demo"] {
        let output = confirmd(&[command], &[]);
        assert_eq!(output.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("unrecognized subcommand '{command}'")),
            "{stderr}"
        );
    }
    let help = String::from_utf8(confirmd(&["--help"], &[]).stdout).unwrap();
    assert!(help.contains("`tools` feature"), "{help}");
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
fn outbox_refuses_a_database_that_does_not_exist_instead_of_reporting_an_empty_queue() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mistyped.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());

    let output = confirmd(&["outbox"], &[("CONFIRMD_DATABASE__URL", &url)]);

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no database at"), "{stderr}");
    assert!(!db.exists(), "the command must not create the database");
}

#[test]
fn outbox_json_stays_one_object_whatever_the_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    let env = [
        ("CONFIRMD_DATABASE__URL", url.as_str()),
        ("RUST_LOG", "debug"),
    ];
    assert!(confirmd(&["migrate"], &env).status.success());

    let output = confirmd(&["outbox", "--json"], &env);

    assert!(output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}:\n{}", String::from_utf8_lossy(&output.stdout)));
    for state in ["queued", "sending", "sent", "failed", "superseded"] {
        assert_eq!(report["counts"][state], 0, "{report}");
    }
    assert!(report["oldest_queued_age_s"].is_null(), "{report}");
    assert!(
        !output.stderr.is_empty(),
        "the debug logs go to stderr instead"
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

#[test]
fn production_refuses_to_start_without_a_token_secret_and_says_how_to_set_one() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("confirmd.db").display()
    );
    // The repository's config folder, in production: token.generate_secret is off there.
    let mut child = binary::confirmd()
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
            "serve",
        ])
        .env("CONFIRMD_ENV", "production")
        .env("CONFIRMD_SERVER__LISTEN", "127.0.0.1:0")
        .env("CONFIRMD_DATABASE__URL", &url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Were it to start, it would serve until stopped: wait for its exit with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("confirmd started in production without a token secret");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("token.secret") && stderr.contains("CONFIRMD_TOKEN__SECRET"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("confirmd.secret").exists(),
        "none generated"
    );
}
