//! libpq connection strings (`primary_conninfo`, `pg_basebackup -d`,
//! `pg_rewind --source-server`).

use std::fmt;

/// `key='value'` pairs in order. Passwords never go in here: replication
/// authenticates with a client certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo(Vec<(&'static str, String)>);

impl ConnInfo {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.0.push((key, value.into()));
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Quotes a value: libpq takes `\'` and `\\` inside single quotes.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{key}={}", quote(value))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_quoted_pairs_in_order() {
        let info = ConnInfo::new()
            .with("host", "db-rw")
            .with("port", "5432")
            .with("sslcert", "/etc/tls dir/tls.crt");
        assert_eq!(
            info.to_string(),
            "host='db-rw' port='5432' sslcert='/etc/tls dir/tls.crt'"
        );
        assert_eq!(info.get("port"), Some("5432"));
        assert_eq!(info.get("user"), None);
    }

    #[test]
    fn escapes_quotes_and_backslashes() {
        assert_eq!(quote(r"it's\x"), r"'it\'s\\x'");
        assert_eq!(quote(""), "''");
    }
}
