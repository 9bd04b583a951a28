//! `postgresql.conf` syntax: parameter names and quoted values.
//!
//! Every value is written single-quoted, which PostgreSQL accepts for any
//! parameter type, so a value can never end the line early or start a new
//! setting.

use std::fmt::Write as _;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfError {
    #[error(
        "invalid parameter name {0:?}: use letters, digits and '_' (and '.' for extension parameters), starting with a letter or '_'"
    )]
    InvalidName(String),
    #[error(
        "the value of parameter {0:?} contains a NUL character, which postgresql.conf cannot hold"
    )]
    NulInValue(String),
}

/// Checks a parameter name (`work_mem`, `pg_stat_statements.max`).
pub fn validate_name(name: &str) -> Result<(), ConfError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    let dots_ok = !name.ends_with('.') && !name.contains("..");
    if first_ok && rest_ok && dots_ok {
        Ok(())
    } else {
        Err(ConfError::InvalidName(name.to_string()))
    }
}

/// Quotes `value` for `postgresql.conf`: `'` doubles, backslash and control
/// characters become the escapes the configuration scanner understands.
pub fn quote_value(name: &str, value: &str) -> Result<String, ConfError> {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\0' => return Err(ConfError::NulInValue(name.to_string())),
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\{:03o}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    Ok(out)
}

/// One `name = 'value'` line per entry, in the given order.
pub fn render<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<String, ConfError> {
    let mut out = String::new();
    for (name, value) in entries {
        validate_name(name)?;
        let quoted = quote_value(name, value)?;
        let _ = writeln!(out, "{name} = {quoted}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_are_single_quoted() {
        assert_eq!(quote_value("p", "128MB").unwrap(), "'128MB'");
        assert_eq!(quote_value("p", "").unwrap(), "''");
        assert_eq!(quote_value("p", "on").unwrap(), "'on'");
    }

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(quote_value("p", "it's").unwrap(), "'it''s'");
        assert_eq!(quote_value("p", "''").unwrap(), "''''''");
        assert_eq!(quote_value("p", r"C:\dir\").unwrap(), r"'C:\\dir\\'");
        assert_eq!(quote_value("p", r"\'").unwrap(), r"'\\'''");
    }

    #[test]
    fn control_characters_cannot_break_the_line() {
        assert_eq!(
            quote_value("p", "a\nb = 'evil'").unwrap(),
            r"'a\nb = ''evil'''"
        );
        assert_eq!(quote_value("p", "a\r\tb").unwrap(), r"'a\r\tb'");
        assert_eq!(quote_value("p", "\u{1}").unwrap(), r"'\001'");
        assert_eq!(
            quote_value("p", "a\0b"),
            Err(ConfError::NulInValue("p".into()))
        );
    }

    #[test]
    fn non_ascii_passes_through() {
        assert_eq!(quote_value("p", "héllo ✓").unwrap(), "'héllo ✓'");
    }

    #[test]
    fn names_are_checked() {
        for good in ["work_mem", "_x", "pg_stat_statements.max", "a1.b_2"] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        for bad in [
            "", "1abc", "a b", "a=b", "a.", "a..b", "work-mem", "x'y", "a\nb", "ü",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn render_writes_one_line_per_entry_in_order() {
        let text = render([("work_mem", "64MB"), ("search_path", "\"$user\", public")]).unwrap();
        assert_eq!(
            text,
            "work_mem = '64MB'\nsearch_path = '\"$user\", public'\n"
        );
        assert!(render([("bad name", "x")]).is_err());
    }
}
