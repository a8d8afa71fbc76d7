//! The group-commit writer: the one task that writes every signup, many to a transaction.
//!
//! Signups are handed to it over a channel and answered over a oneshot once the transaction
//! holding them has committed; [`group_commit`] explains why, and what happens on a fault.

use std::{
    collections::HashSet,
    sync::atomic::{AtomicUsize, Ordering},
};

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::{
    Health,
    health::{PROBE_INTERVAL, is_storage_fault},
    signup::{insert_new_users, write_signup},
};
use crate::store::{NewSignup, StoreError, StoredSignup};

/// A signup waiting for the group-commit writer, and where to send its outcome.
pub(super) struct PendingSignup {
    pub(super) new: NewSignup,
    pub(super) outcome: oneshot::Sender<Result<StoredSignup, StoreError>>,
}

impl std::fmt::Debug for PendingSignup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingSignup")
    }
}

/// Most signups written in one transaction. Bounds the wait of the last one in a batch.
const MAX_GROUP: usize = 64;

/// Signups waiting for the writer beyond which callers wait to hand theirs over.
pub(super) const SIGNUP_QUEUE: usize = 1024;

/// The group-commit writer: one task that writes every signup, as many per transaction as are
/// waiting when it starts one.
///
/// SQLite commits are cheap in WAL mode, but statements are not free here: sqlx runs each
/// connection on its own thread, so every statement is a round trip between threads. A signup
/// written alone takes five (a lookup, three inserts, the commit). Signups that arrive while a
/// transaction is being written wait for the next one, and that one writes all the new addresses
/// among them with one statement per table (their rows passed as a JSON array), so under load a
/// group of thirty costs about what one signup costs alone. Alone, a signup is written at once:
/// the writer never waits for company.
///
/// Signing up again (an address that has a user, or one that appears twice in a group) takes the
/// statement-by-statement path, after the group's new users, so it sees them. A database error
/// about the signups (a constraint) rolls the whole group back and each of its signups is then
/// written in a transaction of its own, so only the one at fault gets the error. A storage fault
/// (disk full, the lock held elsewhere, ...) fails the whole group at once: written one by one,
/// each signup would only meet the fault again.
///
/// Before each group the writer checks that the database file is still the one it opened, and
/// refuses the group if not. Once writes meet a storage fault, it refuses groups without trying
/// them and probes every [`PROBE_INTERVAL`] instead, so that signups get the same answer as
/// `/readyz` until the fault is gone, and it learns the fault is gone even with no signups
/// coming in (see [`super::health`]).
pub(super) async fn group_commit(
    writer: &SqlitePool,
    queue: &mut mpsc::Receiver<PendingSignup>,
    pending: &AtomicUsize,
    health: &Health,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut next_probe = tokio::time::Instant::now();
    loop {
        let received = if health.writes.fault().is_some() {
            tokio::select! {
                received = queue.recv_many(&mut group, MAX_GROUP) => received,
                () = tokio::time::sleep_until(next_probe) => {
                    probe(writer, health).await;
                    next_probe = tokio::time::Instant::now() + PROBE_INTERVAL;
                    continue;
                }
            }
        } else {
            tokio::select! {
                received = queue.recv_many(&mut group, MAX_GROUP) => received,
                // Another task's write met a fault: start probing.
                () = health.writes.fault_noticed() => continue,
            }
        };
        if received == 0 {
            break;
        }
        // Answered one way or another from here, even if this run panics: then the group's
        // reply channels are dropped and each caller gets `WriterStopped`.
        let _answered = Answered {
            pending,
            count: group.len(),
        };
        #[cfg(test)]
        tests::panic_if_asked(&group);
        let outcomes = write_or_refuse(writer, &group, health).await;
        for (signup, outcome) in group.drain(..).zip(outcomes) {
            // The caller may have gone (its client hung up): the signup stands regardless.
            let _ = signup.outcome.send(outcome);
        }
    }
}

/// Takes a group off the count of signups waiting for the writer when it is answered.
struct Answered<'a> {
    pending: &'a AtomicUsize,
    count: usize,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.pending.fetch_sub(self.count, Ordering::Relaxed);
    }
}

/// Writes a group (see [`group_commit`]), or refuses it whole when the file is gone or the
/// storage is at fault, and tells `health` what the write showed.
async fn write_or_refuse(
    writer: &SqlitePool,
    group: &[PendingSignup],
    health: &Health,
) -> Vec<Result<StoredSignup, StoreError>> {
    let refuse_all = |error: &dyn Fn() -> StoreError| group.iter().map(|_| Err(error())).collect();
    if let Err(StoreError::FileGone { path }) = health.same_file() {
        return refuse_all(&|| StoreError::FileGone { path: path.clone() });
    }
    // Refused at once while the fault lasts, rather than each group meeting it again (and a
    // held lock's busy timeout with it): answers stay consistent with `/readyz`, and the probe
    // says within a second when the fault is gone.
    if let Some(fault) = health.writes.fault() {
        return refuse_all(&|| StoreError::Unwritable(fault.clone()));
    }
    match write_group(writer, group).await {
        Ok(outcomes) => {
            // A refusal writes nothing, so only a stored signup proves there is room for one.
            if outcomes.iter().any(Result::is_ok) {
                health.writes.proven_writable();
            }
            outcomes
        }
        Err(error) if is_storage_fault(&error) => {
            health.writes.failed(&error);
            let fault = error.to_string();
            refuse_all(&|| StoreError::Unwritable(fault.clone()))
        }
        Err(_) if group.len() > 1 => {
            let mut outcomes = Vec::with_capacity(group.len());
            for signup in group {
                let outcome = write_alone(writer, &signup.new).await;
                if let Err(StoreError::Database(error)) = &outcome {
                    health.writes.failed(error);
                }
                outcomes.push(outcome);
            }
            outcomes
        }
        Err(error) => vec![Err(error.into())],
    }
}

/// Bytes the probe writes: more than a signup's rows and index entries take, even when each of
/// its B-trees splits a page, so a probe that finds room means a signup finds room too.
const PROBE_BYTES: i64 = 64 * 1024;

/// A write that needs what a signup needs: the write lock, free pages (taken from the free list
/// or by growing the file, which `max_page_count` and a full disk refuse) and a commit.
async fn probe(writer: &SqlitePool, health: &Health) {
    if health.same_file().is_err() {
        return;
    }
    let written: Result<(), sqlx::Error> = async {
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query!(
            "INSERT INTO write_probe (room) VALUES (zeroblob(?1))",
            PROBE_BYTES
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!("DELETE FROM write_probe")
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
    .await;
    match written {
        Ok(()) => health.writes.proven_writable(),
        Err(error) => health.writes.failed(&error),
    }
}

/// Writes a group in one transaction. The outer error is a database error that rolled the
/// whole group back; the inner ones are errors of single signups.
async fn write_group(
    writer: &SqlitePool,
    group: &[PendingSignup],
) -> Result<Vec<Result<StoredSignup, StoreError>>, sqlx::Error> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;

    // Which addresses are new? `users.email` holds each address's comparison key (see
    // `SubscriberEmail::key`); NOCASE, which folds ASCII only, still matches rows written before
    // keys were stored, as typed.
    let addresses: Vec<&str> = group.iter().map(|p| p.new.email.key()).collect();
    let addresses = serde_json::to_string(&addresses).expect("strings serialize");
    let taken: HashSet<String> = sqlx::query_scalar!(
        r#"SELECT email AS "email!" FROM users
           WHERE email IN (SELECT value FROM json_each(?1))"#,
        addresses
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|email| email.to_ascii_lowercase())
    .collect();
    let mut seen = HashSet::new();
    let (fresh, again): (Vec<usize>, Vec<usize>) = (0..group.len()).partition(|&i| {
        let key = group[i].new.email.key().to_ascii_lowercase();
        !taken.contains(&key) && seen.insert(key)
    });

    let mut outcomes: Vec<Option<Result<StoredSignup, StoreError>>> =
        group.iter().map(|_| None).collect();
    let signups: Vec<&NewSignup> = fresh.iter().map(|&i| &group[i].new).collect();
    for (i, stored) in fresh
        .into_iter()
        .zip(insert_new_users(&mut tx, &signups).await?)
    {
        outcomes[i] = Some(Ok(stored));
    }
    for i in again {
        outcomes[i] = match write_signup(&mut tx, &group[i].new).await {
            Err(StoreError::Database(e)) => return Err(e),
            outcome => Some(outcome),
        };
    }
    tx.commit().await?;

    Ok(outcomes
        .into_iter()
        .map(|outcome| {
            let mut outcome = outcome.expect("every signup of the group was written or refused");
            if let Ok(stored) = &mut outcome {
                stored.group_size = group.len();
            }
            outcome
        })
        .collect())
}

/// One signup in a transaction of its own: the fall-back when its group failed.
async fn write_alone(writer: &SqlitePool, new: &NewSignup) -> Result<StoredSignup, StoreError> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    let stored = write_signup(&mut tx, new).await?;
    tx.commit().await?;
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        domain::{ConfirmationToken, DeliveryMode, SubscriberEmail, TokenNonce},
        store::SqliteStore,
    };

    /// The address that makes the writer panic in these tests: a panic no input can cause in the
    /// service, so it is compiled into unit tests only.
    const PANIC_ADDRESS: &str = "panic@writer.test";

    pub(super) fn panic_if_asked(group: &[PendingSignup]) {
        if group.iter().any(|p| p.new.email.as_str() == PANIC_ADDRESS) {
            panic!("injected writer panic");
        }
    }

    fn signup(address: &str) -> NewSignup {
        let token = ConfirmationToken::generate();
        NewSignup {
            signup_id: address.to_owned(),
            email: SubscriberEmail::parse(address).unwrap(),
            name: None,
            nonce: TokenNonce::generate(),
            token_hash: token.hash(),
            token_expires_at: i64::MAX,
            mode: DeliveryMode::Background,
            request_id: None,
            trace_context: None,
            claim_for: None,
            resend_interval_ms: 0,
            now: 1,
        }
    }

    #[tokio::test]
    async fn a_writer_that_panics_answers_its_group_with_an_error_and_is_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let store = SqliteStore::connect_capped(&url, 2, 0).await.unwrap();
        store.migrate().await.unwrap();

        // The signup in hand when the writer panics gets an answer, not a hang.
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            store.create_signup(signup(PANIC_ADDRESS)),
        )
        .await
        .expect("answered");
        assert!(matches!(answer, Err(StoreError::WriterStopped)));
        assert_eq!(store.tasks().restarts("writer"), 1);
        assert_eq!(store.signups_pending(), 0);

        // The next signup waits in the queue for the restarted writer and is written.
        let stored = tokio::time::timeout(
            Duration::from_secs(10),
            store.create_signup(signup("ann@example.com")),
        )
        .await
        .expect("answered")
        .unwrap();
        assert_eq!(stored.email, "ann@example.com");
        assert!(store.tasks().down().is_empty());
    }
}
