//! The system clock, behind the domain's `Clock` port.

use std::time::{SystemTime, UNIX_EPOCH};

use duo_workflow_domain::ports::Clock;
use duo_workflow_domain::UnixTime;

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        UnixTime::from_secs(secs as i64).expect("the system clock is before year 9999")
    }
}
