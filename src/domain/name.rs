//! The subscriber's optional display name, safe for a mail header and an HTML page.

/// An optional display name: at most 100 characters as sent, no control characters, so it can
/// go into a `To:` header and an HTML page without a CR/LF header injection or a broken layout.
/// Kept trimmed; an empty name is no name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("name is longer than 100 characters")]
    TooLong,
    #[error("name contains control characters")]
    ControlCharacter,
}

impl SubscriberName {
    pub const MAX_LEN: usize = 100;

    pub fn parse(input: &str) -> Result<Option<Self>, NameError> {
        // Limits apply to the input as sent, as the API document states them.
        if input.chars().count() > Self::MAX_LEN {
            return Err(NameError::TooLong);
        }
        if input.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        let trimmed = input.trim();
        Ok((!trimmed.is_empty()).then(|| SubscriberName(trimmed.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_plain_name_and_drops_an_empty_one() {
        assert_eq!(
            SubscriberName::parse("  Ada Lovelace ")
                .unwrap()
                .unwrap()
                .as_str(),
            "Ada Lovelace"
        );
        assert_eq!(SubscriberName::parse("   ").unwrap(), None);
        assert_eq!(
            SubscriberName::parse("Zoë 🚀").unwrap().unwrap().as_str(),
            "Zoë 🚀"
        );
    }

    #[test]
    fn rejects_control_characters_and_long_names() {
        assert_eq!(
            SubscriberName::parse("Eve\r\nBcc: x@y.z"),
            Err(NameError::ControlCharacter)
        );
        assert_eq!(
            SubscriberName::parse("a\u{0}b"),
            Err(NameError::ControlCharacter)
        );
        assert!(SubscriberName::parse(&"é".repeat(100)).is_ok());
        assert_eq!(
            SubscriberName::parse(&"é".repeat(101)),
            Err(NameError::TooLong)
        );
    }
}
