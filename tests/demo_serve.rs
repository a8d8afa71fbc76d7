//! `confirmd demo --serve`, the real binary: it prints the page's address and serves the race
//! (server-sent events ending with the demo's reading), the inbox of its mail catcher and the
//! bounds of both, beside the service; SIGTERM stops it cleanly. What the page does with them in
//! a browser is tested by `.ci/page-test.mjs`.

mod support;
use support::binary;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::Value;

/// How long the demo may take to print its address, and to exit after SIGTERM.
const PATIENCE: Duration = Duration::from_secs(30);

/// A running `confirmd demo --serve`; killed if the test ends without stopping it.
struct ServedDemo {
    child: Child,
    /// `http://127.0.0.1:PORT`, as it printed.
    url: String,
    /// Keeps the (empty) config folder alive as long as the process.
    _config: tempfile::TempDir,
}

impl ServedDemo {
    fn start(args: &[&str]) -> ServedDemo {
        let config = tempfile::tempdir().unwrap();
        let mut child = binary::confirmd()
            .args(["demo", "--serve"])
            .args(args)
            .args(["--config", config.path().to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (found, address) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("The page: ") {
                    let _ = found.send(url.trim_end_matches('/').to_owned());
                }
            }
        });
        let url = address
            .recv_timeout(PATIENCE)
            .expect("the demo prints \"The page: URL\"");
        ServedDemo {
            child,
            url,
            _config: config,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("{}{path}", self.url)).await.unwrap()
    }

    /// SIGTERM, then the exit status, within [`PATIENCE`].
    fn stop(mut self) -> std::process::ExitStatus {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the demo ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServedDemo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The events of a `text/event-stream` body, as (event, data as JSON).
fn events(body: &str) -> Vec<(String, Value)> {
    body.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|block| {
            let mut event = "message".to_owned();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim().to_owned();
                } else if let Some(part) = line.strip_prefix("data:") {
                    data += part.strip_prefix(' ').unwrap_or(part);
                }
            }
            (!data.is_empty()).then(|| (event, serde_json::from_str(&data).unwrap()))
        })
        .collect()
}

async fn assert_problem(response: reqwest::Response, status: StatusCode, detail: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains(detail),
        "{problem}"
    );
}

#[tokio::test]
async fn a_race_streams_its_progress_and_ends_with_the_report_and_the_demos_reading() {
    let demo = ServedDemo::start(&["--concurrency", "4"]);

    let offer: Value = demo.get("/demo").await.json().await.unwrap();
    assert_eq!(offer["workers"], 4, "{offer}");
    assert_eq!(offer["smtp_latency_ms"], 0, "{offer}");

    let race = demo
        .get("/demo/race?requests=6&concurrency=3&smtp_latency_ms=20")
        .await;
    assert_eq!(race.status(), StatusCode::OK);
    assert_eq!(race.headers()["content-type"], "text/event-stream");
    // The stream ends with the race: reading it whole is waiting for the end.
    let events = events(&race.text().await.unwrap());

    let (last, done) = events.last().expect("some events");
    assert_eq!(last, "done", "{events:?}");
    let progress: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "progress")
        .map(|(_, data)| data)
        .collect();
    assert!(!progress.is_empty(), "{events:?}");
    let final_progress = progress.last().unwrap();
    for (i, mode) in ["sync", "background"].into_iter().enumerate() {
        assert_eq!(final_progress["modes"][i]["mode"], mode, "{final_progress}");
        assert_eq!(
            final_progress["modes"][i]["answered"], 6,
            "{final_progress}"
        );
        assert_eq!(final_progress["modes"][i]["sent"], 6, "{final_progress}");
        let report = &done["report"]["modes"][i];
        assert_eq!(report["mode"], mode, "{done}");
        assert_eq!(report["acknowledged"], 6, "{done}");
        assert_eq!(report["delivered"], 6, "{done}");
    }
    assert_eq!(done["smtp_latency_ms"], 20, "{done}");
    assert!(
        done["text"]
            .as_str()
            .unwrap()
            .starts_with("6 signups per mode, 3 at a time"),
        "{done}"
    );
    let reading = done["reading"].as_array().unwrap();
    assert!(
        reading[0].as_str().unwrap().starts_with("sync: p50 ")
            && reading[1].as_str().unwrap().starts_with("background: p50 "),
        "{done}"
    );
    // The latency the race asked for stays the catcher's.
    let offer: Value = demo.get("/demo").await.json().await.unwrap();
    assert_eq!(offer["smtp_latency_ms"], 20, "{offer}");

    assert!(demo.stop().success());
}

#[tokio::test]
async fn race_inputs_out_of_bounds_are_422_and_a_second_race_is_409() {
    let demo = ServedDemo::start(&[]);

    for (query, detail) in [
        ("requests=0", "requests must be between 1 and 1000"),
        ("requests=1001", "requests must be between 1 and 1000"),
        ("concurrency=0", "concurrency must be between 1 and 64"),
        (
            "smtp_latency_ms=2001",
            "smtp_latency_ms must be between 0 and 2000",
        ),
    ] {
        let response = demo.get(&format!("/demo/race?{query}")).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, detail).await;
    }
    let response = demo.get("/demo/race?requests=many").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let outage = reqwest::Client::new()
        .post(format!("{}/demo/outage?ms=0", demo.url))
        .send()
        .await
        .unwrap();
    assert_problem(
        outage,
        StatusCode::UNPROCESSABLE_ENTITY,
        "ms must be between 1",
    )
    .await;

    // One sync signup at a time, each waiting 200 ms: the first race lasts seconds.
    let first = demo
        .get("/demo/race?requests=20&concurrency=1&smtp_latency_ms=200")
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let second = demo.get("/demo/race?requests=1").await;
    assert_problem(second, StatusCode::CONFLICT, "A race is running").await;

    // SIGTERM in the middle of a race stops it, and the demo, cleanly.
    assert!(demo.stop().success());
    drop(first);
}

#[tokio::test]
async fn the_inbox_lists_a_received_email_as_a_mail_client_shows_it() {
    let demo = ServedDemo::start(&[]);
    let address = "ann@example.com";

    let signup = reqwest::Client::new()
        .post(format!("{}/signups?mode=sync", demo.url))
        .json(&serde_json::json!({ "email": address, "name": "<img src=x onerror=alert(1)>" }))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), StatusCode::CREATED);

    let inbox: Value = demo.get("/demo/inbox").await.json().await.unwrap();
    assert_eq!(inbox["received"], 1, "{inbox}");
    let email = &inbox["emails"][0];
    assert_eq!(email["number"], 1, "{email}");
    assert_eq!(email["to"], serde_json::json!([address]), "{email}");
    assert_eq!(email["subject"], "Confirm your email address", "{email}");
    let link = email["link"].as_str().unwrap();
    assert!(
        link.starts_with(&format!("{}/confirm?token=", demo.url)),
        "{email}"
    );
    assert!(email["text"].as_str().unwrap().contains(link), "{email}");
    assert!(email["html"].as_str().unwrap().contains(link), "{email}");

    // The link in the inbox is the service's: it is pending until its page's button is pressed.
    let status: Value = reqwest::Client::new()
        .get(link)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "pending", "{status}");

    assert!(demo.stop().success());
}
