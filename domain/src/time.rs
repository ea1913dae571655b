//! Time as JWTs see it: whole seconds since the Unix epoch.

use std::fmt;

/// The latest instant any claim may name (9999-12-31T23:59:59Z). Bounding every time keeps
/// arithmetic with leeways and lifetimes far from overflow.
pub const LATEST: i64 = 253_402_300_799;

/// A point in time, in whole seconds since the Unix epoch, within `0..=LATEST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(i64);

impl UnixTime {
    /// `None` outside `0..=LATEST`: such a time is never a valid claim.
    pub fn from_secs(secs: i64) -> Option<Self> {
        (0..=LATEST).contains(&secs).then_some(Self(secs))
    }

    pub fn as_secs(self) -> i64 {
        self.0
    }

    /// Saturates within the valid range rather than overflowing.
    pub fn plus(self, d: Seconds) -> Self {
        Self(self.0.saturating_add(d.0 as i64).min(LATEST))
    }

    pub fn minus(self, d: Seconds) -> Self {
        Self(self.0.saturating_sub(d.0 as i64).max(0))
    }
}

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A non-negative duration in whole seconds (leeways, lifetimes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seconds(pub u32);

impl Seconds {
    pub const fn new(secs: u32) -> Self {
        Self(secs)
    }
    pub fn as_u64(self) -> u64 {
        self.0 as u64
    }
}
