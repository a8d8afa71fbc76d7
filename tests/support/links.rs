//! The confirmation link in an email, and the token it carries: what a user clicks, read the
//! way every test reads it.

/// The first http(s) URL in `text` that contains `/confirm?token=`, up to the first whitespace.
pub fn confirmation_link_in(text: &str) -> Option<&str> {
    text.match_indices("http")
        .map(|(start, _)| &text[start..])
        .filter(|rest| rest.starts_with("http://") || rest.starts_with("https://"))
        .map(|rest| &rest[..rest.find(char::is_whitespace).unwrap_or(rest.len())])
        .find(|url| url.contains("/confirm?token="))
}

/// The token a confirmation link carries.
pub fn token_of(link: &str) -> &str {
    link.split_once("token=")
        .unwrap_or_else(|| panic!("{link} has no token"))
        .1
}
