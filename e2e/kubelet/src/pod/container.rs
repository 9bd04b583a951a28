//! Turning a container spec into a sandboxed process: image mapping, user,
//! environment, mounts, command line, log file.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;

use super::{CtrId, Worker};
use crate::env::{EnvInputs, container_env, expand};
use crate::probe::{ExecContext, ProbeTarget};
use crate::runtime::log_path;
use crate::sys::cgroup::Cgroup;
use crate::sys::spawn::{
    Mount, Namespaces, SpawnSpec, create_mount_points, order_mounts, resolve_in_container, spawn,
};
use crate::users::Credentials;

/// Where the kubelet mounts a pod's service account files.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

pub(crate) enum StartFailure {
    /// Not started; retried after `retry` (ErrImagePull, CreateContainerConfigError, …).
    Waiting {
        reason: &'static str,
        message: String,
        retry: Duration,
    },
    /// Started and failed at once (exec failure): counts as a crashed run.
    Run(String),
}

fn config_error(message: impl Into<String>) -> StartFailure {
    StartFailure::Waiting {
        reason: "CreateContainerConfigError",
        message: message.into(),
        retry: Duration::from_secs(2),
    }
}

/// Everything needed to start one run of a container.
pub(crate) struct Prepared {
    name: String,
    pod_uid: String,
    pod_dir: PathBuf,
    pod_cgroup: Cgroup,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    creds: Credentials,
    mounts: Vec<Mount>,
    hostname: String,
    pod_ip: Ipv4Addr,
    node_ip: Ipv4Addr,
    pod_cidr: crate::ipam::Cidr,
    ports: BTreeMap<String, u16>,
}

pub(crate) struct Launched {
    pub child: tokio::process::Child,
    pub pid: i32,
    pub cgroup: Cgroup,
    pub target: ProbeTarget,
    pub container_id: String,
}

impl Worker {
    pub(super) fn prepare(&mut self, id: CtrId) -> Result<Prepared, StartFailure> {
        let spec: Container = self.ctr(id).spec.clone();
        let cfg = &self.rt.inner.config;
        let sb = self
            .sandbox
            .as_ref()
            .ok_or_else(|| config_error("pod sandbox is not ready"))?;
        let volumes = sb
            .volumes
            .as_ref()
            .ok_or_else(|| config_error("pod volumes are not ready"))?;
        let pod_ip = self.ip.ok_or_else(|| config_error("pod has no address"))?;
        let image_name = spec.image.clone().unwrap_or_default();
        let image = cfg
            .images
            .resolve(&image_name)
            .map_err(|e| StartFailure::Waiting {
                reason: "ErrImagePull",
                message: e.to_string(),
                retry: cfg.backoff.initial.max(Duration::from_secs(1)),
            })?;

        let pod_spec = self.pod.spec.clone().unwrap_or_default();
        let pod_sc = pod_spec.security_context.clone().unwrap_or_default();
        let sc = spec.security_context.clone().unwrap_or_default();
        let run_as_user = sc.run_as_user.or(pod_sc.run_as_user);
        let run_as_group = sc.run_as_group.or(pod_sc.run_as_group);
        let creds = cfg.ids.credentials(
            run_as_user,
            run_as_group,
            pod_sc.fs_group,
            pod_sc.supplemental_groups.as_deref().unwrap_or_default(),
        );
        if sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true)
            && run_as_user.unwrap_or(0) == 0
        {
            return Err(config_error(
                "container has runAsNonRoot and image will run as root",
            ));
        }

        let hostname = pod_spec
            .hostname
            .clone()
            .unwrap_or_else(|| self.name.clone());
        let mut service_env: Vec<(String, String)> =
            vec![("HOSTNAME".to_string(), hostname.clone())];
        if let Some(api) = &cfg.api_server {
            let (host, port) = (api.host.to_string(), api.port.to_string());
            service_env.extend([
                ("KUBERNETES_SERVICE_HOST".to_string(), host.clone()),
                ("KUBERNETES_SERVICE_PORT".to_string(), port.clone()),
                ("KUBERNETES_SERVICE_PORT_HTTPS".to_string(), port.clone()),
                (
                    "KUBERNETES_PORT".to_string(),
                    format!("tcp://{host}:{port}"),
                ),
            ]);
        }
        let inputs = EnvInputs {
            facts: self.facts(),
            objects: self.rt.inner.objects.as_ref(),
            image: &image.env,
            service: &service_env,
        };
        let mut env = container_env(&spec, &inputs).map_err(|e| config_error(e.to_string()))?;
        if env.get("HOME").is_none() {
            env.set("HOME", creds.home.clone());
        }
        let lookup = |name: &str| env.get(name).map(str::to_string);

        let mut argv: Vec<String> = match spec.command.as_deref() {
            Some(cmd) if !cmd.is_empty() => cmd.iter().map(|a| expand(a, lookup)).collect(),
            _ => image.entrypoint.clone(),
        };
        argv.extend(spec.args.iter().flatten().map(|a| expand(a, lookup)));
        if argv.is_empty() {
            return Err(StartFailure::Waiting {
                reason: "CreateContainerError",
                message: format!(
                    "no command specified (image {image_name:?} has no entrypoint in the e2e kubelet)"
                ),
                retry: cfg.backoff.initial.max(Duration::from_secs(1)),
            });
        }

        let rootfs = sb.dir.join("rootfs").join(&spec.name);
        let mut mounts = Vec::new();
        for (i, dir) in image.empty_dirs.iter().enumerate() {
            let source = rootfs.join(i.to_string());
            fs::create_dir_all(&source)
                .map_err(|e| config_error(format!("cannot create {}: {e}", source.display())))?;
            mounts.push(Mount {
                source,
                target: dir.clone(),
                read_only: false,
            });
        }
        for m in &image.mounts {
            mounts.push(Mount {
                source: m.source.clone(),
                target: m.target.clone(),
                read_only: true,
            });
        }
        // Only files the host has: a missing mount point would be created on
        // the host. Canonical paths, so /bin/x and /usr/bin/x count once.
        let mut hidden: Vec<PathBuf> = image
            .hidden
            .iter()
            .filter_map(|p| fs::canonicalize(p).ok())
            .filter(|p| p.is_file())
            .collect();
        hidden.sort();
        hidden.dedup();
        for target in hidden {
            mounts.push(Mount {
                source: PathBuf::from("/dev/null"),
                target,
                read_only: false,
            });
        }
        let mut targets = Vec::new();
        for vm in spec.volume_mounts.iter().flatten() {
            let volume = volumes.get(&vm.name).ok_or_else(|| {
                config_error(format!(
                    "volume {:?} referenced by container {:?} does not exist",
                    vm.name, spec.name
                ))
            })?;
            let sub_path = match (&vm.sub_path, &vm.sub_path_expr) {
                (Some(p), _) if !p.is_empty() => Some(p.clone()),
                (_, Some(e)) if !e.is_empty() => Some(expand(e, lookup)),
                _ => None,
            };
            let mut source = volume.host_path.clone();
            if let Some(sub) = sub_path {
                if Path::new(&sub).is_absolute() || sub.split('/').any(|c| c == "..") {
                    return Err(config_error(format!("invalid subPath {sub:?}")));
                }
                source = source.join(sub);
                if !source.exists() && !volume.read_only {
                    fs::create_dir_all(&source).map_err(|e| {
                        config_error(format!("cannot create subPath {}: {e}", source.display()))
                    })?;
                }
            }
            targets.push(vm.mount_path.clone());
            mounts.push(Mount {
                source,
                target: PathBuf::from(&vm.mount_path),
                read_only: vm.read_only == Some(true) || volume.read_only,
            });
        }
        if !targets.iter().any(|t| t == "/etc/hosts") {
            mounts.push(Mount {
                source: sb.hosts.clone(),
                target: PathBuf::from("/etc/hosts"),
                read_only: false,
            });
        }
        if let Some(sa) = &sb.service_account
            && !targets
                .iter()
                .any(|t| t.trim_end_matches('/') == SERVICE_ACCOUNT_DIR)
        {
            mounts.push(Mount {
                source: sa.clone(),
                target: PathBuf::from(SERVICE_ACCOUNT_DIR),
                read_only: true,
            });
        }
        // terminationMessagePath: this run's own empty file.
        if let Some(m) = super::termination::prepare(&sb.dir, &spec)
            .map_err(|e| config_error(format!("cannot create the termination message file: {e}")))?
        {
            mounts.push(m);
        }
        order_mounts(&mut mounts);

        let cwd = PathBuf::from(
            spec.working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".to_string()),
        );
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        Ok(Prepared {
            name: spec.name.clone(),
            pod_uid: self.uid.clone(),
            pod_dir: sb.dir.clone(),
            pod_cgroup: sb.cgroup.clone(),
            argv,
            env: env.vars().to_vec(),
            cwd,
            creds,
            mounts,
            hostname,
            pod_ip,
            node_ip: cfg.node_ip,
            pod_cidr: cfg.pod_cidr,
            ports,
        })
    }
}

impl Prepared {
    /// Starts the process; `run` numbers the log file.
    pub(crate) fn launch(self, instance: u64, run: i32) -> Result<Launched, StartFailure> {
        let fail = |what: &str, e: std::io::Error| StartFailure::Run(format!("{what}: {e}"));
        create_mount_points(&self.mounts).map_err(|e| fail("cannot create mount points", e))?;
        let cwd_on_host = resolve_in_container(&self.mounts, &self.cwd);
        if !cwd_on_host.exists() {
            fs::create_dir_all(&cwd_on_host).map_err(|e| fail("cannot create workingDir", e))?;
        }
        let log = log_path(&self.pod_dir, &self.name, run);
        if let Some(parent) = log.parent() {
            fs::create_dir_all(parent).map_err(|e| fail("cannot create log directory", e))?;
        }
        let stdout = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| fail("cannot open log file", e))?;
        let stderr = stdout
            .try_clone()
            .map_err(|e| fail("cannot open log file", e))?;
        let cgroup = self
            .pod_cgroup
            .child(&format!("{}-{instance}", self.name))
            .map_err(|e| StartFailure::Run(e.to_string()))?;
        let spawned = spawn(SpawnSpec {
            argv: self.argv.clone(),
            env: self.env.clone(),
            cwd: Some(self.cwd.clone()),
            creds: self.creds.clone(),
            cgroup_procs: cgroup.procs_file(),
            namespaces: Namespaces::New {
                mounts: self.mounts.clone(),
                hostname: self.hostname.clone(),
            },
            stdout: Stdio::from(stdout),
            stderr: Stdio::from(stderr),
        });
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                cgroup.remove();
                return Err(StartFailure::Run(format!(
                    "failed to start {:?}: {e}",
                    self.argv[0]
                )));
            }
        };
        let exec = spawned.ns.map(|ns| ExecContext {
            env: self.env,
            cwd: Some(self.cwd),
            creds: self.creds,
            cgroup_procs: cgroup.procs_file(),
            ns,
        });
        Ok(Launched {
            child: spawned.child,
            pid: spawned.pid,
            target: ProbeTarget {
                pod_ip: self.pod_ip,
                node_ip: self.node_ip,
                pod_cidr: self.pod_cidr,
                ports: self.ports,
                exec,
            },
            container_id: format!("e2e://{}-{}-{instance}", self.pod_uid, self.name),
            cgroup,
        })
    }
}
