//! The cluster CA and its replacement. A CA is replaced with an overlap:
//! the next CA is created and trusted everywhere (`ca.crt` holds both)
//! well before certificates move to it, so clients have time to pick up
//! the new `ca.crt`; the old one stays trusted until it expires.

use std::time::Duration;

use super::{Issued, Lifetimes, fingerprint, inspect};

/// One CA certificate as recorded in an annotation (no key).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaRecord {
    /// [`fingerprint`] of the certificate.
    pub fingerprint: String,
    /// Unix seconds.
    pub not_after: i64,
}

impl CaRecord {
    pub fn of(cert_pem: &str) -> Option<CaRecord> {
        Some(CaRecord {
            fingerprint: fingerprint(cert_pem)?,
            not_after: inspect(cert_pem).ok()?.not_after,
        })
    }
}

/// The cluster's CAs, from the annotation of `<name>-ca-key`: enough to
/// plan rotations without reading keys.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorities {
    /// Signs every certificate issued now.
    pub signing: CaRecord,
    /// Trusted, signs nothing yet: certificates move to it later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<CaRecord>,
    /// Replaced, still trusted until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<CaRecord>,
}

/// One step of a CA's replacement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CaStep {
    /// Create the next CA and add it to every `ca.crt`.
    PrepareNext,
    /// Sign with the next CA from now on; the current one becomes the
    /// previous (still trusted).
    PromoteNext,
    /// Stop trusting the previous CA: it has expired.
    DropPrevious,
}

impl Authorities {
    /// The CAs a client must trust, signing first.
    pub fn trusted(&self) -> impl Iterator<Item = &CaRecord> {
        std::iter::once(&self.signing)
            .chain(self.next.as_ref())
            .chain(self.previous.as_ref())
    }

    /// Names the set of trusted CAs: certificates written beside an older
    /// set get the new `ca.crt`. One CA alone is named by its own
    /// fingerprint (what certificates recorded before rotation existed).
    pub fn trust_id(&self) -> String {
        let mut prints: Vec<&str> = self.trusted().map(|c| c.fingerprint.as_str()).collect();
        prints.sort_unstable();
        prints.join("+")
    }

    /// What the CAs need at `now` (Unix seconds), one step at a time.
    /// `next_trusted`: every running pod has the next CA in its `ca.crt`,
    /// so certificates it signs are verified everywhere.
    pub fn step(&self, lifetimes: &Lifetimes, now: i64, next_trusted: bool) -> Option<CaStep> {
        let left = |ca: &CaRecord| ca.not_after - now;
        let secs = |d: Duration| d.as_secs() as i64;
        if self.previous.as_ref().is_some_and(|p| left(p) <= 0) {
            return Some(CaStep::DropPrevious);
        }
        match &self.next {
            // Certificates are re-issued `renewBefore` ahead of their
            // expiry, which never passes their CA's: the last moment to
            // move. An expired CA is replaced even if some pod lags.
            Some(_)
                if left(&self.signing) <= secs(lifetimes.renew_before)
                    && (next_trusted || left(&self.signing) <= 0) =>
            {
                Some(CaStep::PromoteNext)
            }
            None if left(&self.signing) <= secs(lifetimes.ca_renew_before) => {
                Some(CaStep::PrepareNext)
            }
            _ => None,
        }
    }

    /// When [`Self::step`] may next have something to do (Unix seconds).
    pub fn next_step_at(&self, lifetimes: &Lifetimes) -> i64 {
        let secs = |d: Duration| d.as_secs() as i64;
        let at = match &self.next {
            Some(_) => self.signing.not_after - secs(lifetimes.renew_before),
            None => self.signing.not_after - secs(lifetimes.ca_renew_before),
        };
        self.previous.as_ref().map_or(at, |p| at.min(p.not_after))
    }
}

/// The CAs with their keys, as `<name>-ca-key` holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaSet {
    pub signing: Issued,
    pub next: Option<Issued>,
    /// Certificate only: nothing is signed with it any more.
    pub previous: Option<String>,
}

impl CaSet {
    pub fn new(signing: Issued) -> Self {
        Self {
            signing,
            next: None,
            previous: None,
        }
    }

    /// Every trusted CA certificate, signing first: the `ca.crt` clients get.
    pub fn bundle(&self) -> String {
        let mut out = String::new();
        for pem in std::iter::once(&self.signing.cert_pem)
            .chain(self.next.as_ref().map(|n| &n.cert_pem))
            .chain(self.previous.as_ref())
        {
            out.push_str(pem.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn authorities(&self) -> Option<Authorities> {
        Some(Authorities {
            signing: CaRecord::of(&self.signing.cert_pem)?,
            next: match &self.next {
                Some(n) => Some(CaRecord::of(&n.cert_pem)?),
                None => None,
            },
            previous: match &self.previous {
                Some(p) => Some(CaRecord::of(p)?),
                None => None,
            },
        })
    }

    /// Applies `step`; `new_ca` makes the next CA when one is needed.
    pub fn apply(
        mut self,
        step: CaStep,
        new_ca: impl FnOnce() -> Result<Issued, super::TlsError>,
    ) -> Result<Self, super::TlsError> {
        match step {
            CaStep::PrepareNext => self.next = Some(new_ca()?),
            CaStep::PromoteNext => {
                if let Some(next) = self.next.take() {
                    let old = std::mem::replace(&mut self.signing, next);
                    self.previous = Some(old.cert_pem);
                }
            }
            CaStep::DropPrevious => self.previous = None,
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{issue_server, new_ca, signed_by};
    use time::OffsetDateTime;

    const T0: i64 = 1_800_000_000;

    fn at(t: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(t).unwrap()
    }

    /// Minutes-long lifetimes, as the e2e scenario uses.
    fn short() -> Lifetimes {
        let m = |n: u64| Duration::from_secs(n * 60);
        Lifetimes {
            leaf: m(3),
            renew_before: m(1),
            ca: m(10),
            ca_renew_before: m(6),
        }
    }

    fn record(fingerprint: &str, not_after: i64) -> CaRecord {
        CaRecord {
            fingerprint: fingerprint.into(),
            not_after,
        }
    }

    #[test]
    fn a_ca_is_replaced_in_three_steps_with_an_overlap() {
        let l = short();
        let end = T0 + 600;
        let mut a = Authorities {
            signing: record("old", end),
            next: None,
            previous: None,
        };
        // Nothing until caRenewBefore (6 min) before the end.
        assert_eq!(a.step(&l, end - 361, true), None);
        assert_eq!(a.next_step_at(&l), end - 360);
        assert_eq!(a.step(&l, end - 360, true), Some(CaStep::PrepareNext));

        a.next = Some(record("new", end + 600));
        // Trusted from now on, used only renewBefore (1 min) before the end.
        assert_eq!(a.step(&l, end - 61, true), None);
        assert_eq!(a.next_step_at(&l), end - 60);
        assert_eq!(a.step(&l, end - 60, true), Some(CaStep::PromoteNext));
        // Not while a pod does not trust it yet…
        assert_eq!(a.step(&l, end - 60, false), None);
        // …unless the old CA has run out anyway.
        assert_eq!(a.step(&l, end, false), Some(CaStep::PromoteNext));

        let a = Authorities {
            signing: record("new", end + 600),
            next: None,
            previous: Some(record("old", end)),
        };
        assert_eq!(a.step(&l, end - 1, true), None);
        assert_eq!(a.next_step_at(&l), end);
        assert_eq!(a.step(&l, end, true), Some(CaStep::DropPrevious));
    }

    #[test]
    fn the_trust_id_names_the_set_not_its_order() {
        let one = Authorities {
            signing: record("aa", 1),
            next: None,
            previous: None,
        };
        assert_eq!(one.trust_id(), "aa");
        let two = Authorities {
            signing: record("bb", 1),
            next: None,
            previous: Some(record("aa", 1)),
        };
        let two_again = Authorities {
            signing: record("aa", 1),
            next: Some(record("bb", 1)),
            previous: None,
        };
        assert_eq!(two.trust_id(), "aa+bb");
        assert_eq!(two.trust_id(), two_again.trust_id());
    }

    #[test]
    fn the_bundle_trusts_both_cas_and_leaves_move_on_promotion() {
        let l = short();
        let old = new_ca("db CA", at(T0), l.ca).unwrap();
        let set = CaSet::new(old.clone());
        assert_eq!(set.bundle().matches("BEGIN CERTIFICATE").count(), 1);

        let set = set
            .apply(CaStep::PrepareNext, || new_ca("db CA", at(T0 + 240), l.ca))
            .unwrap();
        let bundle = set.bundle();
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(bundle.starts_with(old.cert_pem.trim_end()));
        let a = set.authorities().unwrap();
        assert_eq!(a.signing, CaRecord::of(&old.cert_pem).unwrap());
        assert!(a.next.is_some());

        let next = set.next.clone().unwrap();
        let set = set
            .apply(CaStep::PromoteNext, || unreachable!("no CA is made"))
            .unwrap();
        assert_eq!(set.signing, next);
        assert_eq!(set.previous.as_deref(), Some(old.cert_pem.as_str()));
        let leaf = issue_server(&set.signing, &["db-rw".into()], at(T0 + 540), l.leaf).unwrap();
        assert!(signed_by(&leaf.cert_pem, &next.cert_pem));
        assert!(!signed_by(&leaf.cert_pem, &old.cert_pem));

        let set = set
            .apply(CaStep::DropPrevious, || unreachable!("no CA is made"))
            .unwrap();
        assert_eq!(set.bundle().matches("BEGIN CERTIFICATE").count(), 1);
        assert_eq!(
            set.authorities().unwrap().trust_id(),
            next_fingerprint(&next)
        );
    }

    fn next_fingerprint(ca: &Issued) -> String {
        fingerprint(&ca.cert_pem).unwrap()
    }
}
