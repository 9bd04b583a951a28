//! The manager's side of the primary lease: hold it before anything starts
//! or becomes writable, give it up when following another instance, and
//! fence a running primary that cannot hold it. The keeper task that
//! renews it and the safety argument are in [`crate::instance::fencing`].

use super::super::authority::Authority;
use super::Manager;
use super::errors::Source;

/// What a running primary does about the lease this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Held, or no fencing configured: go on as primary.
    GoOn,
    /// Fenced already: nothing may be done as primary until it is held again.
    Stop,
    /// Not held (fencing configured while it ran, or a renamed lease): take it.
    Acquire,
}

fn keep(enabled: bool, holding: bool, fenced: bool) -> Keep {
    if !enabled || holding {
        Keep::GoOn
    } else if fenced {
        Keep::Stop
    } else {
        Keep::Acquire
    }
}

impl<A: Authority> Manager<A> {
    /// Holds the primary lease (a no-op without fencing).
    pub(super) async fn hold_lease(&mut self) -> Result<(), String> {
        match self.lease.acquire().await {
            Ok(()) => {
                self.clear_error(Source::Lease);
                Ok(())
            }
            Err(e) => Err(format!("not starting writable: {e}")),
        }
    }

    pub(super) async fn release_lease(&mut self) {
        if self.shared.lease.holding() || self.shared.lease.fenced() {
            self.lease.release().await;
        }
        self.clear_error(Source::Lease);
    }

    /// A running primary must hold the lease. One it cannot get means
    /// another instance may be primary: fence. Returns whether it may go on
    /// as primary.
    pub(super) async fn keep_lease(&mut self) -> bool {
        let lease = &self.shared.lease;
        match keep(lease.enabled(), lease.holding(), lease.fenced()) {
            Keep::GoOn => true,
            Keep::Stop => false,
            Keep::Acquire => match self.lease.acquire().await {
                Ok(()) => true,
                Err(e) => {
                    let reason = format!("a running primary cannot hold the primary lease: {e}");
                    self.set_error(Source::Lease, reason.clone());
                    self.lease.fence(reason).await;
                    false
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_goes_on_only_while_it_holds_the_lease() {
        assert_eq!(keep(false, false, false), Keep::GoOn, "no fencing");
        assert_eq!(keep(false, false, true), Keep::GoOn, "no fencing");
        assert_eq!(keep(true, true, false), Keep::GoOn);
        assert_eq!(keep(true, false, true), Keep::Stop);
        assert_eq!(keep(true, false, false), Keep::Acquire);
    }
}
