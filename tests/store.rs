//! The outbox's state machine, straight against the store: a sender whose lease ran out cannot
//! overwrite the outcome of the sender that took its row over.

use confirmd::{
    domain::{ConfirmationToken, DeliveryMode, SubscriberEmail},
    store::{NewSignup, Store},
};

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
    let email = SubscriberEmail::parse("ann@example.com").unwrap();
    let token = ConfirmationToken::generate();
    let stored = store
        .create_signup(&NewSignup {
            email: &email,
            name: None,
            token: token.expose(),
            token_hash: &token.hash(),
            token_expires_at: 10_000,
            mode: DeliveryMode::Background,
            request_id: None,
            claimed_until: None,
            resend_interval_ms: 0,
            now: 1_000,
        })
        .await
        .unwrap();

    // Sender A claims the row with a lease until t=2000, then stalls past it.
    let a = store
        .claim(stored.outbox_id, 1_000, 2_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.reclaim_expired_leases(2_001).await.unwrap(), 1);
    // Sender B takes the row over with its own lease.
    let b = store
        .claim(stored.outbox_id, 2_001, 3_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.attempts, 2);

    // A wakes up and reports a failure: it must change nothing.
    store
        .mark_retry(a.claim, 9_999, "A's late failure")
        .await
        .unwrap();
    store
        .mark_failed(a.claim, "A's late give-up")
        .await
        .unwrap();
    let view = store.signup(&stored.user_id).await.unwrap().unwrap();
    assert_eq!(view.state, "sending", "B still holds the row");
    assert_eq!(view.last_error, None);

    // B's outcome is the one recorded, and the link is valid for a full TTL from the send.
    store.mark_sent(b.claim, 2_500, 50_000).await.unwrap();
    let view = store.signup(&stored.user_id).await.unwrap().unwrap();
    assert_eq!(view.state, "sent");
    assert_eq!(view.sent_at, Some(2_500));
    let owner = store.token_owner(&token.hash()).await.unwrap().unwrap();
    assert_eq!(owner.expires_at, 50_000);
    // And A's late success does not undo it either.
    store.mark_sent(a.claim, 2_600, 60_000).await.unwrap();
    let view = store.signup(&stored.user_id).await.unwrap().unwrap();
    assert_eq!(view.sent_at, Some(2_500));
}
