//! What the service writes to its log: one line per signup with mode and latency, and never a
//! confirmation token or the secret tokens are derived from, even at the most verbose level.

mod support;
use support::{binary, free_port, links, smtp};

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use smtp::SmtpServer;

#[tokio::test]
async fn tokens_never_reach_the_log_even_at_trace_level() {
    let smtp = SmtpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log_path = dir.path().join("confirmd.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = binary::confirmd()
        .args(["--config", dir.path().to_str().unwrap(), "serve"])
        .env("RUST_LOG", "trace")
        .env("CONFIRMD_TELEMETRY__FORMAT", "json")
        .env("CONFIRMD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("CONFIRMD_APP__BASE_URL", &base)
        .env("CONFIRMD_SMTP__PORT", smtp.port().to_string())
        .env(
            "CONFIRMD_DATABASE__URL",
            format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("db.sqlite").display()
            ),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the service did not start"
        );
        tick.tick().await;
    }

    let mut tokens = Vec::new();
    for (i, mode) in ["sync", "background"].into_iter().enumerate() {
        let response = client
            .post(format!("{base}/signups?mode={mode}"))
            .json(&serde_json::json!({ "email": format!("user{i}@example.com") }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        let mail = smtp
            .wait_for_mail(i + 1, Duration::from_secs(10))
            .await
            .pop()
            .unwrap();
        let link = mail.confirmation_link();
        assert_eq!(client.get(&link).send().await.unwrap().status(), 200);
        let token = links::token_of(&link).to_owned();
        // The page's button: the token in a form body.
        let confirmed = client
            .post(format!("{base}/confirm"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(confirmed.status(), 200);
        tokens.push(token);
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let finished: Vec<&Value> = lines
        .iter()
        .filter(|line| {
            line["fields"]["message"] == "request finished" && line["span"]["route"] == "/signups"
        })
        .collect();
    assert_eq!(finished.len(), 2, "one log line per signup");
    for (line, mode) in finished.iter().zip(["sync", "background"]) {
        assert_eq!(line["span"]["mode"], mode);
        assert!(line["span"]["latency_ms"].as_f64().is_some(), "{line}");
    }
    assert!(
        log.contains("/confirm"),
        "the confirm requests are logged, so their absence below means something"
    );
    for token in &tokens {
        assert!(!log.contains(token.as_str()), "a token leaked into the log");
    }
    // Nor the secret they are derived from, generated next to the database on first start.
    let secret = std::fs::read_to_string(dir.path().join("confirmd.secret")).unwrap();
    assert!(secret.trim().len() >= 32);
    assert!(
        !log.contains(secret.trim()),
        "the token secret leaked into the log"
    );
}
