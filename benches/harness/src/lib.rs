//! # confirmd-benches
//!
//! Two programs that put figures on confirmd's background delivery beside the baselines it is
//! measured against. They are programs that print numbers, not tests: nothing here passes or
//! fails on a threshold, and a shared or busy machine moves every figure.
//!
//! - `drain` (does the outbox drain as fast as a bare SMTP client?): from a backlog of queued emails, how fast do confirmd's outbox workers
//!   deliver to an SMTP catcher, against a raw sender at the same concurrency: lettre's own
//!   pooled transport, and confirmd's `Mailer` used directly with no database (the strict
//!   baseline: what is left is the outbox's own cost).
//! - `peer` (is confirmd's outbox at least as quick as the best Rust job queue?): confirmd's outbox against apalis with apalis-sqlite 1.0, on the same
//!   SQLite settings and worker count: enqueue-to-pick-up latency under a steady trickle, and
//!   drain rate from a backlog, for jobs that do nothing and jobs that send the email.
//!
//! Each measurement starts from a fresh SQLite file in a temporary folder. confirmd is driven
//! through its own library API ([`Store`](confirmd::store::Store),
//! [`Delivery`](confirmd::delivery::Delivery)), not over HTTP, so that only the queue is
//! measured; its workers send through a [`Transport`](confirmd::mail::Transport) that the
//! benchmark supplies ([`pickup::Observed`]), which is also how a pick-up is seen.

pub mod apalis_peer;
pub mod apalis_postgres_peer;
pub mod outbox;
pub mod pickup;
pub mod postgres;

use std::{
    fmt,
    future::Future,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use confirmd::{
    Settings,
    domain::ConfirmationToken,
    mail::{ConfirmationEmail, Mailer},
};
use lettre::Message;
use tokio::task::JoinSet;

/// Where the SMTP catcher listens: `host:port`.
#[derive(Debug, Clone)]
pub struct SmtpAddr {
    pub host: String,
    pub port: u16,
}

impl FromStr for SmtpAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not host:port"))?;
        let port = port
            .parse()
            .map_err(|_| format!("{port:?} is not a port number"))?;
        Ok(SmtpAddr {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for SmtpAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// confirmd's compiled-in defaults, sending to `smtp` and keeping `pool_size` SMTP connections.
pub fn settings(smtp: &SmtpAddr, pool_size: usize) -> anyhow::Result<Settings> {
    let mut settings = Settings::defaults();
    settings.smtp.host = smtp.host.clone();
    settings.smtp.port = smtp.port;
    settings.smtp.pool_size = u32::try_from(pool_size)?;
    Ok(settings)
}

/// The recipient of job `i`. Every program uses the same addresses, so a transport can tell
/// which job an email belongs to from its envelope alone.
pub fn address(i: usize) -> String {
    format!("job-{i}@example.com")
}

/// The job an address of [`address`] belongs to.
pub fn job_of(address: &str) -> Option<usize> {
    address
        .strip_prefix("job-")?
        .split_once('@')?
        .0
        .parse()
        .ok()
}

/// The confirmation email of job `i`, built by confirmd's own code with a fresh token, as a
/// worker builds it: what every sender in these benchmarks sends.
pub fn confirmation(mailer: &Mailer, i: usize) -> anyhow::Result<Message> {
    let token = ConfirmationToken::generate();
    let link = format!("http://127.0.0.1:3000/confirm?token={}", token.expose());
    let to = address(i);
    Ok(mailer.confirmation(&ConfirmationEmail {
        id: i as i64,
        to_address: &to,
        link: &link,
    })?)
}

/// How often a wait below looks again: fine enough for runs of seconds, cheap for the database.
pub const POLL: Duration = Duration::from_millis(5);

/// Asks `done` every [`POLL`] until it says yes; fails with `what` after `deadline`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    loop {
        if done()
            .await
            .with_context(|| format!("while waiting for {what}"))?
        {
            return Ok(());
        }
        if started.elapsed() > deadline {
            bail!("{what}: not reached within {deadline:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Sends emails `0..emails` from `concurrency` tasks, each taking the next number from a shared
/// counter; returns the time from the first task's start to the last email's acceptance.
pub async fn send_concurrently<F, Fut>(
    emails: usize,
    concurrency: usize,
    deadline: Duration,
    send: F,
) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (next, send) = (next.clone(), send.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= emails {
                    return Ok::<_, anyhow::Error>(());
                }
                send(i).await.with_context(|| format!("email {i}"))?;
            }
        });
    }
    let all = async {
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(deadline, all)
        .await
        .with_context(|| format!("not done within {deadline:?}"))??;
    Ok(started.elapsed())
}

/// Sends `emails` confirmation emails through confirmd's Mailer, `concurrency` at a time, and
/// forgets how long it took. A catcher just started (maildev is a Node process) answers its first
/// emails slowly; without this, whichever sender meets it first would pay for that.
pub async fn warm_up(
    smtp: &SmtpAddr,
    emails: usize,
    concurrency: usize,
    deadline: Duration,
) -> anyhow::Result<()> {
    if emails == 0 {
        return Ok(());
    }
    let settings = settings(smtp, concurrency)?;
    let mailer = Mailer::new(&settings.smtp, settings.mail_from())?;
    send_concurrently(emails, concurrency, deadline, move |i| {
        let mailer = mailer.clone();
        async move {
            mailer.send(confirmation(&mailer, i)?).await?;
            Ok(())
        }
    })
    .await
    .context("warming the catcher up")?;
    Ok(())
}

/// `count` over `took`, per second.
pub fn per_second(count: usize, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_found_from_its_address() {
        assert_eq!(job_of(&address(4711)), Some(4711));
        assert_eq!(job_of("ann@example.com"), None);
    }

    #[test]
    fn the_catcher_is_host_and_port() {
        let addr: SmtpAddr = "127.0.0.1:1025".parse().unwrap();
        assert_eq!((addr.host.as_str(), addr.port), ("127.0.0.1", 1025));
        assert!("127.0.0.1".parse::<SmtpAddr>().is_err());
    }
}
