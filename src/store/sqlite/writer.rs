//! The group-commit writer: the one task that writes every signup, claim and send outcome, as
//! many to a transaction as are waiting when it starts one.
//!
//! Requests are handed to it over a channel and answered over a oneshot once the transaction
//! holding them has committed; [`group_commit`] explains why, and what happens on a fault.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::{
    Health,
    health::{PROBE_INTERVAL, is_storage_fault},
    outbox::{ClaimRequest, OutcomeRequest, claim_rows, record_outcomes},
    signup::{insert_new_users, write_signup},
};
use crate::store::{ClaimedEmail, NewSignup, StoreError, StoredSignup};

/// A request waiting for the writer, and where to send its answer.
pub(super) struct Pending<R, A> {
    pub(super) request: R,
    pub(super) answer: oneshot::Sender<Result<A, StoreError>>,
}

/// What the writer writes.
// Signups are the bulk of the queue, at their size since before claims joined them; boxing them
// would cost an allocation each to make room for the small ones.
#[allow(clippy::large_enum_variant)]
pub(super) enum Write {
    Signup(Pending<NewSignup, StoredSignup>),
    /// A sender's claim on a due row.
    Claim(Pending<ClaimRequest, Option<ClaimedEmail>>),
    /// What a send came to.
    Outcome(Pending<OutcomeRequest, ()>),
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Write::Signup(_) => "Write::Signup",
            Write::Claim(_) => "Write::Claim",
            Write::Outcome(_) => "Write::Outcome",
        })
    }
}

/// Most requests written in one transaction. Bounds the wait of the last one in a group.
const MAX_GROUP: usize = 64;

/// Requests waiting for the writer beyond which callers wait to hand theirs over.
pub(super) const QUEUE: usize = 1024;

/// What the store's callers see of the writer's queue.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    /// Signups handed to the writer and not answered yet: queued, or in the transaction it is
    /// writing.
    pub(super) signups: AtomicUsize,
    /// The most claims, and the most outcomes, one transaction held: for tests to see that
    /// they are grouped.
    #[cfg(test)]
    most_claims: AtomicUsize,
    #[cfg(test)]
    most_outcomes: AtomicUsize,
    /// Requests the writer has taken off its queue: for tests to know it is busy with them.
    #[cfg(test)]
    received: AtomicUsize,
}

/// The group-commit writer: one task that writes every signup, claim and send outcome, as many
/// per transaction as are waiting when it starts one.
///
/// SQLite commits are cheap in WAL mode, but statements are not free here: sqlx runs each
/// connection on its own thread, so every statement is a round trip between threads, and every
/// transaction a commit. A signup written alone takes five statements (a lookup, three inserts,
/// the commit). With workers sending, each email also costs a claim and an outcome, which alone
/// were two more transactions of one single-row statement each: half of the transactions of a
/// background signup. Requests that arrive while a transaction is being written wait for the
/// next one, and that one writes all of them with one statement per table for the new signups
/// (their rows passed as a JSON array), one statement for the claims and one per kind of
/// outcome (see [`super::outbox`]), so under load a group of thirty costs about what one signup
/// costs alone. Alone, a request is written at once: the writer never waits for company.
///
/// A group is written signups first, then claims, then outcomes. Any order would do: no request
/// of a group is answered before the group commits, so no caller can have acted on another's
/// effect, and each order amounts to the requests arriving one after the other in it. A claim
/// cannot be for a row written by a signup of its group (a row's id is known only once its
/// signup is answered), nor an outcome for a claim of its group (an outcome needs its claim's
/// answer). A claim of a row whose outcome (a retry due now) is in its group gets `None`, as it
/// would a moment earlier; the retried row is offered again.
///
/// Signing up again (an address that has a user, or one that appears twice in a group) takes the
/// statement-by-statement path, after the group's new users, so it sees them. A database error
/// about a request (a constraint) rolls the whole group back and each of its requests is then
/// written in a transaction of its own, so only the one at fault gets the error. A storage fault
/// (disk full, the lock held elsewhere, ...) fails the whole group at once: written one by one,
/// each request would only meet the fault again. A claim that fails is offered again by the
/// sweeper; an outcome that fails is kept by its sender and written again (see
/// `crate::delivery`).
///
/// Before each group the writer checks that the database file is still the one it opened, and
/// refuses the group if not. Once writes meet a storage fault, it refuses groups without trying
/// them and probes every [`PROBE_INTERVAL`] instead, so that signups get the same answer as
/// `/readyz` until the fault is gone, and it learns the fault is gone even with no signups
/// coming in (see [`super::health`]).
pub(super) async fn group_commit(
    writer: &SqlitePool,
    queue: &mut mpsc::Receiver<Write>,
    waiting: &Waiting,
    health: &Health,
) {
    let mut received = Vec::with_capacity(MAX_GROUP);
    let mut next_probe = tokio::time::Instant::now();
    loop {
        let count = if health.writes.fault().is_some() {
            tokio::select! {
                count = queue.recv_many(&mut received, MAX_GROUP) => count,
                () = tokio::time::sleep_until(next_probe) => {
                    probe(writer, health).await;
                    next_probe = tokio::time::Instant::now() + PROBE_INTERVAL;
                    continue;
                }
            }
        } else {
            tokio::select! {
                count = queue.recv_many(&mut received, MAX_GROUP) => count,
                // Another task's write met a fault: start probing.
                () = health.writes.fault_noticed() => continue,
            }
        };
        if count == 0 {
            break;
        }
        #[cfg(test)]
        waiting.received.fetch_add(count, Ordering::Relaxed);
        let group = Group::of(received.drain(..));
        // Answered one way or another from here, even if this run panics: then the group's
        // reply channels are dropped and each caller gets `WriterStopped`.
        let _answered = Answered {
            waiting,
            signups: group.signups.len(),
        };
        let requests = group.requests();
        #[cfg(test)]
        tests::panic_if_asked(&requests);
        let answers = write_or_refuse(writer, &requests, health).await;
        #[cfg(test)]
        if answers.committed {
            waiting
                .most_claims
                .fetch_max(requests.claims.len(), Ordering::Relaxed);
            waiting
                .most_outcomes
                .fetch_max(requests.outcomes.len(), Ordering::Relaxed);
        }
        drop(requests);
        group.answer(answers);
    }
}

/// A group's requests by kind, in the order they came.
#[derive(Default)]
struct Group {
    signups: Vec<Pending<NewSignup, StoredSignup>>,
    claims: Vec<Pending<ClaimRequest, Option<ClaimedEmail>>>,
    outcomes: Vec<Pending<OutcomeRequest, ()>>,
}

impl Group {
    fn of(writes: impl Iterator<Item = Write>) -> Group {
        let mut group = Group::default();
        for write in writes {
            match write {
                Write::Signup(p) => group.signups.push(p),
                Write::Claim(p) => group.claims.push(p),
                Write::Outcome(p) => group.outcomes.push(p),
            }
        }
        group
    }

    fn requests(&self) -> Requests<'_> {
        Requests {
            signups: self.signups.iter().map(|p| &p.request).collect(),
            claims: self.claims.iter().map(|p| &p.request).collect(),
            outcomes: self.outcomes.iter().map(|p| &p.request).collect(),
        }
    }

    fn answer(self, answers: Answers) {
        // A caller may have gone (its client hung up): what was written stands regardless.
        for (p, answer) in self.signups.into_iter().zip(answers.signups) {
            let _ = p.answer.send(answer);
        }
        for (p, answer) in self.claims.into_iter().zip(answers.claims) {
            let _ = p.answer.send(answer);
        }
        for (p, answer) in self.outcomes.into_iter().zip(answers.outcomes) {
            let _ = p.answer.send(answer);
        }
    }
}

/// What a group (or one of its requests, written alone) asks to write.
#[derive(Default)]
struct Requests<'a> {
    signups: Vec<&'a NewSignup>,
    claims: Vec<&'a ClaimRequest>,
    outcomes: Vec<&'a OutcomeRequest>,
}

impl<'a> Requests<'a> {
    /// Each request as a group of its own, in the order of [`Answers::extend`].
    fn each_alone(&self) -> impl Iterator<Item = Requests<'a>> + '_ {
        let signups = self.signups.iter().map(|&new| Requests {
            signups: vec![new],
            ..Requests::default()
        });
        let claims = self.claims.iter().map(|&claim| Requests {
            claims: vec![claim],
            ..Requests::default()
        });
        let outcomes = self.outcomes.iter().map(|&outcome| Requests {
            outcomes: vec![outcome],
            ..Requests::default()
        });
        signups.chain(claims).chain(outcomes)
    }

    /// The same error for each request.
    fn refuse(&self, mut error: impl FnMut() -> StoreError) -> Answers {
        Answers {
            signups: self.signups.iter().map(|_| Err(error())).collect(),
            claims: self.claims.iter().map(|_| Err(error())).collect(),
            outcomes: self.outcomes.iter().map(|_| Err(error())).collect(),
            committed: false,
        }
    }
}

/// A group's answers, in the order of its [`Requests`].
#[derive(Default)]
struct Answers {
    signups: Vec<Result<StoredSignup, StoreError>>,
    claims: Vec<Result<Option<ClaimedEmail>, StoreError>>,
    outcomes: Vec<Result<(), StoreError>>,
    /// Written in one transaction that committed.
    #[cfg_attr(not(test), allow(dead_code))]
    committed: bool,
}

impl Answers {
    fn extend(&mut self, other: Answers) {
        self.signups.extend(other.signups);
        self.claims.extend(other.claims);
        self.outcomes.extend(other.outcomes);
    }
}

/// Takes a group's signups off the count of signups waiting for the writer when it is answered.
struct Answered<'a> {
    waiting: &'a Waiting,
    signups: usize,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.waiting
            .signups
            .fetch_sub(self.signups, Ordering::Relaxed);
    }
}

/// Writes a group (see [`group_commit`]), or refuses it whole when the file is gone or the
/// storage is at fault, and tells `health` what the write showed.
async fn write_or_refuse(writer: &SqlitePool, group: &Requests<'_>, health: &Health) -> Answers {
    if let Err(StoreError::FileGone { path }) = health.same_file() {
        return group.refuse(|| StoreError::FileGone { path: path.clone() });
    }
    // Refused at once while the fault lasts, rather than each group meeting it again (and a
    // held lock's busy timeout with it): answers stay consistent with `/readyz`, and the probe
    // says within a second when the fault is gone.
    if let Some(fault) = health.writes.fault() {
        return group.refuse(|| StoreError::Unwritable(fault.clone()));
    }
    match write_group(writer, group).await {
        Ok(answers) => {
            // A refusal writes nothing, and a claim or an outcome rewrites a row in place, so
            // only a stored signup proves there is room for one.
            if answers.signups.iter().any(Result::is_ok) {
                health.writes.proven_writable();
            }
            answers
        }
        Err(error) if is_storage_fault(&error) => {
            health.writes.failed(&error);
            let fault = error.to_string();
            group.refuse(|| StoreError::Unwritable(fault.clone()))
        }
        Err(error) => {
            let alone: Vec<Requests> = group.each_alone().collect();
            if alone.len() == 1 {
                let mut error = Some(error);
                return group.refuse(|| StoreError::Database(error.take().expect("one request")));
            }
            let mut answers = Answers::default();
            let mut fault = None;
            for request in alone {
                // Once the storage itself fails, the rest would only meet the same fault, each
                // after its own busy timeout.
                if let Some(fault) = &fault {
                    answers.extend(request.refuse(|| StoreError::Unwritable(String::clone(fault))));
                    continue;
                }
                match write_group(writer, &request).await {
                    Ok(answer) => answers.extend(answer),
                    Err(error) => {
                        health.writes.failed(&error);
                        if is_storage_fault(&error) {
                            fault = Some(error.to_string());
                        }
                        let mut error = Some(error);
                        answers.extend(
                            request.refuse(|| {
                                StoreError::Database(error.take().expect("one request"))
                            }),
                        );
                    }
                }
            }
            answers
        }
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
/// whole group back; the inner ones are errors of single requests.
async fn write_group(writer: &SqlitePool, group: &Requests<'_>) -> Result<Answers, sqlx::Error> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    let signups = write_signups(&mut tx, &group.signups).await?;
    let claims = if group.claims.is_empty() {
        Vec::new()
    } else {
        claim_rows(&mut tx, &group.claims).await?
    };
    if !group.outcomes.is_empty() {
        record_outcomes(&mut tx, &group.outcomes).await?;
    }
    tx.commit().await?;
    Ok(Answers {
        signups: signups
            .into_iter()
            .map(|signup| {
                signup.map(|stored| StoredSignup {
                    group_size: group.signups.len(),
                    ..stored
                })
            })
            .collect(),
        claims,
        outcomes: group.outcomes.iter().map(|_| Ok(())).collect(),
        committed: true,
    })
}

/// A group's signups, inside its transaction: the new addresses together, then the others one
/// by one.
async fn write_signups(
    tx: &mut SqliteConnection,
    signups: &[&NewSignup],
) -> Result<Vec<Result<StoredSignup, StoreError>>, sqlx::Error> {
    if signups.is_empty() {
        return Ok(Vec::new());
    }
    // Which addresses are new? `users.email` holds each address's comparison key (see
    // `SubscriberEmail::key`); NOCASE, which folds ASCII only, still matches rows written before
    // keys were stored, as typed.
    let addresses: Vec<&str> = signups.iter().map(|new| new.email.key()).collect();
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
    let (fresh, again): (Vec<usize>, Vec<usize>) = (0..signups.len()).partition(|&i| {
        let key = signups[i].email.key().to_ascii_lowercase();
        !taken.contains(&key) && seen.insert(key)
    });

    let mut written: Vec<Option<Result<StoredSignup, StoreError>>> =
        signups.iter().map(|_| None).collect();
    let new_users: Vec<&NewSignup> = fresh.iter().map(|&i| signups[i]).collect();
    for (i, stored) in fresh
        .into_iter()
        .zip(insert_new_users(&mut *tx, &new_users).await?)
    {
        written[i] = Some(Ok(stored));
    }
    for i in again {
        written[i] = match write_signup(&mut *tx, signups[i]).await {
            Err(StoreError::Database(e)) => return Err(e),
            outcome => Some(outcome),
        };
    }
    Ok(written
        .into_iter()
        .map(|signup| signup.expect("every signup of the group was written or refused"))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::{future::Future, time::Duration};

    use futures_util::future::{join, join_all, join4};

    use super::*;
    use crate::{
        domain::{ConfirmationToken, DeliveryMode, SubscriberEmail, TokenNonce},
        store::{Claim, OutboxId, SqliteStore},
    };

    /// When the tests' tokens expire, unless a send extends them.
    const TOKEN_EXPIRES_AT: i64 = 1_000;

    const LEASE: Duration = Duration::from_secs(60);

    /// The address that makes the writer panic in these tests: a panic no input can cause in the
    /// service, so it is compiled into unit tests only.
    const PANIC_ADDRESS: &str = "panic@writer.test";

    pub(super) fn panic_if_asked(group: &Requests) {
        if group
            .signups
            .iter()
            .any(|new| new.email.as_str() == PANIC_ADDRESS)
        {
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
            token_expires_at: TOKEN_EXPIRES_AT,
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

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        SqliteStore::migrated_in_temp_dir().await
    }

    /// `count` queued rows, due now.
    async fn queued(store: &SqliteStore, count: usize) -> Vec<OutboxId> {
        let signups = (0..count).map(|i| store.create_signup(signup(&format!("u{i}@example.com"))));
        join_all(signups)
            .await
            .into_iter()
            .map(|stored| stored.unwrap().outbox_id)
            .collect()
    }

    async fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Runs `requests`, which hand `count` requests to the writer, so that the writer takes
    /// them all in one group: it is kept busy (its connection held, a request of its own in
    /// hand) until they all wait in its queue.
    async fn together<F: Future>(store: &SqliteStore, count: usize, requests: F) -> F::Output {
        let held = store.writer.acquire().await.unwrap();
        let received = store.waiting.received.load(Ordering::Relaxed);
        let busy = tokio::spawn({
            let store = store.clone();
            async move { store.claim(OutboxId(-1), LEASE).await }
        });
        wait_until("the writer takes its request", || {
            store.waiting.received.load(Ordering::Relaxed) > received
        })
        .await;
        let (output, ()) = tokio::join!(requests, async {
            wait_until("the requests wait in the queue", || {
                QUEUE - store.writes.capacity() == count
            })
            .await;
            drop(held);
        });
        assert!(busy.await.unwrap().unwrap().is_none());
        output
    }

    async fn row(store: &SqliteStore, id: OutboxId) -> (String, i64, Option<String>, i64) {
        sqlx::query_as(
            "SELECT o.state, o.next_attempt_at, o.last_error, t.expires_at
             FROM email_outbox o JOIN confirmation_tokens t ON t.token_hash = o.token_hash
             WHERE o.id = ?1",
        )
        .bind(id.0)
        .fetch_one(&store.reader)
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn claims_waiting_together_are_written_in_one_transaction() {
        let (_dir, store) = store().await;
        let ids = queued(&store, 32).await;

        let claims = join_all(ids.iter().map(|&id| store.claim(id, LEASE)));
        let claimed = together(&store, ids.len(), claims).await;

        assert_eq!(store.waiting.most_claims.load(Ordering::Relaxed), ids.len());
        let mut claim_ids = HashSet::new();
        for (&id, claimed) in ids.iter().zip(claimed) {
            let claimed = claimed.unwrap().expect("a due row is claimed");
            assert_eq!(claimed.claim.id, id);
            assert_eq!(claimed.attempts, 1);
            claim_ids.insert(claimed.claim.claim_id);
            assert_eq!(row(&store, id).await.0, "sending");
        }
        assert_eq!(
            claim_ids.len(),
            ids.len(),
            "each claim has an id of its own"
        );
    }

    #[tokio::test]
    async fn of_two_claims_of_one_row_in_one_transaction_only_one_gets_it() {
        let (_dir, store) = store().await;
        let id = queued(&store, 1).await[0];

        let claims = join(store.claim(id, LEASE), store.claim(id, LEASE));
        let (first, second) = together(&store, 2, claims).await;

        assert_eq!(store.waiting.most_claims.load(Ordering::Relaxed), 2);
        let (first, second) = (first.unwrap(), second.unwrap());
        assert_eq!(
            usize::from(first.is_some()) + usize::from(second.is_some()),
            1,
            "exactly one claim gets the row"
        );
        let claimed = first.or(second).unwrap();
        assert_eq!(claimed.attempts, 1);
    }

    #[tokio::test]
    async fn outcomes_written_together_are_each_fenced_by_their_claim() {
        let (_dir, store) = store().await;
        let ids = queued(&store, 2).await;
        let (a, b) = (ids[0], ids[1]);
        let current = |id| {
            let store = store.clone();
            async move { store.claim(id, LEASE).await.unwrap().unwrap().claim }
        };
        let (a_claim, b_claim) = (current(a).await, current(b).await);
        let stale = |claim: Claim| Claim {
            claim_id: claim.claim_id.wrapping_add(1),
            ..claim
        };

        // A: a stale sender gives up on it while the current one sent it. B: a stale sender
        // sent it while the current one is told to try again later.
        let outcomes = join4(
            store.mark_failed(stale(a_claim), "stale"),
            store.mark_sent(a_claim, 10, 5_000),
            store.mark_sent(stale(b_claim), 10, 9_000),
            store.mark_retry(b_claim, Duration::from_secs(3600), "later"),
        );
        let (failed, sent, stale_sent, retry) = together(&store, 4, outcomes).await;

        assert_eq!(store.waiting.most_outcomes.load(Ordering::Relaxed), 4);
        for written in [failed, sent, stale_sent, retry] {
            written.unwrap();
        }
        let (state, _, error, expires_at) = row(&store, a).await;
        assert_eq!((state.as_str(), error), ("sent", None));
        assert_eq!(
            expires_at, 5_000,
            "the current claim's send extends its link"
        );
        let (state, next_attempt_at, error, expires_at) = row(&store, b).await;
        assert_eq!(
            (state.as_str(), error.as_deref()),
            ("queued", Some("later"))
        );
        assert!(next_attempt_at > crate::clock::now_ms() + 3_000_000);
        assert_eq!(expires_at, TOKEN_EXPIRES_AT, "a stale send extends nothing");
    }

    #[tokio::test]
    async fn a_row_not_due_yet_is_not_claimed() {
        let (_dir, store) = store().await;
        let id = queued(&store, 1).await[0];
        let claim = store.claim(id, LEASE).await.unwrap().unwrap().claim;
        store
            .mark_retry(claim, Duration::from_secs(3600), "later")
            .await
            .unwrap();

        assert!(store.claim(id, LEASE).await.unwrap().is_none());
        assert_eq!(row(&store, id).await.0, "queued");
    }
}
