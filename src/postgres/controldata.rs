//! `pg_controldata` output (run with `LC_ALL=C`: it is translated otherwise).

use std::collections::HashMap;

use super::lsn::Lsn;

/// What the instance manager needs from `pg_control`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlData {
    pub system_identifier: u64,
    /// `in production`, `shut down`, `shut down in recovery`, `in crash recovery`, …
    pub cluster_state: String,
    /// Timeline of the latest checkpoint.
    pub timeline: u32,
    /// Data checksums on (`Data page checksum version` > 0).
    pub data_checksums: bool,
    /// Where the latest checkpoint record starts; after a clean shutdown,
    /// the shutdown checkpoint: the last record the server wrote.
    pub checkpoint: Option<Lsn>,
}

impl ControlData {
    /// Shut down cleanly, as a primary or as a standby: no crash recovery pending.
    pub fn shut_down_cleanly(&self) -> bool {
        self.cluster_state == "shut down" || self.cluster_state == "shut down in recovery"
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlDataError {
    #[error("pg_controldata output has no {0:?} line")]
    Missing(&'static str),
    #[error("pg_controldata field {field:?} has an unexpected value {value:?}")]
    Invalid { field: &'static str, value: String },
}

const SYSTEM_IDENTIFIER: &str = "Database system identifier";
const CLUSTER_STATE: &str = "Database cluster state";
const TIMELINE: &str = "Latest checkpoint's TimeLineID";
const CHECKSUMS: &str = "Data page checksum version";
const CHECKPOINT: &str = "Latest checkpoint location";

pub fn parse(output: &str) -> Result<ControlData, ControlDataError> {
    let fields: HashMap<&str, &str> = output
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let get = |field: &'static str| {
        fields
            .get(field)
            .copied()
            .ok_or(ControlDataError::Missing(field))
    };
    let invalid = |field: &'static str, value: &str| ControlDataError::Invalid {
        field,
        value: value.to_string(),
    };
    let sysid = get(SYSTEM_IDENTIFIER)?;
    let timeline = get(TIMELINE)?;
    let checksums = get(CHECKSUMS)?;
    Ok(ControlData {
        system_identifier: sysid
            .parse()
            .map_err(|_| invalid(SYSTEM_IDENTIFIER, sysid))?,
        cluster_state: get(CLUSTER_STATE)?.to_string(),
        timeline: timeline.parse().map_err(|_| invalid(TIMELINE, timeline))?,
        data_checksums: checksums
            .parse::<u32>()
            .map_err(|_| invalid(CHECKSUMS, checksums))?
            > 0,
        checkpoint: fields.get(CHECKPOINT).and_then(|v| v.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7710938712615726917
Database cluster state:               shut down in recovery
pg_control last modified:             Sun Nov 22 10:20:25 2026
Latest checkpoint location:           0/1500790
Latest checkpoint's TimeLineID:       3
Latest checkpoint's PrevTimeLineID:   2
Data page checksum version:           1
";

    #[test]
    fn parses_the_fields_we_use() {
        let data = parse(SAMPLE).unwrap();
        assert_eq!(data.system_identifier, 7710938712615726917);
        assert_eq!(data.cluster_state, "shut down in recovery");
        assert_eq!(data.timeline, 3);
        assert!(data.data_checksums);
        assert!(data.shut_down_cleanly());
        assert_eq!(data.checkpoint, Some(Lsn(0x1500790)));
    }

    #[test]
    fn reports_missing_and_invalid_fields() {
        assert_eq!(
            parse("Database cluster state: in production\n"),
            Err(ControlDataError::Missing(SYSTEM_IDENTIFIER))
        );
        let bad = SAMPLE.replace("7710938712615726917", "x");
        assert!(matches!(
            parse(&bad),
            Err(ControlDataError::Invalid { field, .. }) if field == SYSTEM_IDENTIFIER
        ));
        let crashed = SAMPLE.replace("shut down in recovery", "in production");
        assert!(!parse(&crashed).unwrap().shut_down_cleanly());
    }
}
