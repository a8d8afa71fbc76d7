//! The notice a confirmed address gets when someone signs it up again: "you already have an
//! account". It carries nothing the requester chose (no name, no link with a token), so a
//! stranger cannot use confirmd to put words in front of the address's owner; and the
//! requester's answer is the same as for a new address, so it learns nothing either.

use lettre::{
    Message,
    message::{Mailbox, MultiPart},
};

use super::{MailError, Mailer};

const SUBJECT: &str = "You already have an account";

const TEXT: &str = "\
Hello,

Someone, perhaps you, asked to sign up with this email address. It already has a confirmed
account, so there is nothing to do and nothing has changed.

If it was not you, you can ignore this email.
";

const HTML: &str = "\
<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><title>You already have an account</title></head>
<body style=\"font-family: sans-serif\">
<p>Hello,</p>
<p>Someone, perhaps you, asked to sign up with this email address. It already has a confirmed
account, so there is nothing to do and nothing has changed.</p>
<p>If it was not you, you can ignore this email.</p>
</body></html>
";

impl Mailer {
    /// The account notice to `to`. `id` (its outbox id) makes its Message-ID, as for the
    /// confirmation.
    pub fn account_notice(&self, id: i64, to: &str) -> Result<Message, MailError> {
        let address = to
            .parse()
            .map_err(|_| MailError::Recipient(to.to_owned()))?;
        let message_id = format!("<confirmd.{id}@{}>", self.from.email.domain());
        Ok(Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, address))
            .subject(SUBJECT)
            .message_id(Some(message_id))
            .multipart(MultiPart::alternative_plain_html(
                TEXT.to_owned(),
                HTML.to_owned(),
            ))?)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

    /// Builds the message, sends nothing; the transport's pool needs a runtime to exist.
    #[tokio::test]
    async fn the_notice_has_fixed_text_and_no_link() {
        let settings = Settings::defaults();
        let mailer = super::Mailer::new(&settings.smtp, settings.mail_from()).unwrap();
        let raw = mailer
            .account_notice(9, "ann@example.com")
            .unwrap()
            .formatted();
        let parsed = mailparse::parse_mail(&raw).unwrap();
        assert_eq!(parsed.ctype.mimetype, "multipart/alternative");
        for part in &parsed.subparts {
            let body = part.get_body().unwrap();
            assert!(body.contains("already has a confirmed"), "{body}");
            assert!(!body.contains("http"), "no link: {body}");
        }
    }
}
