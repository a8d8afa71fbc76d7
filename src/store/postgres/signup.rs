//! What a signup writes (the user, the token's hash, the outbox row), and the reads and the write
//! behind the link: a signup request's state, a token's owner, confirming it.
//!
//! One transaction per signup. Two instances may sign one address up at the same moment; SQLite
//! never met that (its one writer did one signup at a time), so here the user row is the lock:
//! the first signup of an address inserts it (`ON CONFLICT DO NOTHING`: the second waits for the
//! first to commit, then inserts nothing), and a signup of an address that has a user locks its
//! row (`FOR UPDATE`) before it reads the last email, so the second of two signups sees the
//! first's email and the resend interval holds across instances. Neither ever sees a unique
//! violation.

use uuid::Uuid;

use super::{PostgresStore, listener::CHANNEL};
use crate::{
    domain::{SubscriberName, TokenHash},
    store::{
        Claim, EmailKind, NewSignup, OutboxId, OutboxState, SignupView, StoreError, StoredSignup,
        TokenOwner, UnknownState, UserStatus, millis,
    },
};

impl PostgresStore {
    /// Writes a signup, its token and its outbox row in one transaction, so an acknowledged
    /// signup always has its email in the database. Signing up again adds a token: the links
    /// already sent keep working until they expire or the address is confirmed. An address
    /// that has a user gets the email its state calls for, and the requester is not told which:
    ///
    /// - a pending address gets a confirmation with a token of its own, its name kept with the
    ///   token;
    /// - a confirmed address gets the account notice, and no token;
    /// - either way, if this address was sent an email less than the resend interval ago, the
    ///   row is `suppressed`: it sends nothing. Suppressed rows do not count as emails sent.
    ///
    /// Refused at once while the server is known not to take writes, as `/readyz` says.
    pub async fn create_signup(&self, new: NewSignup) -> Result<StoredSignup, StoreError> {
        let _in_flight = self.health.signup_started();
        if let Some(fault) = self.health.fault() {
            return Err(StoreError::Unwritable(fault));
        }
        match self.write_signup(&new).await {
            Ok(stored) => {
                self.health.proven_writable();
                Ok(stored)
            }
            Err(StoreError::Database(error)) => {
                self.health.failed(&error);
                Err(StoreError::Database(error))
            }
            Err(other) => Err(other),
        }
    }

    async fn write_signup(&self, new: &NewSignup) -> Result<StoredSignup, StoreError> {
        let mut tx = self.pool.begin().await?;
        let key = new.email.key();
        // At most twice round: the user row can vanish between the two statements only if the
        // pruner deleted it (an expired pending signup) in between, and then the second insert,
        // with a fresh snapshot, creates it.
        let mut attempts_left = 2;
        let (user_id, kind) = loop {
            let created = sqlx::query_scalar!(
                "INSERT INTO users (id, email, status, created_at)
                 VALUES ($1, $2, 'pending', confirmd_now_ms())
                 ON CONFLICT (email) DO NOTHING
                 RETURNING id",
                Uuid::now_v7(),
                key
            )
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(id) = created {
                break (id, EmailKind::Confirmation);
            }
            // Held until commit: a concurrent signup of this address waits here, then reads the
            // email this one wrote.
            let user = sqlx::query!(
                "SELECT id, status FROM users WHERE email = $1 FOR UPDATE",
                key
            )
            .fetch_optional(&mut *tx)
            .await?;
            let Some(user) = user else {
                attempts_left -= 1;
                if attempts_left == 0 {
                    return Err(StoreError::Database(sqlx::Error::RowNotFound));
                }
                continue;
            };
            let too_soon = sqlx::query_scalar!(
                r#"SELECT COALESCE(MAX(created_at) > confirmd_now_ms() - $2, FALSE) AS "too_soon!"
                   FROM email_outbox WHERE user_id = $1 AND kind <> 'suppressed'"#,
                user.id,
                new.resend_interval_ms
            )
            .fetch_one(&mut *tx)
            .await?;
            let kind = match (too_soon, user.status.parse()?) {
                (true, _) => EmailKind::Suppressed,
                (false, UserStatus::Confirmed) => EmailKind::AccountNotice,
                (false, UserStatus::Pending) => EmailKind::Confirmation,
            };
            break (user.id, kind);
        };

        let (nonce, token_hash) = match kind {
            EmailKind::Confirmation => {
                let hash = &new.token_hash.0[..];
                sqlx::query!(
                    "INSERT INTO confirmation_tokens (token_hash, user_id, name, created_at, expires_at)
                     VALUES ($1, $2, $3, confirmd_now_ms(), $4)",
                    hash,
                    user_id,
                    new.name.as_ref().map(SubscriberName::as_str),
                    new.token_expires_at
                )
                .execute(&mut *tx)
                .await?;
                (Some(&new.nonce.0[..]), Some(hash))
            }
            EmailKind::AccountNotice | EmailKind::Suppressed => (None, None),
        };

        // A sync row is written claimed by its request: in `sending`, leased, with a claim id.
        let (state, attempts) = match new.claim_for {
            Some(_) => (OutboxState::Sending, 1),
            None => (OutboxState::Queued, 0),
        };
        let lease_ms = new.claim_for.map(millis);
        let row = sqlx::query!(
            "INSERT INTO email_outbox
               (signup_id, user_id, kind, recipient, nonce, token_hash, mode, state, attempts,
                next_attempt_at, lease_until, claim_id, request_id, trace_context, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, confirmd_now_ms(),
                     confirmd_now_ms() + $10,
                     CASE WHEN $10::BIGINT IS NOT NULL THEN nextval('email_outbox_claims') END,
                     $11, $12, confirmd_now_ms())
             RETURNING id, claim_id",
            new.signup_id,
            user_id,
            kind.as_str(),
            // The address as this request typed it: `users.email` holds only its key.
            new.email.as_str(),
            nonce,
            token_hash,
            new.mode.as_str(),
            state.as_str(),
            attempts,
            lease_ms,
            new.request_id.as_deref(),
            new.trace_context.as_deref()
        )
        .fetch_one(&mut *tx)
        .await?;
        if new.claim_for.is_none() {
            // Delivered to the listeners of every instance when (and only if) this commits.
            let payload = format!("{}:{}", self.instance, row.id);
            sqlx::query!("SELECT pg_notify($1, $2)::TEXT", CHANNEL, payload)
                .fetch_one(&mut *tx)
                .await?;
        }
        tx.commit().await?;

        Ok(StoredSignup {
            signup_id: new.signup_id.clone(),
            outbox_id: OutboxId(row.id),
            email: new.email.as_str().to_owned(),
            kind,
            group_size: 1,
            claim: row.claim_id.map(|claim_id| Claim {
                id: OutboxId(row.id),
                claim_id,
            }),
        })
    }

    /// A signup request, by the id its sender was given.
    pub async fn signup(&self, signup_id: &str) -> Result<Option<SignupView>, StoreError> {
        let row = sqlx::query!(
            "SELECT signup_id, created_at, mode, state, attempts, next_attempt_at, sent_at
             FROM email_outbox WHERE signup_id = $1",
            signup_id
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(SignupView {
                id: r.signup_id,
                created_at: r.created_at,
                mode: r
                    .mode
                    .parse()
                    .map_err(|_| UnknownState::new("delivery mode", &r.mode))?,
                state: r.state.parse()?,
                attempts: r.attempts,
                next_attempt_at: r.next_attempt_at,
                sent_at: r.sent_at,
            })
        })
        .transpose()
    }

    /// Who a token belongs to, if anyone.
    pub async fn token_owner(&self, hash: &TokenHash) -> Result<Option<TokenOwner>, StoreError> {
        let row = sqlx::query!(
            "SELECT u.id, u.status, t.expires_at, t.name
             FROM confirmation_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = $1",
            &hash.0[..]
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(TokenOwner {
                user_id: r.id.to_string(),
                status: r.status.parse()?,
                expires_at: r.expires_at,
                name: r.name,
            })
        })
        .transpose()
    }

    /// Confirms the pending user a token belongs to, who takes the name that token's request
    /// gave (if it gave one). `false` if it was confirmed already, so two clicks racing on one
    /// link (on one instance or two) confirm once and both learn the outcome.
    pub async fn confirm(&self, owner: &TokenOwner, now: i64) -> Result<bool, StoreError> {
        // The id came from `token_owner`, so it parses; if it does not, no user has it.
        let Ok(user_id) = Uuid::parse_str(&owner.user_id) else {
            return Ok(false);
        };
        let done = sqlx::query!(
            "UPDATE users SET status = 'confirmed', confirmed_at = $2, name = COALESCE($3, name)
             WHERE id = $1 AND status = 'pending'",
            user_id,
            now,
            owner.name
        )
        .execute(&self.pool)
        .await;
        Ok(self.wrote(done)?.rows_affected() == 1)
    }
}
