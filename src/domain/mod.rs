//! Values that cannot be invalid. Input is *parsed* into these types once, at the edge, so the
//! rest of the code never re-validates an email address, a name or a token.

mod delivery_mode;
mod email;
mod name;
mod token;

pub use delivery_mode::{DeliveryMode, UnknownMode};
pub use email::{EmailError, SubscriberEmail};
pub use name::{NameError, SubscriberName};
pub(crate) use token::TIME_PREFIX;
pub use token::{ConfirmationToken, MalformedToken, TokenHash, TokenNonce};
