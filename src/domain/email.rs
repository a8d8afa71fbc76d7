//! The subscriber's email address, parsed once at the edge.

use std::{fmt, str::FromStr};

use lettre::Address;

/// An email address that lettre's RFC 5321 parser accepts, at most 254 characters as sent,
/// trimmed, with its domain lower-cased. The local part keeps its case: RFC 5321 lets a server tell
/// `Ann@x` from `ann@x`, even though uniqueness in our table ignores case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberEmail(Address);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmailError {
    #[error("email is empty")]
    Empty,
    #[error("email is longer than 254 characters")]
    TooLong,
    #[error("email is not a valid address: {0}")]
    Invalid(String),
}

impl SubscriberEmail {
    /// The longest address SMTP can carry in a forward path (RFC 5321 §4.5.3.1.3, less `<>`).
    pub const MAX_LEN: usize = 254;

    pub fn parse(input: &str) -> Result<Self, EmailError> {
        if input.chars().count() > Self::MAX_LEN {
            return Err(EmailError::TooLong);
        }
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(EmailError::Empty);
        }
        let address = Address::from_str(trimmed).map_err(|e| EmailError::Invalid(e.to_string()))?;
        let normalized = Address::new(address.user(), address.domain().to_lowercase())
            .map_err(|e| EmailError::Invalid(e.to_string()))?;
        Ok(SubscriberEmail(normalized))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }
}

impl fmt::Display for SubscriberEmail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_lowercases_only_the_domain() {
        let email = SubscriberEmail::parse("  Ann.Lee@Example.COM \n").unwrap();
        assert_eq!(email.as_str(), "Ann.Lee@example.com");
    }

    #[test]
    fn rejects_what_is_not_an_address() {
        for bad in [
            "",
            "   ",
            "plainaddress",
            "@example.com",
            "ann@",
            "a b@example.com",
            "ann@exa mple.com",
        ] {
            assert!(
                SubscriberEmail::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn rejects_header_injection() {
        assert!(SubscriberEmail::parse("ann@example.com\r\nBcc: victim@example.com").is_err());
        assert!(SubscriberEmail::parse("ann@example.com\nBcc:x@y.z").is_err());
    }

    #[test]
    fn length_limit_is_254_characters() {
        let domain = format!(
            "{}.{}.{}.com",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63)
        );
        let at_limit = format!("{}@{domain}", "x".repeat(254 - 1 - domain.len()));
        assert_eq!(at_limit.len(), 254);
        assert!(SubscriberEmail::parse(&at_limit).is_ok());
        let over = format!("x{at_limit}");
        assert_eq!(SubscriberEmail::parse(&over), Err(EmailError::TooLong));
    }
}
