//! `synchronous_standby_names` from the cluster's synchronous settings.
//!
//! Standbys identify themselves by `application_name`, which Capstan sets to
//! the pod name in `primary_conninfo`, so the primary lists the other
//! instances by pod name.

use crate::contract::settings::{SynchronousMode, SynchronousSettings};

/// The rendered value and, when the requested number did not fit, why it
/// was changed (for a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynchronousStandbyNames {
    pub value: String,
    pub adjusted: Option<String>,
}

/// `''` for asynchronous replication or a single instance; otherwise
/// `ANY n ("a", "b")` (quorum) or `FIRST n ("a", "b")` (priority, in the
/// given order). `n` is clamped to 1..=number of standbys.
pub fn render(settings: &SynchronousSettings, standbys: &[&str]) -> SynchronousStandbyNames {
    let keyword = match settings.mode {
        SynchronousMode::Off => return plain(String::new()),
        SynchronousMode::Quorum => "ANY",
        SynchronousMode::Priority => "FIRST",
    };
    if standbys.is_empty() {
        return SynchronousStandbyNames {
            value: String::new(),
            adjusted: Some(
                "synchronous replication needs at least one other instance; a single instance commits alone".into(),
            ),
        };
    }
    let available = standbys.len() as u32;
    let number = settings.number.clamp(1, available);
    let adjusted = (number != settings.number).then(|| {
        format!(
            "synchronous number {} does not fit {available} standby(s); using {number}",
            settings.number
        )
    });
    let names: Vec<String> = standbys.iter().map(|s| quote_name(s)).collect();
    SynchronousStandbyNames {
        value: format!("{keyword} {number} ({})", names.join(", ")),
        adjusted,
    }
}

/// How many standbys a `synchronous_standby_names` value makes commits wait
/// for, whoever wrote it: `''` none, `ANY n (...)`, `FIRST n (...)` and
/// `n (...)` n, a bare list (the old syntax) one.
pub fn required(value: &str) -> u32 {
    let value = value.trim();
    if value.is_empty() {
        return 0;
    }
    let mut words = value.split_whitespace();
    let first = words.next().unwrap_or_default();
    let count = if first.eq_ignore_ascii_case("ANY") || first.eq_ignore_ascii_case("FIRST") {
        words.next()
    } else {
        Some(first)
    };
    count
        .map(|n| {
            n.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

fn plain(value: String) -> SynchronousStandbyNames {
    SynchronousStandbyNames {
        value,
        adjusted: None,
    }
}

/// Standby names are identifiers in this syntax; pod names contain `-`, so
/// they are always double-quoted.
fn quote_name(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(mode: SynchronousMode, number: u32) -> SynchronousSettings {
        SynchronousSettings { mode, number }
    }

    #[test]
    fn required_reads_every_syntax_postgres_accepts() {
        assert_eq!(required(""), 0);
        assert_eq!(required("  "), 0);
        assert_eq!(required(r#"ANY 2 ("db-1", "db-2", "db-3")"#), 2);
        assert_eq!(required(r#"first 1 ("db-1")"#), 1);
        assert_eq!(required("3 (a, b, c)"), 3);
        assert_eq!(required("2(a, b)"), 2);
        assert_eq!(required("a, b"), 1);
        assert_eq!(required("*"), 1);
        let rendered = render(&sync(SynchronousMode::Quorum, 2), &["db-2", "db-3"]);
        assert_eq!(required(&rendered.value), 2);
    }

    #[test]
    fn off_is_empty() {
        let r = render(&sync(SynchronousMode::Off, 2), &["db-2", "db-3"]);
        assert_eq!(r, plain(String::new()));
    }

    #[test]
    fn quorum_and_priority_list_the_standbys_in_order() {
        let r = render(&sync(SynchronousMode::Quorum, 1), &["db-2", "db-3"]);
        assert_eq!(r.value, r#"ANY 1 ("db-2", "db-3")"#);
        assert_eq!(r.adjusted, None);
        let r = render(&sync(SynchronousMode::Priority, 2), &["db-3", "db-1"]);
        assert_eq!(r.value, r#"FIRST 2 ("db-3", "db-1")"#);
    }

    #[test]
    fn the_number_is_clamped_with_a_reason() {
        let r = render(&sync(SynchronousMode::Quorum, 5), &["db-2", "db-3"]);
        assert_eq!(r.value, r#"ANY 2 ("db-2", "db-3")"#);
        assert!(r.adjusted.unwrap().contains("using 2"));
        let r = render(&sync(SynchronousMode::Priority, 0), &["db-2"]);
        assert_eq!(r.value, r#"FIRST 1 ("db-2")"#);
        assert!(r.adjusted.is_some());
    }

    #[test]
    fn a_single_instance_commits_alone() {
        let r = render(&sync(SynchronousMode::Quorum, 1), &[]);
        assert_eq!(r.value, "");
        assert!(r.adjusted.is_some());
    }

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(quote_name(r#"a"b"#), r#""a""b""#);
    }
}
