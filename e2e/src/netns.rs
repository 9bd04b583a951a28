//! Every local scenario runs in a network (and mount) namespace of its own, created for
//! the test and gone with it: the Kubernetes API refuses loopback endpoint
//! addresses, so pods and Services get addresses of ordinary ranges
//! ([`POD_CIDR`], [`SERVICE_CIDR`]), and those must never appear on the
//! host's own interfaces. The namespace is anonymous (unshared by the test's
//! thread, not `ip netns add`): it disappears when the test's threads and
//! the processes they started are gone, also when the test panics or is
//! killed.

use std::future::Future;
use std::net::Ipv4Addr;
use std::process::Command;

/// Pod addresses (the first is the node's and the API server's).
pub const POD_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 244, 0, 0), 16);
/// Service cluster IPs (`--service-cluster-ip-range`).
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 16);

/// Runs a scenario: on a real cluster (`CAPSTAN_E2E_KUBECONFIG`) on a fresh
/// runtime as is; locally on a fresh runtime in a new network namespace
/// whose loopback serves [`POD_CIDR`] and [`SERVICE_CIDR`]. A panic of the
/// scenario fails the calling test with the same message.
pub fn run<F, Fut>(scenario: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let isolate = std::env::var_os("CAPSTAN_E2E_KUBECONFIG").is_none();
    let thread = std::thread::Builder::new()
        .name("e2e-scenario".into())
        .spawn(move || {
            if isolate && let Err(e) = enter_new_namespace() {
                panic!("cannot isolate the test in a network namespace: {e}");
            }
            // Built after the unshare: its threads, and every process they
            // start, inherit the namespace.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
            runtime.block_on(scenario());
        })
        .unwrap_or_else(|e| panic!("cannot start the scenario thread: {e}"));
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Moves the calling thread into a new network namespace with `lo` up and
/// the pod and Service ranges routed to it (an AnyIP `local` route, so every
/// address of the ranges can be bound, as any 127/8 address can).
fn enter_new_namespace() -> Result<(), String> {
    use nix::sched::CloneFlags;
    nix::sched::unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).map_err(|e| {
        format!("unshare(CLONE_NEWNET | CLONE_NEWNS): {e} (the e2e harness needs root)")
    })?;
    // Volumes mounted for the test (size-limited tmpfs claims) stay in its
    // own mount namespace and go with it, even when it is killed.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private in the test's mount namespace: {e}"))?;
    let cidr = |(a, p): (Ipv4Addr, u8)| format!("{a}/{p}");
    ip(&["link", "set", "lo", "up"])?;
    ip(&["route", "add", "local", &cidr(POD_CIDR), "dev", "lo"])?;
    ip(&["route", "add", "local", &cidr(SERVICE_CIDR), "dev", "lo"])?;
    Ok(())
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e} (install iproute2)", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_sees_its_own_namespace_and_the_host_never_does() {
        let host_routes = || {
            let out = Command::new("ip")
                .args(["route", "show", "table", "local"])
                .output()
                .expect("ip route");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(!host_routes().contains("10.244.0.0/16"));
        run(|| async {
            let inside = {
                let out = Command::new("ip")
                    .args(["route", "show", "table", "local"])
                    .output()
                    .expect("ip route");
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            assert!(inside.contains("10.244.0.0/16"), "{inside}");
            // Any address of the range can be bound and reached.
            let listener = tokio::net::TcpListener::bind("10.244.3.7:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let connect = tokio::net::TcpStream::connect(addr);
            let (accepted, connected) = tokio::join!(listener.accept(), connect);
            accepted.unwrap();
            connected.unwrap();
        });
        assert!(!host_routes().contains("10.244.0.0/16"));
    }

    #[test]
    fn a_failing_scenario_fails_the_test_with_its_message() {
        let outcome = std::panic::catch_unwind(|| run(|| async { panic!("boom in scenario") }));
        let message = outcome.expect_err("the panic must reach the caller");
        let text = message
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| message.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(text.contains("boom in scenario"), "{text}");
    }
}
