//! End to end against a real mail catcher: maildev, which `.ci/run` installs from npm and starts.
//!
//! Run by hand with maildev listening (SMTP on 1025, web on 1080 here):
//! `CONFIRMD_E2E_SMTP_PORT=1025 CONFIRMD_E2E_MAILDEV_URL=http://127.0.0.1:1080 cargo test --test e2e_maildev -- --ignored`

mod support;

use std::time::Duration;

use confirmd::Settings;
use reqwest::StatusCode;
use serde_json::Value;
use support::{app::InProcessApp, free_port, links};

struct Maildev {
    url: String,
    client: reqwest::Client,
}

impl Maildev {
    fn from_env() -> (u16, Maildev) {
        let port = std::env::var("CONFIRMD_E2E_SMTP_PORT")
            .expect("set CONFIRMD_E2E_SMTP_PORT to maildev's SMTP port")
            .parse()
            .expect("CONFIRMD_E2E_SMTP_PORT is a port number");
        let url = std::env::var("CONFIRMD_E2E_MAILDEV_URL")
            .expect("set CONFIRMD_E2E_MAILDEV_URL to maildev's web address");
        (
            port,
            Maildev {
                url,
                client: reqwest::Client::new(),
            },
        )
    }

    /// Polls maildev's REST API until an email to `to` is listed, and returns it.
    async fn wait_for_mail_to(&self, to: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            let mails: Vec<Value> = self
                .client
                .get(format!("{}/api/email", self.url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let found = mails.into_iter().find(|mail| {
                mail["to"].as_array().is_some_and(|to_list| {
                    to_list.iter().any(|r| r["address"].as_str() == Some(to))
                })
            });
            if let Some(mail) = found {
                return mail;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "maildev never received an email to {to}"
            );
        }
    }
}

fn link_in(text: &str) -> String {
    links::confirmation_link_in(text)
        .unwrap_or_else(|| panic!("no confirmation link in {text:?}"))
        .to_owned()
}

#[tokio::test]
#[ignore = "needs maildev; .ci/run starts it and runs this test"]
async fn both_modes_deliver_to_maildev_and_the_link_confirms() {
    let (smtp_port, maildev) = Maildev::from_env();
    let db = tempfile::tempdir().unwrap();
    // The link must point at the app, whose port is known only once it is bound: take a free one.
    let port = free_port();
    let mut settings = Settings::defaults();
    settings.server.listen = format!("127.0.0.1:{port}");
    settings.app.base_url = format!("http://127.0.0.1:{port}");
    settings.database.url = format!("sqlite://{}?mode=rwc", db.path().join("e2e.db").display());
    settings.smtp.port = smtp_port;
    let app = InProcessApp::start(settings).await;
    let client = reqwest::Client::new();
    let run = std::process::id();

    for (mode, expected) in [
        ("sync", StatusCode::CREATED),
        ("background", StatusCode::ACCEPTED),
    ] {
        let email = format!("e2e-{mode}-{run}@example.com");
        let response = client
            .post(format!("http://127.0.0.1:{port}/signups?mode={mode}"))
            .json(&serde_json::json!({ "email": email, "name": "End To End" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected);
        let id = response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();

        let mail = maildev.wait_for_mail_to(&email).await;
        assert_eq!(mail["subject"], "Confirm your email address");
        let link = link_in(mail["text"].as_str().unwrap());
        assert!(
            mail["html"].as_str().unwrap().contains(&link),
            "the HTML part has the same link"
        );
        println!("{mode}: maildev received the email to {email}; link {link}");

        // Opening the link confirms nothing (mail scanners open links); its button, a POST of
        // the token, confirms.
        let opened = client.get(&link).send().await.unwrap();
        assert_eq!(opened.status(), StatusCode::OK);
        let token = links::token_of(&link);
        let confirmed = client
            .post(format!("http://127.0.0.1:{port}/confirm"))
            .json(&serde_json::json!({ "token": token }))
            .send()
            .await
            .unwrap();
        assert_eq!(confirmed.status(), StatusCode::OK);
        let confirmed: Value = confirmed.json().await.unwrap();
        assert_eq!(confirmed["status"], "confirmed");
        assert_eq!(confirmed["already_confirmed"], false);
        let details: Value = client
            .get(format!("http://127.0.0.1:{port}/signups/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(details["delivery"]["state"], "sent");
    }

    app.stop().await;
}
