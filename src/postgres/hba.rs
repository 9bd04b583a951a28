//! `pg_hba.conf` as Capstan writes it: its own rules first (first match
//! wins, so user lines cannot weaken them), then the user's lines, then
//! password authentication over TLS for everyone else.

use super::roles;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HbaError {
    #[error("pg_hba line {index} ({line:?}) spans several lines; give one rule per entry")]
    MultiLine { index: usize, line: String },
    #[error(
        "pg_hba line {index} ({line:?}) starts with {kind:?}: expected local, host, hostssl, hostnossl, hostgssenc or hostnogssenc"
    )]
    UnknownType {
        index: usize,
        line: String,
        kind: String,
    },
    #[error("pg_hba line {index} ({line:?}) has no database, user or address")]
    TooShort { index: usize, line: String },
}

const CONNECTION_TYPES: &[&str] = &[
    "local",
    "host",
    "hostssl",
    "hostnossl",
    "hostgssenc",
    "hostnogssenc",
];

/// Checks user lines: one rule each, a known connection type (no `include`:
/// it could read any file in the pod). Empty lines and comments pass.
pub fn validate_user_lines(lines: &[String]) -> Result<(), HbaError> {
    for (index, line) in lines.iter().enumerate() {
        if line.contains('\n') || line.contains('\r') {
            return Err(HbaError::MultiLine {
                index,
                line: line.clone(),
            });
        }
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut tokens = trimmed.split_whitespace();
        let kind = tokens.next().unwrap_or_default();
        if !CONNECTION_TYPES.contains(&kind) {
            return Err(HbaError::UnknownType {
                index,
                line: line.clone(),
                kind: kind.to_string(),
            });
        }
        // local: database user method; others also an address.
        let needed = if kind == "local" { 3 } else { 4 };
        if tokens.count() < needed {
            return Err(HbaError::TooShort {
                index,
                line: line.clone(),
            });
        }
    }
    Ok(())
}

/// The whole file.
pub fn render(user_lines: &[String]) -> Result<String, HbaError> {
    validate_user_lines(user_lines)?;
    let superuser = roles::SUPERUSER;
    let replication = roles::REPLICATION;
    let mut out =
        String::from("# Written by the Capstan instance manager; edits are overwritten.\n");
    out.push_str(&format!(
        "# The instance manager, on the Unix socket only.\n\
         local all {superuser} peer\n\
         # Nothing without TLS over TCP.\n\
         hostnossl all all all reject\n\
         # Streaming replication and pg_rewind: client certificate only.\n\
         hostssl replication {replication} all cert\n\
         hostssl postgres {replication} all cert\n\
         hostssl all {replication} all reject\n"
    ));
    if !user_lines.is_empty() {
        out.push_str("# From spec.postgres.hba.\n");
        for line in user_lines {
            out.push_str(line.trim());
            out.push('\n');
        }
    }
    out.push_str("# Everyone else: SCRAM over TLS.\nhostssl all all all scram-sha-256\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect()
    }

    #[test]
    fn capstan_rules_come_first_and_password_tls_last() {
        let text = render(&["hostssl app app 10.0.0.0/8 scram-sha-256".into()]).unwrap();
        assert_eq!(
            rules(&text),
            vec![
                "local all postgres peer",
                "hostnossl all all all reject",
                "hostssl replication streaming_replica all cert",
                "hostssl postgres streaming_replica all cert",
                "hostssl all streaming_replica all reject",
                "hostssl app app 10.0.0.0/8 scram-sha-256",
                "hostssl all all all scram-sha-256",
            ]
        );
    }

    #[test]
    fn no_plain_tcp_rule_precedes_the_reject() {
        let text = render(&["host all all 0.0.0.0/0 trust".into()]).unwrap();
        let lines = rules(&text);
        let reject = lines
            .iter()
            .position(|l| *l == "hostnossl all all all reject")
            .unwrap();
        let user = lines
            .iter()
            .position(|l| l.starts_with("host all"))
            .unwrap();
        assert!(reject < user);
        assert!(!lines[..reject].iter().any(|l| l.starts_with("host")));
    }

    #[test]
    fn rejects_injection_and_unknown_types() {
        assert!(matches!(
            render(&["hostssl all all all trust\nlocal all all trust".into()]),
            Err(HbaError::MultiLine { index: 0, .. })
        ));
        assert!(matches!(
            render(&["include /etc/passwd".into()]),
            Err(HbaError::UnknownType { .. })
        ));
        assert!(matches!(
            render(&["ok".into(), "hostssl all".into()]),
            Err(HbaError::UnknownType { index: 0, .. })
        ));
        assert!(matches!(
            render(&["hostssl all all".into()]),
            Err(HbaError::TooShort { .. })
        ));
    }

    #[test]
    fn comments_and_blank_lines_are_allowed() {
        let text = render(&["# ours".into(), "".into(), "local all all peer".into()]).unwrap();
        assert!(text.contains("local all all peer\n"));
    }
}
