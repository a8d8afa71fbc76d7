//! `confirmd bench`, the real binary, against the real app started in this process with an SMTP
//! server that receives every email: what it counts (not how fast: timings vary by machine),
//! the chart it draws, and how it refuses to run.

mod support;
use support::{app::InProcessApp, binary, free_port, smtp};

use std::{process::Output, time::Duration};

use confirmd::Settings;
use serde_json::{Value, json};
use smtp::SmtpServer;
use tempfile::TempDir;

/// How long the emails may take to reach the SMTP server once the bench has reported them sent.
const PATIENCE: Duration = Duration::from_secs(10);

/// A running confirmd and what it needs to stay up: its SMTP server and its database folder.
struct RunningApp {
    url: String,
    _app: InProcessApp,
    smtp: SmtpServer,
    _db_dir: TempDir,
}

/// The app on a free port, with a temporary database and an SMTP server that accepts everything.
async fn spawn_app() -> RunningApp {
    let smtp = SmtpServer::start().await;
    let db_dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::defaults();
    settings.server.listen = "127.0.0.1:0".into();
    settings.database.url = format!(
        "sqlite://{}?mode=rwc",
        db_dir.path().join("confirmd.db").display()
    );
    settings.smtp.port = smtp.port();
    // The bench is one client sending many signups.
    settings.signup.per_client_per_minute = 0;
    let app = InProcessApp::start(settings).await;
    RunningApp {
        url: app.address.clone(),
        _app: app,
        smtp,
        _db_dir: db_dir,
    }
}

/// Runs `confirmd bench ARGS` to the end. Its own deadlines bound it: every request times out,
/// and so does the wait for the emails.
fn confirmd_bench(args: &[&str]) -> Output {
    binary::run_confirmd(&[&["bench"], args].concat(), &[])
}

/// [`confirmd_bench`] on a blocking thread, so that the app in this process keeps serving.
async fn run_bench(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        confirmd_bench(&args)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn bench_counts_every_signup_and_every_email_of_both_modes_and_draws_them() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("chart.svg");

    let output = run_bench(&[
        "--url",
        &app.url,
        "--requests",
        "40",
        "--concurrency",
        "4",
        "--json",
        "--plot",
        chart.to_str().unwrap(),
    ])
    .await;

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is one JSON object ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert_eq!(report["url"], app.url.as_str());
    assert_eq!(report["requests"], 40);
    assert_eq!(report["concurrency"], 4);
    let modes = report["modes"].as_array().expect("a list of modes");
    assert_eq!(modes.len(), 2, "{report:#}");
    for (mode, expected_status) in [(&modes[0], "201"), (&modes[1], "202")] {
        let name = if expected_status == "201" {
            "sync"
        } else {
            "background"
        };
        assert_eq!(mode["mode"], name, "{report:#}");
        assert_eq!(mode["requests"], 40, "{mode:#}");
        assert_eq!(mode["statuses"], json!({ expected_status: 40 }), "{mode:#}");
        assert_eq!(mode["connection_errors"], 0, "{mode:#}");
        assert_eq!(mode["acknowledged"], 40, "{mode:#}");
        assert_eq!(mode["delivered"], 40, "every email is sent: {mode:#}");
        assert_eq!(mode["not_delivered"], 0, "{mode:#}");
        assert!(mode["wall_s"].as_f64().unwrap() > 0.0, "{mode:#}");
        assert!(mode["throughput"].as_f64().unwrap() > 0.0, "{mode:#}");
        for section in ["latency_ms", "delivery_ms"] {
            let p = &mode[section];
            for key in ["p50", "p90", "p99", "max"] {
                assert!(p[key].is_number(), "{section}.{key}: {mode:#}");
            }
            assert!(
                p["p50"].as_f64() <= p["max"].as_f64(),
                "{section}: {mode:#}"
            );
        }
    }
    // The service did send them: 80 emails, each to its own fresh address.
    let mail = app.smtp.wait_for_mail(80, PATIENCE).await;
    let mut recipients: Vec<&str> = mail
        .iter()
        .flat_map(|m| m.to.iter().map(String::as_str))
        .collect();
    recipients.sort_unstable();
    recipients.dedup();
    assert_eq!(recipients.len(), 80, "{recipients:?}");
    assert!(recipients.iter().all(|to| to.starts_with("bench-")));

    let svg = std::fs::read_to_string(&chart).expect("the chart was written");
    for needle in ["<svg", "sync", "background", "percentile"] {
        assert!(svg.contains(needle), "the chart should contain {needle:?}");
    }
}

#[tokio::test]
async fn the_text_report_has_a_table_per_mode_and_async_means_background() {
    let app = spawn_app().await;

    let output = run_bench(&["--url", &app.url, "--requests", "5", "--modes", "async"]).await;

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("background: 5 requests"), "{stdout}");
    for needle in [
        "p50 ms",
        "response",
        "signup → sent",
        "5 of 5 sent",
        "202 × 5",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
    assert!(!stdout.contains("sync"), "{stdout}");
}

#[test]
fn an_unreachable_service_is_one_clear_line_and_a_failure() {
    let url = format!("http://127.0.0.1:{}", free_port());

    let output = confirmd_bench(&["--url", &url, "--requests", "5"]);

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot reach confirmd at {url}")),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn bad_arguments_are_refused_before_anything_is_sent() {
    for (args, needle) in [
        (&["--requests", "0"][..], "--requests"),
        (&["--concurrency", "0"][..], "--concurrency"),
        (&["--modes", "sync,later"][..], "later"),
        (&["--url", "localhost:3000"][..], "http://"),
    ] {
        let output = confirmd_bench(args);

        assert!(!output.status.success(), "{args:?} should be refused");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}:\n{stderr}");
    }
}
