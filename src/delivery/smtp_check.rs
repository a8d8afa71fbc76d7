//! Is the SMTP server answering? Checked here, in the background, every
//! `smtp.check_interval_ms`, and never on a probe's request path.
//!
//! SMTP is not part of readiness: background mode exists so that signups go on while SMTP is down,
//! and a load balancer that took every instance out during an SMTP outage would refuse exactly
//! the signups the outbox could have kept. So `/readyz` leaves SMTP alone, and this task reports it
//! instead: `/healthz` shows it as detail and `confirmd_smtp_up` in `/metrics` carries it to
//! dashboards and alerts.
//!
//! A check is one SMTP round trip (`NOOP` on a pooled connection, or a new connection's greeting
//! and EHLO) bounded by `smtp.timeout_ms`, under a connection permit like any send, so it never
//! opens a connection beyond `smtp.pool_size`. If every connection stays busy for a whole interval,
//! the server is evidently taking emails and the last answer stands.

use std::sync::atomic::{AtomicU8, Ordering};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Delivery;

/// What the last check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpStatus {
    /// No check has finished yet.
    Unknown,
    Up,
    Down,
}

impl SmtpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpStatus::Unknown => "unknown",
            SmtpStatus::Up => "up",
            SmtpStatus::Down => "down",
        }
    }
}

/// The last status, shared between the checker and the handlers.
#[derive(Debug, Default)]
pub(super) struct LastStatus(AtomicU8);

impl LastStatus {
    pub(super) fn get(&self) -> SmtpStatus {
        match self.0.load(Ordering::Relaxed) {
            1 => SmtpStatus::Up,
            2 => SmtpStatus::Down,
            _ => SmtpStatus::Unknown,
        }
    }

    /// Records a check's answer; returns the status before it.
    fn set(&self, up: bool) -> SmtpStatus {
        let before = self.get();
        self.0.store(if up { 1 } else { 2 }, Ordering::Relaxed);
        before
    }
}

pub(super) async fn run(delivery: Delivery, shutdown: CancellationToken) {
    let interval = delivery.inner.policy.smtp_check_interval;
    loop {
        let check = async {
            let mailer = delivery.mailer();
            let permit = mailer.connection_within(interval).await?;
            Some(mailer.ping(&permit).await)
        };
        let answer = tokio::select! {
            () = shutdown.cancelled() => break,
            answer = check => answer,
        };
        if let Some(up) = answer {
            delivery.metrics().set_smtp_up(up);
            match (delivery.inner.smtp.set(up), up) {
                (SmtpStatus::Down | SmtpStatus::Unknown, true) => info!("the SMTP server answers"),
                (SmtpStatus::Up | SmtpStatus::Unknown, false) => {
                    warn!("the SMTP server does not answer; emails wait in the outbox")
                }
                _ => {}
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    debug!("SMTP checker stopped");
}
