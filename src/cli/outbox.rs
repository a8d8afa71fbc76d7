//! `confirmd outbox`: the operator's view of the email queue, so that nothing fails silently.
//!
//! An email that ran out of attempts, or that the SMTP server rejected for good, ends up `failed`
//! with its last error, and stays there: it is never dropped. This command shows how the queue
//! stands and which emails failed and why, and puts failed emails back in the queue once the
//! cause is fixed. It works on the database directly, so it needs no running service; a running
//! service picks requeued emails up at its next sweep, without a restart.
//!
//! It also shows what the requests sent, which their senders are never told: confirmations,
//! account notices (to addresses already confirmed), and requests suppressed by the resend
//! interval.

use std::{process::ExitCode, time::Duration};

use serde_json::json;

use super::OutboxCommand;
use crate::{
    clock,
    store::{OutboxId, OutboxState, Requeue, Store},
};

/// How many failed emails `status` lists.
const FAILED_SHOWN: i64 = 50;
/// Longer errors are cut in the table (`--json` has them whole).
const ERROR_WIDTH: usize = 100;

pub async fn run(store: &Store, command: OutboxCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        OutboxCommand::Status => status(store, json).await,
        OutboxCommand::Retry { ids, failed } => retry(store, &ids, failed, json).await,
    }
}

async fn status(store: &Store, json: bool) -> anyhow::Result<ExitCode> {
    let counts = store.outbox_counts().await?;
    let kinds = store.outbox_kinds().await?;
    let now = clock::now_ms();
    let oldest_age = store
        .oldest_queued_at()
        .await?
        .map(|created| Duration::from_millis(u64::try_from(now - created).unwrap_or(0)));
    let failed = store.failed_emails(FAILED_SHOWN).await?;

    if json {
        let report = json!({
            "counts": {
                "queued": counts.queued,
                "sending": counts.sending,
                "sent": counts.sent,
                "failed": counts.failed,
                "superseded": counts.superseded,
            },
            "kinds": {
                "confirmation": kinds.confirmation,
                "account_notice": kinds.account_notice,
                "suppressed": kinds.suppressed,
            },
            "oldest_queued_age_s": oldest_age.map(|age| age.as_secs()),
            "failed": failed.iter().map(|email| json!({
                "id": email.id.0,
                "kind": email.kind.as_str(),
                "recipient": email.recipient,
                "attempts": email.attempts,
                "created_at": clock::rfc3339(email.created_at),
                "last_error": email.last_error,
            })).collect::<Vec<_>>(),
        });
        println!("{report:#}");
        return Ok(ExitCode::SUCCESS);
    }

    println!(
        "outbox: {} queued, {} sending, {} sent, {} failed, {} superseded",
        counts.queued, counts.sending, counts.sent, counts.failed, counts.superseded
    );
    println!(
        "requests: {} confirmations, {} account notices, {} suppressed (resend interval)",
        kinds.confirmation, kinds.account_notice, kinds.suppressed
    );
    match oldest_age {
        Some(age) => println!("oldest queued email: waiting for {}", human(age)),
        None => println!("oldest queued email: -"),
    }
    if failed.is_empty() {
        println!("no failed emails");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "\nfailed emails ({} of {}, newest first); `confirmd outbox retry ID` or `--failed` requeues them:",
        failed.len(),
        counts.failed
    );
    let width = failed
        .iter()
        .map(|email| email.recipient.len())
        .max()
        .unwrap_or(9)
        .max(9);
    println!(
        "{:>8}  {:<width$}  {:>8}  {:<24}  LAST ERROR",
        "ID", "RECIPIENT", "ATTEMPTS", "CREATED"
    );
    for email in &failed {
        println!(
            "{:>8}  {:<width$}  {:>8}  {:<24}  {}",
            email.id.0,
            email.recipient,
            email.attempts,
            clock::rfc3339(email.created_at),
            shorten(email.last_error.as_deref().unwrap_or("-"), ERROR_WIDTH),
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn retry(
    store: &Store,
    ids: &[i64],
    all_failed: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if all_failed {
        let requeued = store.requeue_all_failed().await?;
        if json {
            println!("{:#}", json!({ "requeued": requeued, "refused": [] }));
        } else {
            println!("requeued {requeued} failed email(s)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::ensure!(
        !ids.is_empty(),
        "name the emails to retry by id, or pass --failed for all"
    );

    let mut requeued = 0;
    let mut refused = Vec::new();
    for &id in ids {
        let reason = match store.requeue(OutboxId(id)).await? {
            Requeue::Requeued => {
                requeued += 1;
                continue;
            }
            Requeue::Unknown => "unknown".to_owned(),
            Requeue::NotFailed {
                state: OutboxState::Failed,
                status,
            } => {
                format!("its address is already {status}, left alone")
            }
            Requeue::NotFailed { state, .. } => format!("not failed (state {state}), left alone"),
        };
        refused.push((id, reason));
    }
    if json {
        let refused: Vec<_> = refused
            .iter()
            .map(|(id, why)| json!({ "id": id, "reason": why }))
            .collect();
        println!("{:#}", json!({ "requeued": requeued, "refused": refused }));
    } else {
        println!("requeued {requeued} failed email(s)");
        for (id, why) in &refused {
            eprintln!("{id}: {why}");
        }
    }
    Ok(if refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// `3m12s`, `2h05m`, `4d03h`: an age at a glance.
fn human(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(human(Duration::from_secs(7)), "7s");
        assert_eq!(human(Duration::from_secs(192)), "3m12s");
        assert_eq!(human(Duration::from_secs(2 * 3600 + 5 * 60)), "2h05m");
        assert_eq!(human(Duration::from_secs(4 * 86_400 + 3 * 3600)), "4d03h");
    }

    #[test]
    fn long_errors_are_cut_with_an_ellipsis() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("abcdefghijkl", 5), "abcd…");
    }
}
