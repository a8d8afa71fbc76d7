//! `confirmd demo`, the real binary, which starts its own mail catcher and service: what it
//! counts and confirms (not how fast: timings vary by machine), the chart and the text report,
//! and how it refuses a bad argument.

mod support;
use support::binary;

use std::process::Output;

use serde_json::{Value, json};

/// Runs `confirmd demo ARGS` to the end. Its own deadlines bound it: every request times out,
/// and so does the wait for the emails.
/// The compiled-in defaults apply, as on a fresh machine.
fn confirmd_demo(args: &[&str]) -> Output {
    binary::run_confirmd(&[&["demo"], args].concat(), &[])
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

#[test]
fn the_demo_sends_every_signup_of_both_modes_delivers_every_email_and_confirms_a_link() {
    let output = confirmd_demo(&["--requests", "20", "--concurrency", "4", "--json"]);

    let stdout = succeeded(&output);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is one JSON object ({e}):\n{stdout}"));
    assert_eq!(report["requests"], 20, "{report:#}");
    assert_eq!(report["concurrency"], 4, "{report:#}");
    assert_eq!(report["workers"], 4, "{report:#}");
    assert_eq!(report["smtp_latency_ms"], 0.0, "{report:#}");
    let modes = report["modes"].as_array().expect("a list of modes");
    assert_eq!(modes.len(), 2, "{report:#}");
    for (mode, name, status) in [(&modes[0], "sync", "201"), (&modes[1], "background", "202")] {
        assert_eq!(mode["mode"], name, "{mode:#}");
        assert_eq!(mode["requests"], 20, "{mode:#}");
        assert_eq!(mode["statuses"], json!({ status: 20 }), "{mode:#}");
        assert_eq!(mode["connection_errors"], 0, "{mode:#}");
        assert_eq!(mode["acknowledged"], 20, "{mode:#}");
        assert_eq!(mode["delivered"], 20, "every email is sent: {mode:#}");
        assert_eq!(mode["not_delivered"], 0, "{mode:#}");
        for section in ["latency_ms", "delivery_ms"] {
            assert!(mode[section]["p50"].is_number(), "{section}: {mode:#}");
        }
    }

    // The catcher got each of the 40 emails once, on a loopback port.
    let catcher = &report["catcher"];
    assert_eq!(catcher["emails_received"], 40, "{report:#}");
    let address: std::net::SocketAddr = catcher["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the catcher's address: {report:#}"));
    assert!(address.ip().is_loopback());

    // The link in one of those emails confirmed its signup.
    let link = &report["link"];
    assert_eq!(link["confirmed"], true, "{report:#}");
    assert!(
        link["recipient"].as_str().unwrap().starts_with("bench-"),
        "{report:#}"
    );
    let shown = link["link"].as_str().unwrap();
    assert!(
        shown.starts_with(&format!(
            "{}/confirm?token=",
            report["url"].as_str().unwrap()
        )),
        "the link leads back to the demo's service: {report:#}"
    );
    assert!(
        shown.ends_with("token=…"),
        "no token in the output: {shown}"
    );
}

#[test]
fn the_text_report_has_both_modes_the_link_and_a_reading_and_the_chart_is_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("x.svg");

    let output = confirmd_demo(&[
        "--requests",
        "10",
        "--concurrency",
        "2",
        "--smtp-latency",
        "20ms",
        "--plot",
        chart.to_str().unwrap(),
    ]);

    let stdout = succeeded(&output);
    for needle in [
        "answers each email after 20 ms",
        "sync: 10 requests",
        "background: 10 requests",
        "201 × 10",
        "202 × 10",
        "10 of 10 sent",
        "the mail catcher received 20, for 20 signups acknowledged",
        "opening it confirmed nothing, its page's button did",
        "of which 20 ms is the mail server's answer",
        "the request does not wait for the mail server",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
    let svg = std::fs::read_to_string(&chart).expect("the chart was written");
    assert!(svg.contains("<svg"), "{svg}");
}

#[test]
fn a_bad_latency_is_one_error_line_that_names_the_option() {
    let output = confirmd_demo(&["--smtp-latency", "soon"]);

    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .lines()
            .any(|line| line.contains("--smtp-latency") && line.contains("soon")),
        "one line names the option and the value:\n{stderr}"
    );
}
