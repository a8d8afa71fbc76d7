//! A database written before tokens were derived (raw tokens in the outbox, one token per user)
//! is migrated in place, and the email it had waiting still goes out with a link that works.

mod support;
use support::{app::InProcessApp, links, smtp};

use std::time::Duration;

use confirmd::{
    Settings,
    domain::{ConfirmationToken, TokenNonce},
    secret::TokenKey,
};
use sqlx::{Connection, SqliteConnection};

/// The migrations of the old schema, the ones an existing database has applied.
const OLD_MIGRATIONS: [&str; 2] = [
    "20261125000001_initial.sql",
    "20261125000002_outbox_failed_index.sql",
];

#[tokio::test]
async fn an_email_queued_before_the_upgrade_is_sent_with_its_old_link_which_works() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("confirmd.db").display()
    );

    // The old schema, applied by sqlx as the old binary did, with a signup waiting in it, its
    // token stored under the whole SHA-256 of its text, as keys were before the time prefix.
    let old = dir.path().join("old-migrations");
    std::fs::create_dir(&old).unwrap();
    for name in OLD_MIGRATIONS {
        std::fs::copy(format!("migrations/sqlite/{name}"), old.join(name)).unwrap();
    }
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    let token = ConfirmationToken::generate();
    sqlx::query(
        "INSERT INTO users (id, email, name, status, created_at)
         VALUES ('u1', 'ann@example.com', 'Ann', 'pending', 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO confirmation_tokens (token_hash, user_id, created_at, expires_at)
         VALUES (?1, 'u1', 1, 4102444800000)",
    )
    .bind(token.legacy_hash().0.to_vec())
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO email_outbox (user_id, recipient, token, mode, state, next_attempt_at, created_at)
         VALUES ('u1', 'ann@example.com', ?1, 'background', 'queued', 1, 1)",
    )
    .bind(token.expose())
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    // The new binary starts on it: it migrates, and its sweeper finds the waiting email.
    let smtp = smtp::SmtpServer::start().await;
    let app = InProcessApp::start(settings(&url, &smtp)).await;
    let address = app.address.clone();

    let mail = smtp.wait_for_mail(1, Duration::from_secs(10)).await;
    let link = mail[0].confirmation_link();
    assert!(
        link.ends_with(token.expose()),
        "the link it was stored with"
    );
    // Only a POST confirms: opening the link shows the page with its button.
    let token = links::token_of(&link);
    let confirmed = reqwest::Client::new()
        .post(format!("{address}/confirm"))
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 200);

    // Once sent, the old raw token is gone from the outbox like any other.
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    let left: Option<String> = sqlx::query_scalar("SELECT token FROM email_outbox")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, None);
    let (status, name): (String, Option<String>) = sqlx::query_as("SELECT status, name FROM users")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        (status.as_str(), name.as_deref()),
        ("confirmed", Some("Ann"))
    );
    conn.close().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn an_email_queued_before_keys_had_a_time_prefix_goes_out_with_the_link_it_was_stored_under()
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("confirmd.db").display()
    );
    let secret = "s".repeat(32);

    // The schema of today, and a row as the version before wrote it: a random nonce, and its
    // token (the whole HMAC) stored under the whole SHA-256 of its text. A send of it may have
    // reached the server and timed out, so its link may be out already.
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(std::path::Path::new("migrations/sqlite"))
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    let nonce = TokenNonce([7; 32]);
    let token = TokenKey::new(&secret).legacy_token_for(&nonce);
    let stored = token.legacy_hash().0.to_vec();
    sqlx::query(
        "INSERT INTO users (id, email, status, created_at)
         VALUES ('u1', 'ann@example.com', 'pending', 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO confirmation_tokens (token_hash, user_id, name, created_at, expires_at)
         VALUES (?1, 'u1', 'Ann', 1, 4102444800000)",
    )
    .bind(&stored)
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO email_outbox (signup_id, user_id, kind, recipient, nonce, token_hash, mode,
                                   state, attempts, next_attempt_at, created_at)
         VALUES ('s1', 'u1', 'confirmation', 'ann@example.com', ?1, ?2, 'background',
                 'queued', 1, 1, 1)",
    )
    .bind(&nonce.0[..])
    .bind(&stored)
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let smtp = smtp::SmtpServer::start().await;
    let mut settings = settings(&url, &smtp);
    settings.token.secret = secret.into();
    let app = InProcessApp::start(settings).await;

    // The email carries the link it was stored under, not a new one: the old link stays valid.
    let mail = smtp.wait_for_mail(1, Duration::from_secs(10)).await;
    let link = mail[0].confirmation_link();
    assert!(link.ends_with(token.expose()), "{link}");
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    let kept: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM confirmation_tokens")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, stored, "the key it was stored under");
    conn.close().await.unwrap();
    let confirmed = reqwest::Client::new()
        .post(format!("{}/confirm", app.address))
        .json(&serde_json::json!({ "token": links::token_of(&link) }))
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 200);
    app.stop().await;
}

/// The new binary on the database at `url`, sending to `smtp`, its sweeper quick to find the
/// email the old one left waiting.
fn settings(url: &str, smtp: &smtp::SmtpServer) -> Settings {
    let mut settings = Settings::defaults();
    settings.server.listen = "127.0.0.1:0".into();
    settings.database.url = url.to_owned();
    settings.smtp.port = smtp.port();
    settings.worker.sweep_interval_ms = 100;
    settings
}

/// Each backend has its own migrations folder, and `sqlx::migrate!` embeds only that folder: a
/// migration left in `migrations/` itself would never run anywhere.
#[test]
fn every_migration_is_in_a_backends_folder() {
    let stray: Vec<_> = std::fs::read_dir("migrations")
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    assert!(
        stray.is_empty(),
        "migrations outside migrations/<backend>/: {stray:?}"
    );
    assert!(std::path::Path::new("migrations/sqlite").is_dir());
}
