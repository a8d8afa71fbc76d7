//! The store on its own: the outbox's state machine (a sender whose lease ran out cannot
//! overwrite the outcome of the sender that took its row over) on both engines, SQLite's
//! group-commit writer, retention (what the pruner deletes, in bounded batches) on both engines,
//! and on PostgreSQL what several instances on one database must not break.

use std::time::Duration;

use confirmd::{
    domain::{DeliveryMode, SubscriberEmail, TokenHash, TokenNonce},
    secret::TokenKey,
    store::{EmailKind, NewSignup, Prune, Store, StoreError, StoredSignup},
};
use sqlx::{Connection, SqliteConnection};
use tokio::time::Instant;

async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("db.sqlite").display()
    );
    let store = Store::connect(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn a_sender_whose_lease_expired_cannot_overwrite_the_next_senders_outcome() {
    let (_dir, store) = store().await;
    lease_fencing(&store, &store).await;
}

/// Sender A claims a row on `a_store` with a lease that runs out at once, and stalls; the
/// sweeper takes the row back and sender B claims it on `b_store` (another instance, on
/// PostgreSQL). Whatever A reports late changes nothing: B's claim id fences the row.
async fn lease_fencing(a_store: &Store, b_store: &Store) {
    let new = NewSignup {
        token_expires_at: 10_000,
        resend_interval_ms: 0,
        ..signup("ann@example.com", 1_000)
    };
    let token_hash = new.token_hash.clone();
    let stored = a_store.create_signup(new).await.unwrap();

    let a = a_store
        .claim(stored.outbox_id, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.attempts, 1);
    // The lease ends at the millisecond it was taken: taken back once the clock moves on.
    let deadline = Instant::now() + Duration::from_secs(5);
    while b_store.reclaim_expired_leases(&[]).await.unwrap() == 0 {
        assert!(
            Instant::now() < deadline,
            "the expired lease was never taken back"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Sender B takes the row over with its own claim.
    let b = b_store
        .claim(stored.outbox_id, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.attempts, 2);
    assert_ne!(a.claim, b.claim);

    // A wakes up and reports a failure: it must change nothing.
    a_store
        .mark_retry(a.claim, Duration::ZERO, "A's late failure")
        .await
        .unwrap();
    a_store
        .mark_failed(a.claim, "A's late give-up")
        .await
        .unwrap();
    let view = b_store.signup(&stored.signup_id).await.unwrap().unwrap();
    assert_eq!(view.state.as_str(), "sending", "B still holds the row");

    // B's outcome is the one recorded, and the link is valid for a full TTL from the send.
    b_store.mark_sent(b.claim, 2_500, 50_000).await.unwrap();
    let view = b_store.signup(&stored.signup_id).await.unwrap().unwrap();
    assert_eq!(view.state.as_str(), "sent");
    assert_eq!(view.sent_at, Some(2_500));
    let owner = b_store.token_owner(&token_hash).await.unwrap().unwrap();
    assert_eq!(owner.expires_at, 50_000);
    // And A's late success does not undo it either.
    a_store.mark_sent(a.claim, 2_600, 60_000).await.unwrap();
    let view = b_store.signup(&stored.signup_id).await.unwrap().unwrap();
    assert_eq!(view.sent_at, Some(2_500));
}

#[tokio::test]
async fn senders_asking_at_once_each_get_their_own_row_and_outcome() {
    let (_dir, store) = store().await;
    senders_at_once(&store).await;
}

/// A worker pool's writes, all at once, as the store batches them: every row asked for by two
/// senders at the same moment is claimed once, and outcomes written together land on their own
/// rows only, fenced by their claims. A late report of a stale claim, in the same batch as the
/// live one, changes nothing: not the state, not the link's expiry.
async fn senders_at_once(store: &Store) {
    const ROWS: usize = 40;
    let mut rows = Vec::new();
    for i in 0..ROWS {
        let new = NewSignup {
            token_expires_at: 10_000,
            ..signup(&format!("batch{i}@example.com"), 1_000)
        };
        let hash = new.token_hash.clone();
        rows.push((store.create_signup(new).await.unwrap(), hash));
    }

    let mut claims = tokio::task::JoinSet::new();
    for (stored, _) in rows.iter().chain(&rows) {
        let (store, id) = (store.clone(), stored.outbox_id);
        claims.spawn(async move { store.claim(id, Duration::from_secs(60)).await });
    }
    let mut claimed = std::collections::HashMap::new();
    while let Some(claim) = claims.join_next().await {
        if let Some(email) = claim.unwrap().unwrap() {
            assert_eq!(email.attempts, 1);
            let first = claimed.insert(email.claim.id, email.claim);
            assert!(first.is_none(), "row {} claimed twice", email.claim.id);
        }
    }
    assert_eq!(claimed.len(), ROWS, "every row claimed once");

    // The first half sent, a quarter retried, a quarter failed; each also reported, at the
    // same time, by a sender holding a stale claim with a different outcome.
    let mut outcomes = tokio::task::JoinSet::new();
    for (i, (stored, _)) in rows.iter().enumerate() {
        let claim = claimed[&stored.outbox_id];
        let stale = confirmd::store::Claim {
            claim_id: claim.claim_id.wrapping_add(1),
            ..claim
        };
        let link_until = 50_000 + i as i64;
        for (claim, outcome) in [(claim, i * 4 / ROWS), (stale, (i * 4 / ROWS + 2) % 4)] {
            let store = store.clone();
            outcomes.spawn(async move {
                match outcome {
                    0 | 1 => store.mark_sent(claim, 2_000, link_until).await,
                    2 => {
                        store
                            .mark_retry(claim, Duration::from_secs(3600), "busy")
                            .await
                    }
                    _ => store.mark_failed(claim, "refused").await,
                }
            });
        }
    }
    while let Some(written) = outcomes.join_next().await {
        written.unwrap().unwrap();
    }

    for (i, (stored, hash)) in rows.iter().enumerate() {
        let view = store.signup(&stored.signup_id).await.unwrap().unwrap();
        let expires_at = store.token_owner(hash).await.unwrap().unwrap().expires_at;
        let expected = match i * 4 / ROWS {
            0 | 1 => "sent",
            2 => "queued",
            _ => "failed",
        };
        assert_eq!(view.state.as_str(), expected, "row {i}");
        if expected == "sent" {
            assert_eq!(view.sent_at, Some(2_000), "row {i}");
            assert_eq!(
                expires_at,
                50_000 + i as i64,
                "row {i}: the link runs from the send"
            );
        } else {
            assert_eq!(view.sent_at, None, "row {i}");
            assert_eq!(
                expires_at, 10_000,
                "row {i}: a stale claim's send moves no link"
            );
        }
    }
}

#[tokio::test]
async fn a_sender_whose_row_was_taken_first_takes_another_due_row() {
    let (_dir, store) = store().await;
    take_over(&store, &store).await;
}

/// Sender A claims a row; sender B, offered the same row (on PostgreSQL, by its own
/// instance's sweeper), finds it taken and claims the oldest row still due instead, and so on
/// until nothing is due.
async fn take_over(a: &Store, b: &Store) {
    let mut ids = Vec::new();
    for i in 0..3 {
        let stored = a
            .create_signup(signup(&format!("over{i}@example.com"), 1_000))
            .await
            .unwrap();
        ids.push(stored.outbox_id);
    }
    let lease = Duration::from_secs(60);
    let first = a.claim(ids[0], lease).await.unwrap().unwrap();
    assert_eq!(first.claim.id, ids[0]);
    assert!(b.claim(ids[0], lease).await.unwrap().is_none());

    let mut taken = Vec::new();
    for store in [b, a] {
        let email = store.claim_next_due(lease).await.unwrap().unwrap();
        assert_eq!(email.attempts, 1);
        taken.push(email.claim.id);
    }
    taken.sort_by_key(|id| id.0);
    assert_eq!(taken, ids[1..], "the other two rows, once each");
    assert!(
        b.claim_next_due(lease).await.unwrap().is_none(),
        "nothing left"
    );
    assert_eq!(b.outbox_counts().await.unwrap().sending, 3);
}

#[tokio::test]
async fn a_sent_outcome_claims_the_row_due_next_with_it() {
    let (_dir, store) = store().await;
    sent_then_next(&store, &store).await;
}

/// A sender going through a backlog records a sent email and claims the oldest due row in one
/// write; another sender's claim meanwhile takes a row of its own, and when nothing is due the
/// outcome is still written and nothing is claimed.
async fn sent_then_next(a: &Store, b: &Store) {
    let mut ids = Vec::new();
    for i in 0..3 {
        let stored = a
            .create_signup(signup(&format!("next{i}@example.com"), 1_000))
            .await
            .unwrap();
        ids.push(stored.outbox_id);
    }
    let lease = Duration::from_secs(60);
    let far = now_ms() + 3_600_000;
    let first = a.claim_next_due(lease).await.unwrap().unwrap();
    let second = a
        .mark_sent_and_claim_next(first.claim, now_ms(), far, lease)
        .await
        .unwrap()
        .expect("a row still due");
    assert_eq!(second.attempts, 1);
    let counts = a.outbox_counts().await.unwrap();
    assert_eq!((counts.sent, counts.sending, counts.queued), (1, 1, 1));

    let third = b.claim_next_due(lease).await.unwrap().unwrap();
    let mut taken = vec![first.claim.id, second.claim.id, third.claim.id];
    taken.sort_by_key(|id| id.0);
    assert_eq!(taken, ids, "each row once");
    assert!(
        a.mark_sent_and_claim_next(second.claim, now_ms(), far, lease)
            .await
            .unwrap()
            .is_none(),
        "nothing left that no sender holds"
    );
    let counts = a.outbox_counts().await.unwrap();
    assert_eq!((counts.sent, counts.sending, counts.queued), (2, 1, 0));
    // The outcome carries the sent link's expiry to its token, as `mark_sent` does.
    let hash = second.token_hash.expect("a confirmation's token");
    let owner = a.token_owner(&hash).await.unwrap().unwrap();
    assert_eq!(owner.expires_at, far);
}

#[tokio::test]
async fn the_pruner_deletes_what_is_old_enough_and_keeps_the_rest() {
    let (_dir, store) = store().await;
    retention(&store).await;
}

#[tokio::test]
async fn a_prune_deletes_in_batches_of_at_most_its_limit() {
    let (_dir, store) = store().await;
    prune_batches(&store).await;
}

#[tokio::test]
async fn one_pass_deletes_every_expired_signup_whatever_its_number_of_tokens() {
    let (_dir, store) = store().await;
    prune_signed_up_twice(&store).await;
}

/// Milliseconds since the Unix epoch, as the process reads them.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Waits until both clocks (the process's, and the database's, which PostgreSQL's rows are
/// stamped by) are past `time`, so rows written next are younger than it.
async fn clocks_past(store: &Store, time: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let probe = store
            .create_signup(signup(&format!("clock{}@example.com", now_ms()), now_ms()))
            .await
            .unwrap();
        let written = store.signup(&probe.signup_id).await.unwrap().unwrap();
        if written.created_at > time && now_ms() > time {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the clock never moved past {time}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A background signup of `email` whose row is claimed and marked sent, its link valid until
/// `link_expires_at`; returns it and its token's hash.
async fn sent(store: &Store, email: &str, link_expires_at: i64) -> (StoredSignup, TokenHash) {
    let new = NewSignup {
        token_expires_at: link_expires_at,
        ..signup(email, now_ms())
    };
    sent_signup(store, new).await
}

/// `new` written, its row claimed and marked sent, its link valid until its token expires;
/// returns it and its token's hash.
async fn sent_signup(store: &Store, new: NewSignup) -> (StoredSignup, TokenHash) {
    let link_expires_at = new.token_expires_at;
    let hash = new.token_hash.clone();
    let stored = store.create_signup(new).await.unwrap();
    let claimed = store
        .claim(stored.outbox_id, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    store
        .mark_sent(claimed.claim, now_ms(), link_expires_at)
        .await
        .unwrap();
    (stored, hash)
}

/// Rows written before a cutoff go, rows written after it stay, and each rule spares what it
/// must: a signup with a live link, a failed email younger than the failed age (and its
/// signup), confirmed users.
async fn retention(store: &Store) {
    let far = now_ms() + 3_600_000;
    let past = now_ms() - 1;
    // Written before the cutoff.
    let (old, _) = sent(store, "old@example.com", far).await;
    let (expired, expired_hash) = sent(store, "expired@example.com", past).await;
    let (live, live_hash) = sent(store, "live@example.com", far).await;
    let (confirmed, confirmed_hash) = sent(store, "confirmed@example.com", past).await;
    let owner = store.token_owner(&confirmed_hash).await.unwrap().unwrap();
    assert!(store.confirm(&owner, now_ms()).await.unwrap());
    let failed_signup = NewSignup {
        token_expires_at: past,
        ..signup("failed@example.com", now_ms())
    };
    let failed_hash = failed_signup.token_hash.clone();
    let failed = store.create_signup(failed_signup).await.unwrap();
    let claimed = store
        .claim(failed.outbox_id, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    store.mark_failed(claimed.claim, "refused").await.unwrap();
    let failed_at = store
        .signup(&failed.signup_id)
        .await
        .unwrap()
        .unwrap()
        .created_at;
    let cutoff = now_ms().max(failed_at) + 1;
    clocks_past(store, cutoff).await;
    // Written after it.
    let (young, _) = sent(store, "young@example.com", far).await;
    let shown = |stored: &StoredSignup| {
        let id = stored.signup_id.clone();
        async move { store.signup(&id).await.unwrap().is_some() }
    };

    // Sent emails written before the cutoff go (the probes' queued rows stay); younger stay.
    let done = Prune::DoneEmails {
        written_before: cutoff,
    };
    assert_eq!(store.prune(done, 500).await.unwrap().rows, 4);
    assert_eq!(store.prune(done, 500).await.unwrap().rows, 0);
    for gone in [&old, &expired, &live, &confirmed] {
        assert!(!shown(gone).await, "{} was kept", gone.email);
    }
    assert!(shown(&young).await);

    // A failed email younger than the failed age stays, and keeps its expired signup.
    let young_failed = Prune::FailedEmails {
        written_before: failed_at,
    };
    assert_eq!(store.prune(young_failed, 500).await.unwrap().rows, 0);
    // Every token was created before the cutoff (the store reads only those).
    let signups = Prune::ExpiredSignups {
        expired_before: now_ms(),
        created_before: cutoff,
        failed_since: failed_at,
    };
    // Only the signup whose every link expired goes: the live link, the confirmed user and
    // the young failure keep theirs.
    assert_eq!(store.prune(signups, 500).await.unwrap().rows, 1);
    assert!(store.token_owner(&expired_hash).await.unwrap().is_none());
    assert!(store.token_owner(&live_hash).await.unwrap().is_some());
    assert!(store.token_owner(&failed_hash).await.unwrap().is_some());
    assert!(shown(&failed).await);

    // Once the failed email is past the failed age, it goes, and its signup with it.
    let old_failed = Prune::FailedEmails {
        written_before: cutoff,
    };
    assert_eq!(store.prune(old_failed, 500).await.unwrap().rows, 1);
    assert!(!shown(&failed).await);
    let signups = Prune::ExpiredSignups {
        expired_before: now_ms(),
        created_before: cutoff,
        failed_since: cutoff,
    };
    assert_eq!(store.prune(signups, 500).await.unwrap().rows, 1);
    assert!(store.token_owner(&failed_hash).await.unwrap().is_none());

    // The confirmed user's expired token goes; the user stays, and is sent the account notice.
    let tokens = Prune::ExpiredTokens {
        expired_before: now_ms(),
        created_before: cutoff,
    };
    assert_eq!(store.prune(tokens, 500).await.unwrap().rows, 1);
    assert!(store.token_owner(&confirmed_hash).await.unwrap().is_none());
    let again = store
        .create_signup(NewSignup {
            resend_interval_ms: 0,
            ..signup("confirmed@example.com", now_ms())
        })
        .await
        .unwrap();
    assert_eq!(again.kind, EmailKind::AccountNotice);
}

/// 35 old sent rows, pruned 10 at a time: four statements, the last one short.
async fn prune_batches(store: &Store) {
    for i in 0..35 {
        sent(
            store,
            &format!("batch{i}@example.com"),
            now_ms() + 3_600_000,
        )
        .await;
    }
    let cutoff = now_ms() + 1;
    clocks_past(store, cutoff).await;
    let done = Prune::DoneEmails {
        written_before: cutoff,
    };
    let mut batches = Vec::new();
    loop {
        let pruned = store.prune(done, 10).await.unwrap();
        batches.push(pruned.rows);
        if !pruned.full {
            break;
        }
    }
    assert_eq!(batches, [10, 10, 10, 5]);
    assert_eq!(store.outbox_counts().await.unwrap().sent, 0);
}

/// Pending users who signed up twice, both links expired: a batch that finds them by their
/// tokens reports itself full until the last is gone, so one pass of batches deletes them all
/// (a batch of two that took both tokens of one user used to come back short, and the pass
/// stopped with users left).
async fn prune_signed_up_twice(store: &Store) {
    let past = now_ms() - 1;
    let mut hashes = Vec::new();
    for i in 0..3 {
        for _ in 0..2 {
            // Each token younger than the last on both clocks, so that the pick's order by
            // creation takes a user's two tokens together (PostgreSQL orders ties as it likes).
            clocks_past(store, now_ms()).await;
            let new = NewSignup {
                token_expires_at: past,
                resend_interval_ms: 0,
                ..signup(&format!("twice{i}@example.com"), now_ms())
            };
            hashes.push(sent_signup(store, new).await.1);
        }
    }
    let cutoff = now_ms() + 1;
    clocks_past(store, cutoff).await;
    let signups = Prune::ExpiredSignups {
        expired_before: cutoff,
        created_before: cutoff,
        failed_since: cutoff,
    };
    let mut deleted = 0;
    loop {
        let pruned = store.prune(signups, 2).await.unwrap();
        deleted += pruned.rows;
        if !pruned.full {
            break;
        }
    }
    assert_eq!(deleted, 3, "users deleted in one pass");
    for hash in &hashes {
        assert!(store.token_owner(hash).await.unwrap().is_none());
    }
}

/// A background signup for `email` at `now`, with a resend interval of a minute.
fn signup(email: &str, now: i64) -> NewSignup {
    let nonce = TokenNonce::generate();
    let token_hash = TokenKey::new(&"k".repeat(32)).token_for(&nonce).hash();
    NewSignup {
        signup_id: uuid::Uuid::now_v7().to_string(),
        email: SubscriberEmail::parse(email).unwrap(),
        name: None,
        nonce,
        token_hash,
        token_expires_at: now + 3_600_000,
        mode: DeliveryMode::Background,
        request_id: None,
        trace_context: None,
        claim_for: None,
        resend_interval_ms: 60_000,
        now,
    }
}

/// A connection that holds what the store's writes need (SQLite's write lock, PostgreSQL's
/// `users` table) until it commits: the store's writes wait for it meanwhile.
trait HeldLock {
    async fn release(self);
}

impl HeldLock for SqliteConnection {
    async fn release(mut self) {
        sqlx::query("COMMIT").execute(&mut self).await.unwrap();
    }
}

/// Holds SQLite's write lock from another connection, as a second process would, until dropped
/// or released; the store's writer waits for it (busy timeout) meanwhile.
async fn hold_write_lock(dir: &tempfile::TempDir) -> SqliteConnection {
    let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// Starts `signups` and waits until every one of them is with the writer, blocked behind the
/// lock: queued, or in the transaction it is trying to begin.
async fn hand_to_blocked_writer(
    store: &Store,
    signups: Vec<NewSignup>,
) -> Vec<tokio::task::JoinHandle<Result<StoredSignup, StoreError>>> {
    let count = signups.len();
    let tasks = signups
        .into_iter()
        .map(|new| {
            let store = store.clone();
            tokio::spawn(async move { store.create_signup(new).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    while store.signups_pending() < count {
        assert!(
            Instant::now() < deadline,
            "the signups never reached the writer"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tasks
}

#[tokio::test]
async fn signups_that_arrive_while_the_writer_waits_are_committed_together() {
    let (dir, store) = store().await;
    let lock = hold_write_lock(&dir).await;
    committed_together(&store, lock).await;
}

/// Signups handed to the store while its writes wait on `lock` share transactions.
async fn committed_together(store: &Store, lock: impl HeldLock) {
    let tasks = hand_to_blocked_writer(
        store,
        (0..10)
            .map(|i| signup(&format!("user{i}@example.com"), 1_000))
            .collect(),
    )
    .await;
    lock.release().await;

    let mut group_sizes = Vec::new();
    for task in tasks {
        group_sizes.push(task.await.unwrap().unwrap().group_size);
    }
    // The writer took the first arrivals into one transaction and then waited for the lock;
    // everyone who came meanwhile shares the next: two commits at most, not ten.
    let commits: f64 = group_sizes.iter().map(|&n| 1.0 / n as f64).sum();
    assert!(commits.round() <= 2.0, "group sizes {group_sizes:?}");
    assert_eq!(store.outbox_counts().await.unwrap().queued, 10);
    assert_eq!(store.signups_pending(), 0);
}

#[tokio::test]
async fn a_signup_again_in_a_group_gets_the_email_its_address_calls_for() {
    let (dir, store) = store().await;
    again_in_a_group(&store, async || hold_write_lock(&dir).await).await;
}

/// Signups of addresses that have a user, or that appear twice, written in one group with new
/// ones (their writes held back by the lock `hold` takes): each gets the email its address calls
/// for, the second of two seeing the first.
async fn again_in_a_group<L: HeldLock>(store: &Store, hold: impl AsyncFnOnce() -> L) {
    let ann = signup("ann@example.com", 1_000);
    let ann_token = ann.token_hash.clone();
    store.create_signup(ann).await.unwrap();
    let owner = store.token_owner(&ann_token).await.unwrap().unwrap();
    assert!(store.confirm(&owner, 1_500).await.unwrap());

    let lock = hold().await;
    let tasks = hand_to_blocked_writer(
        store,
        vec![
            // Confirmed, and past the resend interval (none, for this request: PostgreSQL
            // times it by its own clock, not the request's `now`).
            NewSignup {
                resend_interval_ms: 0,
                ..signup("ann@example.com", 70_000)
            },
            signup("bob@example.com", 2_000),
            // The same address: `users.email` is case-insensitive.
            signup("BOB@example.com", 2_001),
            signup("cy@example.com", 2_000),
        ],
    )
    .await;
    lock.release().await;

    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let kinds: Vec<EmailKind> = outcomes
        .iter()
        .map(|outcome| outcome.as_ref().expect("every signup is written").kind)
        .collect();
    // Bob's second signup sees the first, in the same transaction: one email a minute.
    assert_eq!(
        kinds,
        [
            EmailKind::AccountNotice,
            EmailKind::Confirmation,
            EmailKind::Suppressed,
            EmailKind::Confirmation
        ]
    );
    for written in &outcomes {
        let written = written.as_ref().unwrap();
        let view = store.signup(&written.signup_id).await.unwrap().unwrap();
        assert_eq!(view.state.as_str(), "queued");
    }
    // Ann's first email and the four of the group: each request has its row.
    assert_eq!(store.outbox_counts().await.unwrap().queued, 5);
}

#[tokio::test]
async fn a_database_error_in_a_group_fails_only_the_signup_at_fault() {
    let (dir, store) = store().await;
    // A fault only this address meets, as a full disk or a corrupt page might.
    let mut lock = hold_write_lock(&dir).await;
    sqlx::query(
        "CREATE TRIGGER fault BEFORE INSERT ON users WHEN NEW.email = 'boom@example.com'
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
    )
    .execute(&mut lock)
    .await
    .unwrap();
    fault_in_a_group(&store, lock).await;
}

/// A group with a signup that meets a fault of its own (`boom@example.com`, which a trigger
/// the `lock`'s transaction created refuses): only that signup fails.
async fn fault_in_a_group(store: &Store, lock: impl HeldLock) {
    let tasks = hand_to_blocked_writer(
        store,
        vec![
            signup("ann@example.com", 1_000),
            signup("boom@example.com", 1_000),
            signup("cy@example.com", 1_000),
        ],
    )
    .await;
    lock.release().await;

    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    assert!(
        matches!(&outcomes[1], Err(StoreError::Database(e)) if e.to_string().contains("injected fault")),
        "{:?}",
        outcomes[1].as_ref().err()
    );
    for written in [&outcomes[0], &outcomes[2]] {
        let written = written.as_ref().expect("the others are written");
        assert!(store.signup(&written.signup_id).await.unwrap().is_some());
    }
    assert_eq!(store.outbox_counts().await.unwrap().queued, 2);
}

/// Once the log holds 500 pages not yet copied, they reach the database file within moments,
/// copied there by the checkpointer, while the log is short of the 1,000 pages at which the
/// writer would checkpoint it itself (and so make every signup waiting behind it wait for the
/// copy and the disk). Read from a copy of the database file alone, without its log: before any
/// checkpoint it does not even hold the tables, which the migrations wrote to the log.
#[tokio::test]
async fn the_checkpointer_copies_the_log_into_the_database_file_without_the_writer() {
    let (dir, store) = store().await;
    let file = dir.path().join("db.sqlite");
    let mut beside = SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    // The pages in the log and the pages copied, read without copying anything. SQLite answers
    // (busy, -1, -1) when it met the writer updating the log's header: read again.
    let mut log_pages = async || -> (i64, i64) {
        loop {
            let (busy, in_log, copied): (i64, i64, i64) =
                sqlx::query_as("PRAGMA wal_checkpoint(NOOP)")
                    .fetch_one(&mut beside)
                    .await
                    .unwrap();
            if busy == 0 {
                return (in_log, copied);
            }
        }
    };
    let now = now_ms();
    let mut most_in_log = 0;
    for i in 0.. {
        // One at a time: a transaction, and so a few pages of log, each.
        store
            .create_signup(signup(&format!("user{i}@example.com"), now))
            .await
            .unwrap();
        let (in_log, copied) = log_pages().await;
        // Writing stops once the task is due to copy, or has copied (the log shrinks only when
        // it starts over after a whole copy), so the log stays short of the writer's 1,000 pages.
        let started_over = in_log < most_in_log;
        most_in_log = most_in_log.max(in_log);
        if in_log >= 600 || copied > 0 || started_over {
            break;
        }
        assert!(i < 1_000, "1,000 signups wrote {in_log} pages of log");
    }
    let copy = dir.path().join("file-alone.sqlite");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A copy taken while a checkpoint writes may be torn: that is an error or a short
        // count, and the next copy is taken a moment later.
        std::fs::copy(&file, &copy).unwrap();
        let mut alone = SqliteConnection::connect(&format!("sqlite://{}", copy.display()))
            .await
            .unwrap();
        let in_file: Result<i64, _> = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&mut alone)
            .await;
        alone.close().await.unwrap();
        if in_file.as_ref().is_ok_and(|&n| n > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the database file alone holds no users ({in_file:?}) after the log held {most_in_log} pages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// States are parsed where a row is read: a state this build does not know (a database written
/// by a newer version, or edited by hand) is an error there, not a string that flows on.
#[tokio::test]
async fn a_state_the_code_does_not_know_is_an_error_where_the_row_is_read() {
    let (dir, store) = store().await;
    let stored = store
        .create_signup(signup("ann@example.com", 1_000))
        .await
        .unwrap();
    let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    // The schema's CHECK constraint would refuse it: this is the hand edit.
    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE email_outbox SET state = 'archived' WHERE id = ?1")
        .bind(stored.outbox_id.0)
        .execute(&mut conn)
        .await
        .unwrap();

    let error = store.signup(&stored.signup_id).await.unwrap_err();
    assert!(
        matches!(error, StoreError::UnknownState(_)),
        "got {error:?}"
    );
    assert!(error.to_string().contains("archived"), "{error}");
    assert!(matches!(
        store.outbox_counts().await,
        Err(StoreError::UnknownState(_))
    ));
}

// Only its fresh databases: the private server is for the child-process tests.
#[cfg(confirmd_test_postgres)]
#[path = "support/postgres.rs"]
#[allow(dead_code)]
mod database;

/// Stands in for the PostgreSQL tests below when they are not compiled (see build.rs).
#[cfg(not(confirmd_test_postgres))]
#[test]
#[ignore = "the PostgreSQL store tests are skipped: set CONFIRMD_TEST_POSTGRES_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run them"]
fn postgres_runs_skipped() {}

/// The same store-level promises on PostgreSQL, and what only several instances on one database
/// can break: each test's stores share a fresh database, as instances of one deployment would.
#[cfg(confirmd_test_postgres)]
mod postgres {
    use std::{sync::Arc, time::Duration};

    use std::str::FromStr;

    use confirmd::store::{EmailKind, Prune, Store, StoreError};
    use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
    use tokio::{
        net::{TcpListener, TcpStream},
        sync::mpsc,
        task::{JoinHandle, JoinSet},
    };
    use tokio_util::{sync::CancellationToken, task::TaskTracker};

    use super::{
        HeldLock, again_in_a_group, clocks_past, committed_together, database::TestDatabase,
        fault_in_a_group, lease_fencing, now_ms, prune_batches, prune_signed_up_twice, retention,
        senders_at_once, sent, sent_then_next, signup, take_over,
    };

    /// `count` stores on one fresh, migrated database: instances of one deployment.
    async fn instances(count: usize) -> (TestDatabase, Vec<Store>) {
        let database = TestDatabase::create().await;
        let mut stores = Vec::new();
        for _ in 0..count {
            stores.push(Store::connect(&database.url, 4).await.unwrap());
        }
        stores[0].migrate().await.unwrap();
        (database, stores)
    }

    #[tokio::test]
    async fn the_pruner_deletes_what_is_old_enough_and_keeps_the_rest() {
        let (_database, stores) = instances(1).await;
        retention(&stores[0]).await;
    }

    #[tokio::test]
    async fn a_prune_deletes_in_batches_of_at_most_its_limit() {
        let (_database, stores) = instances(1).await;
        prune_batches(&stores[0]).await;
    }

    #[tokio::test]
    async fn one_pass_deletes_every_expired_signup_whatever_its_number_of_tokens() {
        let (_database, stores) = instances(1).await;
        prune_signed_up_twice(&stores[0]).await;
    }

    /// No foreign key deletes for the pruner on PostgreSQL (the migration
    /// `20261207000100_no_foreign_keys.sql` dropped them): a pruned signup takes its token and
    /// its email with it, and no row is left naming a user that is gone.
    #[tokio::test]
    async fn a_pruned_signup_takes_its_token_and_its_email_with_it() {
        let (database, stores) = instances(1).await;
        let store = &stores[0];
        let (gone, _) = sent(store, "gone@example.com", now_ms() - 1).await;
        let (kept, kept_hash) = sent(store, "kept@example.com", now_ms() + 3_600_000).await;
        let cutoff = now_ms() + 1;
        clocks_past(store, cutoff).await;
        let signups = Prune::ExpiredSignups {
            expired_before: now_ms(),
            created_before: cutoff,
            failed_since: cutoff,
        };
        assert_eq!(store.prune(signups, 500).await.unwrap().rows, 1);

        // The sent email was younger than any age that prunes it alone.
        assert!(store.signup(&gone.signup_id).await.unwrap().is_none());
        assert!(store.signup(&kept.signup_id).await.unwrap().is_some());
        assert!(store.token_owner(&kept_hash).await.unwrap().is_some());
        let mut db = PgConnection::connect(&database.url).await.unwrap();
        let (tokens, emails): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM confirmation_tokens
                     WHERE user_id NOT IN (SELECT id FROM users)),
                    (SELECT COUNT(*) FROM email_outbox
                     WHERE user_id NOT IN (SELECT id FROM users))",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert_eq!((tokens, emails), (0, 0), "rows left without their user");
    }

    #[tokio::test]
    async fn instances_starting_together_migrate_one_fresh_database_without_racing() {
        let database = TestDatabase::create().await;
        let mut migrations = Vec::new();
        for _ in 0..4 {
            let url = database.url.clone();
            migrations.push(tokio::spawn(async move {
                let store = Store::connect(&url, 2).await.unwrap();
                let migrated = store.migrate().await;
                store.close().await;
                migrated
            }));
        }
        for migration in migrations {
            migration
                .await
                .unwrap()
                .expect("every instance's migrate succeeds");
        }
        // And the schema works.
        let store = Store::connect(&database.url, 2).await.unwrap();
        store
            .create_signup(signup("ann@example.com", 1_000))
            .await
            .unwrap();
        assert_eq!(store.outbox_counts().await.unwrap().queued, 1);
        store.close().await;
    }

    #[tokio::test]
    async fn a_sender_whose_lease_expired_cannot_overwrite_the_next_instances_outcome() {
        let (_database, stores) = instances(2).await;
        lease_fencing(&stores[0], &stores[1]).await;
    }

    /// Claims commit without waiting for the WAL flush, so a crash of the server may take a
    /// claim with it, and the sequence's advance that numbered it. Here the crash is done by
    /// hand: the row queued again as before its claim, the sequence rewound. The sender that
    /// held the lost claim still reports late; the row's next claim must not share its id, or
    /// that stale report would pass the fence.
    #[tokio::test]
    async fn a_claim_lost_with_its_sequence_value_does_not_let_its_late_outcome_through() {
        let (database, stores) = instances(1).await;
        let store = &stores[0];
        let stored = store
            .create_signup(signup("ann@example.com", 1_000))
            .await
            .unwrap();
        let lost = store
            .claim(stored.outbox_id, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();

        let mut db = PgConnection::connect(&database.url).await.unwrap();
        sqlx::query(
            "UPDATE email_outbox SET state = 'queued', attempts = attempts - 1,
                 lease_until = NULL, claim_id = NULL
             WHERE id = $1",
        )
        .bind(stored.outbox_id.0)
        .execute(&mut db)
        .await
        .unwrap();
        // The next value is the one the lost claim took.
        sqlx::query(
            "SELECT setval('email_outbox_claims', last_value, false) FROM email_outbox_claims",
        )
        .execute(&mut db)
        .await
        .unwrap();
        db.close().await.unwrap();

        let next = store
            .claim(stored.outbox_id, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(
            lost.claim, next.claim,
            "the claim after the crash has an id of its own"
        );
        store
            .mark_retry(lost.claim, Duration::ZERO, "the lost claim's late failure")
            .await
            .unwrap();
        let view = store.signup(&stored.signup_id).await.unwrap().unwrap();
        assert_eq!(
            view.state.as_str(),
            "sending",
            "the next claim still holds the row"
        );
        store.mark_sent(next.claim, 2_500, 50_000).await.unwrap();
        let view = store.signup(&stored.signup_id).await.unwrap().unwrap();
        assert_eq!(view.state.as_str(), "sent");
    }

    #[tokio::test]
    async fn one_address_signed_up_on_several_instances_at_once_is_one_user_and_one_email() {
        let (database, stores) = instances(4).await;
        // The first signups of a new address meet on its unique key: one inserts the user.
        let mut kinds = signups_at_once(&stores, "Ann@Example.com").await;
        assert_eq!(sending(&kinds), [EmailKind::Confirmation], "{kinds:?}");

        // Past the resend interval, signups of an address that has a user race to read its
        // last email: the user's row lock lets one of them send, and the rest see its email.
        let db = sqlx::PgPool::connect(&database.url).await.unwrap();
        sqlx::query("UPDATE email_outbox SET created_at = created_at - 120000")
            .execute(&db)
            .await
            .unwrap();
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&db)
            .await
            .unwrap();
        db.close().await;
        assert_eq!(users, 1);
        kinds = signups_at_once(&stores, "ann@example.com").await;
        assert_eq!(sending(&kinds), [EmailKind::Confirmation], "{kinds:?}");
        let counts = stores[0].outbox_kinds().await.unwrap();
        assert_eq!((counts.confirmation, counts.suppressed), (2, 38));
    }

    /// Five signups of `email` on each store, all at once; what each row sends.
    async fn signups_at_once(stores: &[Store], email: &str) -> Vec<EmailKind> {
        let mut signups = Vec::new();
        for _ in 0..5 {
            for store in stores {
                let store = store.clone();
                // A resend interval of a minute: one of them sends, the rest are suppressed.
                let new = signup(email, 1_000);
                signups.push(tokio::spawn(async move { store.create_signup(new).await }));
            }
        }
        let mut kinds = Vec::new();
        for written in signups {
            kinds.push(written.await.unwrap().expect("no signup fails").kind);
        }
        kinds
    }

    fn sending(kinds: &[EmailKind]) -> Vec<EmailKind> {
        kinds
            .iter()
            .copied()
            .filter(|kind| *kind != EmailKind::Suppressed)
            .collect()
    }

    impl HeldLock for PgConnection {
        async fn release(mut self) {
            sqlx::query("COMMIT").execute(&mut self).await.unwrap();
        }
    }

    /// The claim of the oldest due row reads a few pages at any queue length, under a plan
    /// made when the table was small. PostgreSQL plans a prepared statement once and keeps it
    /// (after five runs, or at once under `force_generic_plan`) until the next ANALYZE; made on
    /// a young table, the plan of an ordinary claim statement sorted every queued row for each
    /// claim, or joined the whole table to the rows it found (BENCHMARKS.md 9.5).
    #[tokio::test]
    async fn a_claim_reads_a_few_pages_of_a_long_queue_under_a_plan_made_on_a_short_one() {
        // Never analysed (a fresh database before autovacuum's first visit), planned at 1,000.
        let (_database, mut conn) = young_queue().await;
        queue_rows(&mut conn, 0, 1_000, 0).await;
        sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            claim_one(&mut conn).await,
            1,
            "a due row claimed, its plan kept"
        );
        queue_rows(&mut conn, 1_000, 30_000, 0).await;
        let (claimed, pages) = pages_of_one_claim(&mut conn).await;
        assert_eq!(claimed, 1);
        // The walk of the index reads its first leaf and the row's page; sorting the 31,000
        // queued rows read every one of their ~1,000 pages.
        assert!(pages < 50, "one claim read {pages} pages of 31,000 queued");

        // Analysed at 100 rows (autovacuum's first ANALYZE of a new table comes at about 50
        // changed rows), planned by PostgreSQL's own choice after five runs.
        let (_database, mut conn) = young_queue().await;
        queue_rows(&mut conn, 0, 100, 0).await;
        sqlx::raw_sql("ANALYZE email_outbox")
            .execute(&mut conn)
            .await
            .unwrap();
        for _ in 0..6 {
            assert_eq!(claim_one(&mut conn).await, 1);
        }
        queue_rows(&mut conn, 100, 30_000, 0).await;
        let (claimed, pages) = pages_of_one_claim(&mut conn).await;
        assert_eq!(claimed, 1);
        // A join to the rows found by a scan of the table read ~1,100 pages.
        assert!(pages < 50, "one claim read {pages} pages of 30,100 queued");

        // A queue that backs off (an SMTP outage): no row due yet, nothing to read past the
        // first row that is not due.
        let (_database, mut conn) = young_queue().await;
        queue_rows(&mut conn, 0, 30_000, i64::MAX / 2).await;
        // The first call plans, reading the catalogs: count the second.
        assert_eq!(claim_one(&mut conn).await, 0);
        let (claimed, pages) = pages_of_one_claim(&mut conn).await;
        assert_eq!(claimed, 0);
        assert!(pages < 50, "a claim read {pages} pages of 30,000 not due");
    }

    /// A connection to a fresh, migrated database on which autovacuum never runs, so that the
    /// statistics stay those the test made.
    async fn young_queue() -> (TestDatabase, PgConnection) {
        let (database, _stores) = instances(1).await;
        let mut conn = PgConnection::connect(&database.url).await.unwrap();
        sqlx::raw_sql("ALTER TABLE email_outbox SET (autovacuum_enabled = off)")
            .execute(&mut conn)
            .await
            .unwrap();
        (database, conn)
    }

    /// Claims the oldest due row; returns how many rows were claimed.
    async fn claim_one(conn: &mut PgConnection) -> u64 {
        sqlx::raw_sql("SELECT * FROM confirmd_claim_due(1, 60000, 0, '{}')")
            .execute(conn)
            .await
            .unwrap()
            .rows_affected()
    }

    /// Claims the oldest due row under EXPLAIN ANALYZE: the rows claimed, and the pages the
    /// claim read (the buffers its function's node hit or read).
    async fn pages_of_one_claim(conn: &mut PgConnection) -> (u64, u64) {
        let plan: Vec<String> = sqlx::query_scalar(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM confirmd_claim_due(1, 60000, 0, '{}')",
        )
        .fetch_all(conn)
        .await
        .unwrap();
        let plan = plan.join("\n");
        let claimed = plan
            .split_once("rows=")
            .and_then(|(_, actual)| actual.split_once("rows="))
            .and_then(|(_, rows)| rows.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no actual rows: {plan}"));
        // "Buffers: shared hit=N read=M dirtied=D written=W"
        let buffers = plan
            .lines()
            .find_map(|line| line.trim().strip_prefix("Buffers: shared "))
            .unwrap_or_else(|| panic!("no buffer counts: {plan}"));
        let pages = buffers
            .split([' ', ','])
            .filter_map(|count| count.split_once('='))
            .filter(|(kind, _)| matches!(*kind, "hit" | "read"))
            .filter_map(|(_, pages)| pages.parse::<u64>().ok())
            .sum();
        (claimed, pages)
    }

    /// Queues `count` emails for new users, numbered from `from`, due at `due` (Unix ms).
    async fn queue_rows(conn: &mut PgConnection, from: i64, count: i64, due: i64) {
        sqlx::query(
            "WITH new_users AS (
                 INSERT INTO users (id, email, status, created_at)
                 SELECT gen_random_uuid(), 'user' || n || '@example.com', 'pending', n
                 FROM generate_series($1::BIGINT, $1::BIGINT + $2::BIGINT - 1) AS n
                 RETURNING id, email, created_at
             )
             INSERT INTO email_outbox (signup_id, user_id, kind, recipient, mode, state,
                                       next_attempt_at, created_at)
             SELECT gen_random_uuid()::TEXT, id, 'confirmation', email, 'background', 'queued',
                    $3, created_at
             FROM new_users",
        )
        .bind(from)
        .bind(count)
        .bind(due)
        .execute(conn)
        .await
        .unwrap();
    }

    /// Takes the `users` table for writes in a transaction of another connection: every
    /// signup's insert waits for it, reads do not.
    async fn hold_users(url: &str) -> PgConnection {
        let mut conn = PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql("BEGIN; LOCK TABLE users IN EXCLUSIVE MODE")
            .execute(&mut conn)
            .await
            .unwrap();
        conn
    }

    #[tokio::test]
    async fn signups_that_arrive_while_a_batch_waits_are_committed_together() {
        let (database, stores) = instances(1).await;
        let lock = hold_users(&database.url).await;
        committed_together(&stores[0], lock).await;
    }

    #[tokio::test]
    async fn a_signup_again_in_a_batch_gets_the_email_its_address_calls_for() {
        let (database, stores) = instances(1).await;
        again_in_a_group(&stores[0], async || hold_users(&database.url).await).await;
    }

    #[tokio::test]
    async fn a_database_error_in_a_batch_fails_only_the_signup_at_fault() {
        let (database, stores) = instances(1).await;
        let mut lock = hold_users(&database.url).await;
        sqlx::raw_sql(
            "CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.email = 'boom@example.com' THEN RAISE EXCEPTION 'injected fault'; END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER fault BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION fault();",
        )
        .execute(&mut lock)
        .await
        .unwrap();
        fault_in_a_group(&stores[0], lock).await;
    }

    #[tokio::test]
    async fn a_sender_whose_row_another_instance_took_takes_another_due_row() {
        let (_database, stores) = instances(2).await;
        take_over(&stores[0], &stores[1]).await;
    }

    #[tokio::test]
    async fn a_sent_outcome_claims_the_row_due_next_with_it_beside_another_instance() {
        let (_database, stores) = instances(2).await;
        sent_then_next(&stores[0], &stores[1]).await;
    }

    #[tokio::test]
    async fn senders_asking_at_once_each_get_their_own_row_and_outcome() {
        let (_database, stores) = instances(1).await;
        senders_at_once(&stores[0]).await;
    }

    #[tokio::test]
    async fn instances_claiming_at_once_never_both_get_one_row() {
        let (_database, stores) = instances(3).await;
        let mut ids = Vec::new();
        for i in 0..30 {
            let stored = stores[0]
                .create_signup(signup(&format!("user{i}@example.com"), 1_000))
                .await
                .unwrap();
            ids.push(stored.outbox_id);
        }
        // Every instance tries every row, as when all are woken for each.
        let mut claims = Vec::new();
        for store in &stores {
            for &id in &ids {
                let store = store.clone();
                claims.push(tokio::spawn(async move {
                    store.claim(id, Duration::from_secs(60)).await
                }));
            }
        }
        let mut claimed = Vec::new();
        for claim in claims {
            if let Some(email) = claim.await.unwrap().unwrap() {
                claimed.push(email.claim.id);
            }
        }
        claimed.sort_by_key(|id| id.0);
        assert_eq!(claimed, ids, "each row claimed exactly once");
    }

    #[tokio::test]
    async fn a_batch_of_background_signups_on_one_instance_wakes_the_others_once_for_all() {
        let (database, stores) = instances(2).await;
        let (heard, mut hearing) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let heard = Arc::new(heard);
        stores[1].hear_new_emails(
            move |emails: usize| {
                let _ = heard.send(emails);
            },
            shutdown.clone(),
            &tracker,
        );
        // The listener may not be listening yet: sign up until it hears one, of one email.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        loop {
            n += 1;
            stores[0]
                .create_signup(signup(&format!("early{n}@example.com"), 1_000))
                .await
                .unwrap();
            match tokio::time::timeout(Duration::from_millis(100), hearing.recv()).await {
                Ok(Some(emails)) => {
                    assert_eq!(emails, 1);
                    break;
                }
                _ => assert!(tokio::time::Instant::now() < deadline, "nothing was heard"),
            }
        }
        // The signup written after the one heard may still be on its way.
        while let Ok(Some(emails)) =
            tokio::time::timeout(Duration::from_millis(300), hearing.recv()).await
        {
            assert_eq!(emails, 1, "one email per signup written alone");
        }

        // Ten signups written in one or two statements are heard as one or two notifications
        // that count ten emails, not as ten.
        let new: Vec<String> = (0..10).map(|i| format!("batch{i}@example.com")).collect();
        heard_as_their_batches(&stores[0], &database, &new, &mut hearing).await;
        // Signing those addresses up again takes the statement-by-statement way, in one
        // transaction per batch: its notification counts them too.
        heard_as_their_batches(&stores[0], &database, &new[..4], &mut hearing).await;
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }

    /// Signs `addresses` up at once on `store` while the users table is locked, so that they
    /// are written in one or two batches, and checks that `hearing` hears one notification per
    /// batch, the counts adding up to the signups.
    async fn heard_as_their_batches(
        store: &Store,
        database: &TestDatabase,
        addresses: &[String],
        hearing: &mut mpsc::UnboundedReceiver<usize>,
    ) {
        let lock = hold_users(&database.url).await;
        let tasks = addresses
            .iter()
            .map(|address| {
                let (store, new) = (store.clone(), signup(address, 1_000));
                tokio::spawn(async move { store.create_signup(new).await })
            })
            .collect::<Vec<_>>();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.signups_pending() < addresses.len() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the signups never reached the batcher"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        lock.release().await;
        let mut batches = 0.0;
        for task in tasks {
            batches += 1.0 / task.await.unwrap().unwrap().group_size as f64;
        }
        let batches = batches.round() as usize;
        assert!(
            batches <= 2,
            "{batches} batches wrote {} signups",
            addresses.len()
        );
        let mut notifications = Vec::new();
        while notifications.iter().sum::<usize>() < addresses.len() {
            match tokio::time::timeout(Duration::from_secs(5), hearing.recv()).await {
                Ok(Some(emails)) => notifications.push(emails),
                _ => panic!("heard {notifications:?} of {} emails", addresses.len()),
            }
        }
        assert_eq!(notifications.len(), batches, "heard {notifications:?}");
        assert_eq!(notifications.iter().sum::<usize>(), addresses.len());
    }

    /// A TCP relay to the server that a test can take down and bring back, as a restart of
    /// the server (or the network between) would.
    struct Relay {
        port: u16,
        server: String,
        task: Option<JoinHandle<()>>,
    }

    impl Relay {
        /// Relays `port` (0: any free one) to `server`.
        async fn start(port: u16, server: String) -> Relay {
            let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let to = server.clone();
            let task = tokio::spawn(async move {
                // Dropped with the task: every relayed connection ends with it.
                let mut connections = JoinSet::new();
                while let Ok((mut client, _)) = listener.accept().await {
                    let to = to.clone();
                    connections.spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&to).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            });
            Relay {
                port,
                server,
                task: Some(task),
            }
        }

        /// Closes the port and every connection through it.
        async fn stop(&mut self) {
            let task = self.task.take().expect("running");
            task.abort();
            let _ = task.await;
        }
    }

    #[tokio::test]
    async fn signups_get_refused_while_the_server_is_away_and_taken_again_once_it_is_back() {
        let (database, _stores) = instances(1).await;
        let options = PgConnectOptions::from_str(&database.url).unwrap();
        let server = format!("{}:{}", options.get_host(), options.get_port());
        let mut relay = Relay::start(0, server).await;
        let url = format!(
            "postgres://{}@127.0.0.1:{}/{}",
            options.get_username(),
            relay.port,
            options.get_database().unwrap()
        );
        let store = Store::connect(&url, 2).await.unwrap();
        store
            .create_signup(signup("ann@example.com", 1_000))
            .await
            .unwrap();
        assert!(store.writable().is_ok());

        relay.stop().await;
        assert!(
            store
                .create_signup(signup("bob@example.com", 1_000))
                .await
                .is_err()
        );
        assert!(store.writable().is_err(), "readiness says so");
        // Refused at once from now on, as /readyz says, rather than each signup timing out.
        assert!(matches!(
            store.create_signup(signup("cy@example.com", 1_000)).await,
            Err(StoreError::Unwritable(_))
        ));

        // Back: the store's probe finds out with no signup to try, and signups are taken again.
        let _back = Relay::start(relay.port, relay.server.clone()).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.writable().is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the store never noticed the server was back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store
            .create_signup(signup("dan@example.com", 1_000))
            .await
            .unwrap();
        assert_eq!(store.outbox_counts().await.unwrap().queued, 2);
        store.close().await;
    }
}
