//! Quoting for SQL text the instance manager builds (role and database names
//! come from the spec, so they are never pasted in unquoted).

/// `"name"`, with `"` doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, with `'` doubled. PostgreSQL runs with
/// `standard_conforming_strings = on` (the default since 9.1), so backslashes
/// are literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted() {
        assert_eq!(quote_ident("app"), "\"app\"");
        assert_eq!(quote_ident("My\"App"), "\"My\"\"App\"");
        assert_eq!(quote_ident("a; DROP TABLE x"), "\"a; DROP TABLE x\"");
    }

    #[test]
    fn literals_double_single_quotes() {
        assert_eq!(quote_literal("x"), "'x'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b"), r"'a\b'");
    }
}
