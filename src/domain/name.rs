//! The subscriber's optional display name, kept for the application; no email shows it.

/// An optional display name: at most 100 characters as sent, no control characters (no CR/LF
/// header injection, no broken layout), and none of the invisible characters that change how
/// text around them reads: bidi controls (which can turn `moc.example` into `example.com` on
/// screen), line and paragraph separators, and zero-width characters (which hide words from
/// filters). Kept trimmed; an empty name is no name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("name is longer than 100 characters")]
    TooLong,
    #[error("name contains control characters")]
    ControlCharacter,
    #[error(
        "name contains an invisible or text-direction character (U+{:04X}); write the name without it",
        u32::from(*.0)
    )]
    InvisibleCharacter(char),
}

/// Characters that are invisible but change how the text around them is shown or read.
fn is_invisible_formatting(c: char) -> bool {
    matches!(c,
        // Bidi embeddings, overrides and isolates; LRM, RLM and the Arabic letter mark.
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
        // Line and paragraph separators: a line break that is not a control character.
        | '\u{2028}' | '\u{2029}'
        // Zero-width space, non-joiner, joiner; word joiner; the byte-order mark.
        | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')
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
        if let Some(c) = input.chars().find(|&c| is_invisible_formatting(c)) {
            return Err(NameError::InvisibleCharacter(c));
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

    #[test]
    fn rejects_invisible_and_text_direction_characters() {
        for c in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}', '\u{2028}', '\u{2029}',
            '\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}',
        ] {
            assert_eq!(
                SubscriberName::parse(&format!("Ann{c}Lee")),
                Err(NameError::InvisibleCharacter(c)),
                "U+{:04X}",
                u32::from(c)
            );
        }
        assert_eq!(
            NameError::InvisibleCharacter('\u{202E}').to_string(),
            "name contains an invisible or text-direction character (U+202E); write the name without it"
        );
        // Visible neighbours stay allowed: Arabic and Hebrew names, and emoji (which need no
        // joiner to be written, though a family emoji with ZWJ is refused with the rest).
        assert!(SubscriberName::parse("مريم").is_ok());
        assert!(SubscriberName::parse("דנה").is_ok());
        assert!(SubscriberName::parse("Zoë 🚀").is_ok());
    }
}
