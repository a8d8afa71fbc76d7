//! Just enough MIME to read the text of a received email: walk `multipart/*` parts to the first
//! `text/plain` one and undo its transfer encoding. lettre picks that encoding by content: a
//! confirmation link is longer than a 7-bit line may be, so the text part usually arrives
//! quoted-printable, with `=` written `=3D` and long lines folded by soft breaks.

use base64::Engine;

/// The decoded text of the first `text/plain` part of `message` (headers and body, as received),
/// with `\n` line endings.
pub(super) fn text_body(message: &str) -> Option<String> {
    // One line ending throughout, so that header, boundary and soft-break handling need only one.
    text_part(&message.replace("\r\n", "\n"))
}

fn text_part(part: &str) -> Option<String> {
    let (headers, body) = split_headers(part);
    let content_type = header(&headers, "content-type").unwrap_or("text/plain");
    let mime_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime_type.starts_with("multipart/") {
        let boundary = parameter(content_type, "boundary")?;
        return subparts(body, &boundary).find_map(text_part);
    }
    if mime_type != "text/plain" {
        return None;
    }
    let encoding = header(&headers, "content-transfer-encoding")
        .unwrap_or("7bit")
        .to_ascii_lowercase();
    let bytes = match encoding.as_str() {
        "quoted-printable" => {
            quoted_printable::decode(body, quoted_printable::ParseMode::Robust).ok()?
        }
        "base64" => {
            let compact: String = body.split_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .ok()?
        }
        _ => body.as_bytes().to_vec(),
    };
    // The quoted-printable decoder writes CRLF line breaks; keep to one line ending.
    Some(String::from_utf8_lossy(&bytes).replace("\r\n", "\n"))
}

/// The part's header fields (names lowercased, folded lines joined) and its body.
fn split_headers(part: &str) -> (Vec<(String, String)>, &str) {
    let (head, body) = if let Some(body) = part.strip_prefix('\n') {
        ("", body)
    } else {
        part.split_once("\n\n").unwrap_or((part, ""))
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    (headers, body)
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, value)| value.as_str())
}

/// A parameter of a header value: `boundary` in `multipart/alternative; boundary="abc"`.
fn parameter(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|parameter| {
        let (key, value) = parameter.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// The parts of a multipart body: what lies between the `--boundary` lines, up to `--boundary--`.
fn subparts<'b>(body: &'b str, boundary: &str) -> impl Iterator<Item = &'b str> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut offset: usize = 0;
    for line in body.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == delimiter || bare == format!("{delimiter}--") {
            if let Some(start) = start {
                // The line break before a delimiter belongs to the delimiter.
                let end = offset.saturating_sub(1).max(start);
                parts.push(&body[start..end]);
            }
            if bare != delimiter {
                break;
            }
            start = Some(offset + line.len());
        }
        offset += line.len();
    }
    parts.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Settings,
        mail::{ConfirmationEmail, Mailer},
    };

    /// The service's own confirmation email, as lettre formats it: the case that matters.
    #[tokio::test]
    async fn the_link_survives_the_encoding_lettre_chose() {
        let settings = Settings::defaults();
        let mailer = Mailer::new(&settings.smtp, settings.mail_from()).unwrap();
        let link =
            "http://127.0.0.1:40123/confirm?token=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let message = mailer
            .confirmation(&ConfirmationEmail {
                id: 1,
                to_address: "ann@example.com",
                link,
            })
            .unwrap();
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert!(
            raw.contains("Content-Transfer-Encoding: quoted-printable") && !raw.contains(link),
            "the case this test is for: the link is encoded\n{raw}"
        );

        let text = text_body(&raw).expect("a text part");

        assert!(text.contains(&format!("\n{link}\n")), "{text}");
        assert!(text.starts_with("Hi,\n"), "{text}");
    }

    #[test]
    fn base64_and_plain_parts_are_read_too() {
        let message = "Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
            preamble\r\n\
            --outer\r\n\
            Content-Type: text/html\r\n\r\n\
            <p>not this</p>\r\n\
            --outer\r\n\
            Content-Type: text/plain;\r\n charset=utf-8\r\n\
            Content-Transfer-Encoding: base64\r\n\r\n\
            aGVsbG8g\r\nd29ybGQ=\r\n\
            --outer--\r\n\
            epilogue\r\n";
        assert_eq!(text_body(message).as_deref(), Some("hello world"));

        let single = "Subject: plain\r\n\r\nline one\r\nline two\r\n";
        assert_eq!(text_body(single).as_deref(), Some("line one\nline two\n"));
        assert_eq!(text_body("Content-Type: text/html\r\n\r\n<p>x</p>"), None);
    }
}
