//! The subscriber's email address, parsed once at the edge.
//!
//! "Valid" here means *sendable*: an address is accepted only if lettre can write it into the
//! `To:` header and the SMTP envelope of a real message, and a plain SMTP server can carry it.
//! RFC 5322 allows more (quoted local parts such as `"a b"@x`, IP literals such as `ip@[127.0.0.1]`),
//! but lettre cannot build a message to those, so accepting them would only turn into a failed
//! email later. Refusing them here, with a 422, is the honest answer.
//!
//! One mailbox is one user: the domain is IDNA-normalised (UTS 46), so `bücher.de` and
//! `xn--bcher-kva.de` are the same, and [`SubscriberEmail::key`] folds case in the local part
//! too, so `Ünï@x` and `ünï@x` compare equal.

use std::{fmt, net::IpAddr, str::FromStr};

use lettre::{Address, Message, message::Mailbox};

/// An email address that can be sent to, trimmed, at most 254 characters as sent and 254 bytes
/// once its domain is in ASCII (punycode) form, which is the form it is sent to: no SMTPUTF8 is
/// needed for the domain. The local part keeps its case, since RFC 5321 lets a server tell
/// `Ann@x` from `ann@x`; uniqueness uses [`SubscriberEmail::key`], which ignores case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberEmail {
    address: Address,
    /// The comparison key: lower-cased local part `@` ASCII domain.
    key: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmailError {
    #[error("email is empty")]
    Empty,
    #[error("email is longer than 254 characters")]
    TooLong,
    #[error("email is not a valid address: {0}")]
    Invalid(String),
    #[error(
        "email is not a valid address: a quoted local part (\"...\"@) cannot be sent; use a plain address"
    )]
    QuotedLocalPart,
    #[error("email is not a valid address: its domain is an IP address; only names are accepted")]
    IpDomain,
    #[error("email is not a valid address: its domain is not a valid domain name")]
    InvalidDomain,
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
        let (local, domain) = trimmed
            .rsplit_once('@')
            .ok_or_else(|| EmailError::Invalid("it has no @".into()))?;
        // Checked before lettre's parser, which accepts both, to say precisely what is wrong.
        if local.starts_with('"') {
            return Err(EmailError::QuotedLocalPart);
        }
        if is_ip_address(domain) {
            return Err(EmailError::IpDomain);
        }
        // UTS 46 with STD3 rules: maps case and equivalent forms, turns Unicode labels into
        // punycode, and keeps to letters, digits and hyphens, as SMTP's `Domain` grammar does.
        let domain = idna::domain_to_ascii_strict(domain).map_err(|_| EmailError::InvalidDomain)?;
        // An all-digit last label (`1.2.3.999`) is no top-level domain (RFC 3696 §2).
        let last_label = domain.rsplit('.').next().unwrap_or_default();
        if last_label.is_empty() || last_label.bytes().all(|b| b.is_ascii_digit()) {
            return Err(EmailError::InvalidDomain);
        }
        let address =
            Address::new(local, &domain).map_err(|e| EmailError::Invalid(e.to_string()))?;
        if address.to_string().len() > Self::MAX_LEN {
            return Err(EmailError::TooLong);
        }
        // The last word: the message the mailer will build must be buildable. lettre's address
        // parser and its message builder disagree on a few forms; the builder is what counts.
        Message::builder()
            .from(Mailbox::new(
                None,
                Address::new_dangerous("check", "example.com"),
            ))
            .to(Mailbox::new(None, address.clone()))
            .body(String::new())
            .map_err(|e| EmailError::Invalid(format!("cannot be written into an email ({e})")))?;
        let key = format!("{}@{domain}", local.to_lowercase());
        Ok(SubscriberEmail { address, key })
    }

    /// The address to send to: the local part as typed, the domain in ASCII (punycode) form.
    pub fn as_str(&self) -> &str {
        AsRef::<str>::as_ref(&self.address)
    }

    /// What two addresses are compared by, so that one mailbox is one user: the local part
    /// lower-cased (Unicode-aware) and the ASCII domain. Lower-casing the local part is not
    /// what RFC 5321 promises, but no mail provider in use gives `Ann@` and `ann@` to two
    /// people, and letting both sign up would let one mailbox hold two accounts.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// `[127.0.0.1]`, `[IPv6:::1]`, or a bare `127.0.0.1`: an address, not a name. SMTP servers
/// rarely accept mail for IP literals, and lettre cannot build a message to a bracketed one.
fn is_ip_address(domain: &str) -> bool {
    domain.starts_with('[') || IpAddr::from_str(domain).is_ok()
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

    /// Each of these passed validation before and then could not be sent: lettre parses them,
    /// but cannot build a message to them (or an SMTP server would not take them).
    #[test]
    fn refuses_what_cannot_be_sent() {
        assert_eq!(
            SubscriberEmail::parse("\"a b\"@example.com"),
            Err(EmailError::QuotedLocalPart)
        );
        assert_eq!(
            SubscriberEmail::parse("\"a\\\"b\"@example.com"),
            Err(EmailError::QuotedLocalPart)
        );
        assert_eq!(
            SubscriberEmail::parse("\"ab\"@example.com"),
            Err(EmailError::QuotedLocalPart)
        );
        for ip in ["ip@[127.0.0.1]", "ip@[IPv6:::1]", "ip@127.0.0.1", "ip@::1"] {
            assert_eq!(
                SubscriberEmail::parse(ip),
                Err(EmailError::IpDomain),
                "{ip}"
            );
        }
        for domain in [
            "ann@1.2.3.999",
            "ann@exa_mple.com",
            "ann@-x.com",
            "ann@x..com",
        ] {
            assert!(SubscriberEmail::parse(domain).is_err(), "{domain}");
        }
    }

    /// What is accepted, lettre builds into a message: the property the parser promises.
    #[test]
    fn everything_accepted_can_be_built_into_a_message() {
        for good in [
            "ann@example.com",
            "a.b+c@example.com",
            "a!#$%&'*+/=?^_`{|}~@example.com",
            "ünï@bücher.de",
            "ann@localhost",
        ] {
            let email = SubscriberEmail::parse(good).unwrap();
            let to: Mailbox = email.as_str().parse().unwrap();
            assert!(
                Message::builder()
                    .from("x@example.com".parse::<Mailbox>().unwrap())
                    .to(to)
                    .body(String::new())
                    .is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn the_domain_is_sent_in_punycode_and_one_mailbox_has_one_key() {
        let unicode = SubscriberEmail::parse("same@Bücher.de").unwrap();
        let ascii = SubscriberEmail::parse("same@xn--bcher-kva.de").unwrap();
        assert_eq!(unicode.as_str(), "same@xn--bcher-kva.de");
        assert_eq!(unicode.key(), ascii.key());

        let upper = SubscriberEmail::parse("Ünï@example.com").unwrap();
        let lower = SubscriberEmail::parse("ünï@example.com").unwrap();
        assert_eq!(upper.as_str(), "Ünï@example.com", "sent as typed");
        assert_eq!(upper.key(), "ünï@example.com");
        assert_eq!(upper.key(), lower.key());
        assert_ne!(
            SubscriberEmail::parse("ann@example.com").unwrap().key(),
            SubscriberEmail::parse("anne@example.com").unwrap().key()
        );
    }

    #[test]
    fn the_length_limit_counts_the_punycode_form() {
        // 115 characters as typed; each label is 37 bytes in punycode, so 271 bytes as sent.
        let label = "日本語漢字東京大阪京都";
        let typed = format!("{}@{}.de", "x".repeat(40), [label; 6].join("."));
        assert_eq!(typed.chars().count(), 115);
        let one_label_less = format!("{}@{}.de", "x".repeat(40), [label; 5].join("."));
        assert!(SubscriberEmail::parse(&one_label_less).is_ok());
        assert_eq!(SubscriberEmail::parse(&typed), Err(EmailError::TooLong));
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
