//! Every email and page confirmd writes is rendered here, by a template engine (minijinja) that
//! escapes by construction: in a template whose name ends in `.html`, every value is
//! HTML-escaped unless a template marks it safe, and none does. Values are values, never
//! template text, so a name or a token cannot smuggle in `{{ link }}` or markup: replacing
//! placeholders in a string, as the emails used to, can do both.
//!
//! The templates are compiled into the binary and parsed once, on first use.

use std::sync::LazyLock;

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};

/// Name and source of each template; the extension picks the escaping (`.html`: HTML, `.txt`: none).
const SOURCES: &[(&str, &str)] = &[
    ("confirmation.txt", include_str!("mail/confirmation.txt")),
    ("confirmation.html", include_str!("mail/confirmation.html")),
    ("confirm_page.html", include_str!("http/confirm_page.html")),
];

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // A variable a template names but the caller did not give is an error, not an empty string
    // (`if` may still test for one).
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_formatter(|out, state, value| {
        // minijinja's HTML escaping also writes `/` as `&#x2f;`: correct, but it makes every
        // link unreadable in the page source and in the email. The five characters that can
        // end a text or attribute value are the ones that matter.
        if matches!(state.auto_escape(), AutoEscape::Html)
            && !value.is_safe()
            && let Some(text) = value.as_str()
        {
            return Ok(out.write_str(&escape_html(text))?);
        }
        minijinja::escape_formatter(out, state, value)
    });
    for (name, source) in SOURCES {
        env.add_template(name, source)
            .unwrap_or_else(|e| panic!("the built-in template {name} does not parse: {e}"));
    }
    env
});

/// Renders the built-in template `name` with `context` (build it with [`minijinja::context!`]).
/// The templates are part of the binary and tested: an error here is a bug, not bad input.
pub(crate) fn render(name: &str, context: Value) -> Result<String, minijinja::Error> {
    TEMPLATES.get_template(name)?.render(context)
}

/// The five characters that matter in HTML text and attribute values.
fn escape_html(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for c in input.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use minijinja::context;

    use super::*;

    #[test]
    fn html_templates_escape_every_value_and_text_templates_none() {
        let hostile = "<script>alert('x')</script> & {{ link }}";
        let html = render(
            "confirm_page.html",
            context! { title => hostile, heading => hostile, message => hostile, token => hostile },
        )
        .unwrap();
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; {{ link }}"),
            "{html}"
        );
        let text = render("confirmation.txt", context! { link => hostile }).unwrap();
        assert!(text.contains(hostile), "plain text is not escaped: {text}");
    }

    #[test]
    fn a_missing_value_is_an_error_not_an_empty_string() {
        assert!(render("confirmation.txt", context! {}).is_err());
    }
}
