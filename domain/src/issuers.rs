//! Which key source serves which issuer.
//!
//! Most key sources serve an issuer fixed by configuration. The built-in GitLab and CustomersDot
//! sources instead learn theirs from the provider's OIDC discovery document (a GitLab reached
//! through an internal URL names its external issuer there). A learned issuer must not be one that
//! another source already serves, or the service's own name: [`IssuerClaims`] is the one place
//! that decides.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use crate::identity::{Issuer, ServiceName};

/// The issuer a key source serves, as routing, readiness and operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceIssuer<'a> {
    /// Set by configuration: the source serves this issuer from the start.
    Fixed(&'a Issuer),
    /// Learned from the provider's OIDC discovery document: `None` until a document has been
    /// accepted. Once learned it never changes while the process runs.
    Discovered(Option<&'a Issuer>),
}

impl<'a> SourceIssuer<'a> {
    /// The issuer, when known.
    pub fn known(self) -> Option<&'a Issuer> {
        match self {
            SourceIssuer::Fixed(issuer) => Some(issuer),
            SourceIssuer::Discovered(learned) => learned,
        }
    }

    /// Whether the issuer comes from discovery rather than configuration.
    pub fn is_discovered(self) -> bool {
        matches!(self, SourceIssuer::Discovered(_))
    }
}

/// The issuer, or that discovery has not named it yet.
impl fmt::Display for SourceIssuer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.known() {
            Some(issuer) => f.write_str(issuer.as_str()),
            None => f.write_str("(not discovered yet)"),
        }
    }
}

/// Why a discovering source may not serve the issuer its discovery document names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimRefused {
    /// The issuer is the service's own name, whose tokens only the local authority signs.
    ServiceName,
    /// A key source configured with that issuer serves it.
    Configured { source: String },
    /// Another discovering source learned that issuer first.
    Discovered { source: String },
}

impl fmt::Display for ClaimRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimRefused::ServiceName => f.write_str(
                "it is this service's own name, the issuer of the local authority's user tokens",
            ),
            ClaimRefused::Configured { source } => {
                write!(f, "key source {source:?} is configured with that issuer")
            }
            ClaimRefused::Discovered { source } => {
                write!(
                    f,
                    "key source {source:?} already serves it (learned by discovery)"
                )
            }
        }
    }
}

/// Every issuer some key source serves, and who serves it. Built once with the configured
/// issuers; discovering sources then [`claim`](IssuerClaims::claim) theirs, atomically, so that
/// two sources discovering at the same moment never both win one issuer.
///
/// Issuers are compared without a trailing slash (the one difference a discovery document may
/// show), so `https://gitlab.example.com/` is taken when `https://gitlab.example.com` is.
#[derive(Debug)]
pub struct IssuerClaims {
    service: String,
    /// Issuer (without trailing slash) → the first source configured with it.
    configured: HashMap<String, String>,
    /// Issuer (without trailing slash) → the discovering source that claimed it.
    discovered: Mutex<HashMap<String, String>>,
}

fn key(issuer: &str) -> &str {
    issuer.trim_end_matches('/')
}

impl IssuerClaims {
    /// `configured`: every source whose issuer is fixed by configuration, as (name, issuer).
    pub fn new<'a>(
        service: &ServiceName,
        configured: impl IntoIterator<Item = (&'a str, &'a Issuer)>,
    ) -> Self {
        let mut map = HashMap::new();
        for (source, issuer) in configured {
            map.entry(key(issuer.as_str()).to_owned())
                .or_insert_with(|| source.to_owned());
        }
        Self {
            service: key(service.as_str()).to_owned(),
            configured: map,
            discovered: Mutex::new(HashMap::new()),
        }
    }

    /// Lets `source` serve `issuer`, unless the issuer is the service's name, a configured
    /// source's, or already claimed by another discovering source. Claiming again what the same
    /// source holds succeeds; a claim is never released.
    pub fn claim(&self, source: &str, issuer: &Issuer) -> Result<(), ClaimRefused> {
        let wanted = key(issuer.as_str());
        if wanted == self.service {
            return Err(ClaimRefused::ServiceName);
        }
        if let Some(owner) = self.configured.get(wanted) {
            return Err(ClaimRefused::Configured {
                source: owner.clone(),
            });
        }
        // Check and insert under one lock: the claim is atomic.
        let mut discovered = self
            .discovered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match discovered.get(wanted) {
            Some(owner) if owner != source => Err(ClaimRefused::Discovered {
                source: owner.clone(),
            }),
            Some(_) => Ok(()),
            None => {
                discovered.insert(wanted.to_owned(), source.to_owned());
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn claims() -> IssuerClaims {
        let peer = Issuer::new("https://peer.example");
        let authority = Issuer::new(ServiceName::DEFAULT);
        IssuerClaims::new(
            &ServiceName::new(ServiceName::DEFAULT),
            [("local-authority", &authority), ("peer", &peer)],
        )
    }

    #[test]
    fn the_service_name_and_configured_issuers_cannot_be_claimed() {
        let c = claims();
        assert_eq!(
            c.claim("gitlab", &Issuer::new(ServiceName::DEFAULT)),
            Err(ClaimRefused::ServiceName)
        );
        for issuer in ["https://peer.example", "https://peer.example/"] {
            assert_eq!(
                c.claim("gitlab", &Issuer::new(issuer)),
                Err(ClaimRefused::Configured {
                    source: "peer".into()
                }),
                "{issuer}"
            );
        }
        assert!(c
            .claim("gitlab", &Issuer::new("https://gitlab.example.com"))
            .is_ok());
    }

    #[test]
    fn a_discovered_issuer_belongs_to_its_first_claimant() {
        let c = claims();
        let issuer = Issuer::new("https://gitlab.example.com");
        assert!(c.claim("gitlab", &issuer).is_ok());
        assert!(
            c.claim("gitlab", &issuer).is_ok(),
            "the holder may claim again"
        );
        let refused = c.claim("customers-dot", &Issuer::new("https://gitlab.example.com/"));
        assert_eq!(
            refused,
            Err(ClaimRefused::Discovered {
                source: "gitlab".into()
            })
        );
        assert!(refused.unwrap_err().to_string().contains("\"gitlab\""));
    }

    #[test]
    fn concurrent_claims_of_one_issuer_have_one_winner() {
        for _ in 0..50 {
            let c = Arc::new(claims());
            let threads: Vec<_> = (0..8)
                .map(|i| {
                    let c = c.clone();
                    std::thread::spawn(move || {
                        c.claim(&format!("source-{i}"), &Issuer::new("https://x.example"))
                            .is_ok()
                    })
                })
                .collect();
            let winners = threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .filter(|won| *won)
                .count();
            assert_eq!(winners, 1);
        }
    }

    #[test]
    fn an_unknown_issuer_reads_as_not_discovered_yet() {
        let issuer = Issuer::new("https://a.example");
        assert_eq!(
            SourceIssuer::Fixed(&issuer).to_string(),
            "https://a.example"
        );
        assert_eq!(
            SourceIssuer::Discovered(Some(&issuer)).known(),
            Some(&issuer)
        );
        assert_eq!(
            SourceIssuer::Discovered(None).to_string(),
            "(not discovered yet)"
        );
        assert!(SourceIssuer::Discovered(None).is_discovered());
        assert!(!SourceIssuer::Fixed(&issuer).is_discovered());
    }
}
