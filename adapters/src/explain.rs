//! What `token explain` shows of one token: each step the authenticator takes, in order, with
//! its outcome. The steps are noted by the code that judges every call
//! ([`JwtAuthenticator::explain`](crate::authenticator::JwtAuthenticator::explain) runs the
//! server's `judge` with a [`Trail`]; the server runs it with `()`, which notes nothing and
//! builds no text). Nothing noted holds the token or a key: claim names and values, kids,
//! algorithms, source names.

use duo_workflow_domain::mapping::Audiences;
use duo_workflow_domain::policy::{ClaimCheck, ClaimChecks};
use duo_workflow_domain::ports::VerificationError;
use duo_workflow_domain::{AuthError, Claims, UnixTime, VerifiedClaims};

use crate::authenticator::DynKeySource;

/// One step of judging a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What was checked: `token`, `issuer`, `algorithm`, `signature`, `claims`, or one of the
    /// claim checks (`audience (aud)`, ...).
    pub check: &'static str,
    pub passed: bool,
    /// What was found, or why it refuses.
    pub detail: String,
}

impl Step {
    pub fn passed(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            check,
            passed: true,
            detail: detail.into(),
        }
    }

    pub fn refused(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            check,
            passed: false,
            detail: detail.into(),
        }
    }

    /// A refusal as the server's log says it (`AuthError`'s text).
    pub(crate) fn refused_for(check: &'static str, error: &VerificationError) -> Self {
        Self::refused(check, AuthError::from(error.clone()).to_string())
    }

    /// [`Step::refused_for`], to be noted.
    pub(crate) fn refusal<'e>(
        check: &'static str,
        error: &'e VerificationError,
    ) -> impl FnOnce() -> Step + 'e {
        move || Self::refused_for(check, error)
    }
}

/// Where the judging code notes its steps. `step` is only called by a recorder that keeps it.
pub trait Notes: Send {
    fn note(&mut self, step: impl FnOnce() -> Step);
    fn note_all(&mut self, steps: impl FnOnce() -> Vec<Step>);
    /// The key source whose keys verified the token.
    fn judged_by(&mut self, source: &DynKeySource);
}

/// The server's notes: none.
impl Notes for () {
    fn note(&mut self, _: impl FnOnce() -> Step) {}
    fn note_all(&mut self, _: impl FnOnce() -> Vec<Step>) {}
    fn judged_by(&mut self, _: &DynKeySource) {}
}

/// `token explain`'s notes: every step, and the source that judged.
#[derive(Default)]
pub struct Trail {
    pub steps: Vec<Step>,
    pub source: Option<DynKeySource>,
}

impl Notes for Trail {
    fn note(&mut self, step: impl FnOnce() -> Step) {
        self.steps.push(step());
    }

    fn note_all(&mut self, steps: impl FnOnce() -> Vec<Step>) {
        self.steps.extend(steps());
    }

    fn judged_by(&mut self, source: &DynKeySource) {
        self.source = Some(source.clone());
    }
}

/// A token, explained: the steps in order, the source that judged it, and the verdict.
pub struct Explanation {
    pub steps: Vec<Step>,
    pub source: Option<DynKeySource>,
    pub result: Result<VerifiedClaims, VerificationError>,
}

/// Each claim check of `claims` on its own, with what it looked at.
pub(crate) fn claim_checks(
    checks: &ClaimChecks,
    audiences: &Audiences,
    claims: &Claims,
    now: UnixTime,
) -> Vec<Step> {
    ClaimCheck::ALL
        .into_iter()
        .map(|check| {
            let detail = match check {
                ClaimCheck::Audience => {
                    let accepted = match audiences {
                        Audiences::ServiceName => {
                            format!("{:?} (the service name)", checks.audience.as_str())
                        }
                        Audiences::Listed(list) => format!("{list:?} (configured)"),
                    };
                    format!("aud {:?}; this source accepts {accepted}", claims.audience)
                }
                ClaimCheck::Expiry => time("exp", claims.expires_at, now),
                ClaimCheck::NotBefore => time("nbf", claims.not_before, now),
                ClaimCheck::IssuedAt => time("iat", claims.issued_at, now),
                ClaimCheck::Lifetime => format!(
                    "at most {} s from iat (or nbf) to exp; leeway {} s",
                    checks.max_lifetime.as_u64(),
                    checks.leeway.as_u64()
                ),
            };
            match checks.check(check, audiences, claims, now) {
                Ok(()) => Step::passed(check.name(), detail),
                Err(r) => Step::refused(check.name(), format!("{r}: {detail}")),
            }
        })
        .collect()
}

/// A time claim relative to now.
fn time(name: &str, at: Option<UnixTime>, now: UnixTime) -> String {
    match at {
        None => format!("no {name}"),
        Some(t) => {
            let d = t.as_secs() - now.as_secs();
            match d {
                0 => format!("{name} {t}, now"),
                d if d > 0 => format!("{name} {t}, in {d} s"),
                d => format!("{name} {t}, {} s ago", -d),
            }
        }
    }
}
