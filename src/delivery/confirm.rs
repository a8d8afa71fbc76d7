//! The confirm rules: what a link from an email leads to. The HTTP layer only renders the
//! answer (a page or JSON); the rules live here, beside the signup that issued the link.
//!
//! - A token nobody holds is [`LinkState::Unknown`].
//! - An address confirmed already stays confirmed, whichever of its links is used and however
//!   old: using a link twice is not an error ([`LinkState::Confirmed`] with `already`).
//! - Otherwise a link past its expiry confirms nothing ([`LinkState::Expired`]); signing up again
//!   sends a new one.
//! - Looking at a link changes nothing ([`Delivery::link_status`]); only [`Delivery::confirm`]
//!   confirms. Two confirmations racing on one link confirm once, and both succeed.

use super::Delivery;
use crate::{
    clock,
    domain::ConfirmationToken,
    store::{StoreError, UserStatus},
};

/// Where a link stands. It names neither the address nor the user, so neither can its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Valid and unused: the address waits for this link (or another of its links) to confirm.
    Pending,
    /// The address is confirmed: by this request (`already` false) or before it.
    Confirmed { already: bool },
    /// Past its expiry, with the address still pending.
    Expired,
    /// No user holds this token (mistyped, or never issued).
    Unknown,
}

impl Delivery {
    /// Where the link with this token stands. Changes nothing: mail scanners open links too.
    pub async fn link_status(&self, token: &ConfirmationToken) -> Result<LinkState, StoreError> {
        self.follow_link(token, false).await
    }

    /// Confirms the address the link with this token was sent to, if the link is valid; the
    /// user takes the name that link's signup gave.
    pub async fn confirm(&self, token: &ConfirmationToken) -> Result<LinkState, StoreError> {
        self.follow_link(token, true).await
    }

    async fn follow_link(
        &self,
        token: &ConfirmationToken,
        confirm: bool,
    ) -> Result<LinkState, StoreError> {
        let store = &self.inner.store;
        // A link sent before stored keys began with the token's time prefix was stored under
        // the whole hash; it is looked for there only when the key of today finds nothing.
        let owner = match store.token_owner(&token.hash()).await? {
            Some(owner) => Some(owner),
            None => store.token_owner(&token.legacy_hash()).await?,
        };
        let Some(owner) = owner else {
            return Ok(LinkState::Unknown);
        };
        match owner.status {
            UserStatus::Confirmed => return Ok(LinkState::Confirmed { already: true }),
            UserStatus::Pending => {}
        }
        if owner.expires_at < clock::now_ms() {
            return Ok(LinkState::Expired);
        }
        if !confirm {
            return Ok(LinkState::Pending);
        }
        // Two clicks racing on one link: one confirms, the other finds it done. Both succeed.
        let confirmed_now = store.confirm(&owner, clock::now_ms()).await?;
        Ok(LinkState::Confirmed {
            already: !confirmed_now,
        })
    }
}
