//! Every e2e scenario, in one test binary: libtest runs two at a time
//! (each on its own control plane, in its own network and mount namespace),
//! so scenarios of different files run side by side, and the harness is
//! linked once. Run one file's scenarios
//! with its module name as the filter, e.g.
//! `cargo test -p capstan-e2e --test e2e -- ha_failover::`.

mod admission;
mod backup_s3;
mod backup_schedule;
mod backup_verify;
mod backup_volume;
mod control_plane;
mod footprint;
mod ha_bench;
mod ha_failover;
mod ha_kill9;
mod ha_operator_restart;
mod ha_partition;
mod ha_switchover;
mod install;
mod lifecycle;
mod monitoring;
mod operator_restart;
mod plugin;
mod roles;
mod rolling_update;
mod storage_volumes;
mod tls_certificates;
mod upgrade_bench;
mod upgrade_image_check;
mod upgrade_major;
mod upgrade_operator;
mod upgrade_parameters;
