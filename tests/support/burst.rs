//! Bursts of signups from many clients, and what to ask of the mail they produced: the parts
//! the child-process tests share (tests/process.rs on one SQLite file, tests/multi_instance.rs
//! on one PostgreSQL database).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::process::ServiceHome;
use super::smtp::{ReceivedMail, SmtpServer};

/// `count` distinct addresses, `{label}-{i}@example.com`.
pub fn addresses(label: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("{label}-{i}@example.com"))
        .collect()
}

/// What a burst of signups came to, as its clients saw it.
#[derive(Debug, Default)]
pub struct Burst {
    /// Emails whose signup got the mode's success status: the service promised these.
    pub acknowledged: Vec<String>,
    /// Every status that came back, with how often.
    pub statuses: BTreeMap<u16, usize>,
    /// Answers whose body mentions SQLite's "database is locked".
    pub locked: usize,
    /// Requests that got no answer (refused, reset, timed out): when the client learnt it, and
    /// the error. A client stops at its first one.
    pub errors: Vec<(Instant, String)>,
    /// From the first request to the last answer.
    pub elapsed: Duration,
}

impl Burst {
    pub fn server_errors(&self) -> usize {
        self.statuses
            .iter()
            .filter(|(status, _)| **status >= 500)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn merge(&mut self, other: Burst) {
        self.acknowledged.extend(other.acknowledged);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.locked += other.locked;
        self.errors.extend(other.errors);
    }
}

/// Signs `emails` up in `mode` from `clients` concurrent clients, each with its own connection
/// and sending one request after another. `acknowledged` counts successes as they come, so the
/// test can act in the middle of the burst.
pub async fn burst(
    address: String,
    mode: &'static str,
    emails: Vec<String>,
    clients: usize,
    acknowledged: Arc<AtomicUsize>,
) -> Burst {
    let success = match mode {
        "sync" => StatusCode::CREATED,
        _ => StatusCode::ACCEPTED,
    };
    let url = format!("{address}/signups?mode={mode}");
    let emails = Arc::new(emails);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let (url, emails, next, acknowledged) = (
            url.clone(),
            Arc::clone(&emails),
            Arc::clone(&next),
            Arc::clone(&acknowledged),
        );
        tasks.spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a reqwest client");
            let mut seen = Burst::default();
            while let Some(email) = emails.get(next.fetch_add(1, Ordering::SeqCst)) {
                let answer = client
                    .post(&url)
                    .json(&serde_json::json!({ "email": email }))
                    .send()
                    .await;
                let response = match answer {
                    Ok(response) => response,
                    Err(e) => {
                        seen.errors.push((Instant::now(), e.to_string()));
                        break;
                    }
                };
                let status = response.status();
                // A body cut short by the server's death is a failed request too: the status
                // alone is not an acknowledgement the client could rely on.
                let body = match response.text().await {
                    Ok(body) => body,
                    Err(e) => {
                        seen.errors.push((Instant::now(), e.to_string()));
                        break;
                    }
                };
                *seen.statuses.entry(status.as_u16()).or_default() += 1;
                if body.contains("database is locked") {
                    seen.locked += 1;
                }
                if status == success {
                    seen.acknowledged.push(email.clone());
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                }
            }
            seen
        });
    }
    let mut all = Burst::default();
    while let Some(seen) = tasks.join_next().await {
        all.merge(seen.expect("a client task does not panic"));
    }
    all.elapsed = started.elapsed();
    all
}

/// How many copies of its email each recipient got.
pub fn copies_by_recipient(mail: &[ReceivedMail]) -> BTreeMap<String, usize> {
    let mut copies = BTreeMap::new();
    for message in mail {
        for recipient in &message.to {
            *copies.entry(recipient.to_ascii_lowercase()).or_default() += 1;
        }
    }
    copies
}

/// Extra copies beyond the first, over all recipients.
pub fn duplicates(copies: &BTreeMap<String, usize>) -> usize {
    copies.values().map(|n| n - 1).sum()
}

/// Polls until every `acknowledged` address got its email and the outbox holds only sent rows
/// (so nothing committed is still on its way), and returns the mail received by then.
pub async fn wait_until_delivered(
    smtp: &SmtpServer,
    home: &ServiceHome,
    acknowledged: &[String],
    patience: Duration,
) -> Vec<ReceivedMail> {
    let deadline = Instant::now() + patience;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let mail = smtp.received();
        let copies = copies_by_recipient(&mail);
        let missing: Vec<&String> = acknowledged
            .iter()
            .filter(|email| !copies.contains_key(*email))
            .collect();
        let states = home.outbox_states().await;
        let all_sent = states.keys().all(|state| state == "sent");
        if missing.is_empty() && all_sent {
            return mail;
        }
        assert!(
            Instant::now() < deadline,
            "after {patience:?}, {} of {} acknowledged emails have not arrived \
             (first few: {:?}); outbox by state: {states:?}",
            missing.len(),
            acknowledged.len(),
            &missing[..missing.len().min(5)],
        );
    }
}

/// Polls `condition` every 10 ms; panics with `what` if it is still false after `within`.
pub async fn wait_for(what: &str, within: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
    }
}
