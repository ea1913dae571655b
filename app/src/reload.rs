//! Reading key and certificate files again while serving: on SIGHUP, and every poll interval
//! (a Kubernetes Secret mounted as files changes under a running pod; nobody sends it a
//! signal). Each file group swaps its new contents in atomically or keeps the previous ones;
//! what happened is logged, counted (`duo_workflow_auth_reloads`), and shown in readiness as the
//! `reload` entry, which is not serving while some files hold contents that do not load.
//!
//! Keys given through environment variables or inline in the configuration file cannot change
//! in a running process: only files are read again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duo_workflow_adapters::metrics::ReloadMetrics;
pub use duo_workflow_adapters::reload::Trigger;
use duo_workflow_adapters::reload::{Reloadable, Reloaded};

pub struct Reloader {
    files: Vec<Arc<dyn Reloadable>>,
    /// File groups whose last contents read did not load, and why.
    failing: Mutex<BTreeMap<String, String>>,
    /// One reload at a time: a SIGHUP during a poll waits for it.
    running: Mutex<()>,
    metrics: ReloadMetrics,
}

impl Reloader {
    pub fn new(files: Vec<Arc<dyn Reloadable>>, metrics: ReloadMetrics) -> Self {
        for f in &files {
            metrics.watching(f.name());
        }
        Self {
            files,
            failing: Mutex::new(BTreeMap::new()),
            running: Mutex::new(()),
            metrics,
        }
    }

    /// The names of the file groups read again, e.g. `tls`, `local-authority`.
    pub fn names(&self) -> Vec<&str> {
        self.files.iter().map(|f| f.name()).collect()
    }

    /// Whether the last contents read of every file group loaded.
    pub fn healthy(&self) -> bool {
        self.failing.lock().expect("not poisoned").is_empty()
    }

    /// Why file groups are failing, by name.
    pub fn failures(&self) -> BTreeMap<String, String> {
        self.failing.lock().expect("not poisoned").clone()
    }

    /// Reads every file group again, now (blocking: file reads and key parsing); logs and
    /// records what changed. Returns each group's outcome.
    pub fn reload_now(&self, trigger: Trigger) -> Vec<(String, Reloaded)> {
        let _one_at_a_time = self.running.lock().expect("not poisoned");
        let outcomes: Vec<(String, Reloaded)> = self
            .files
            .iter()
            .map(|f| (f.name().to_owned(), f.reload(trigger)))
            .collect();
        for (name, outcome) in &outcomes {
            match outcome {
                Reloaded::Unchanged => {}
                Reloaded::Changed(what) => {
                    self.failing.lock().expect("not poisoned").remove(name);
                    self.metrics.reloaded(name, false);
                    tracing::info!(files = %name, ?trigger, "reloaded: {what}");
                }
                Reloaded::Held(why) => {
                    self.metrics.held(name);
                    tracing::warn!(files = %name, ?trigger, "new contents held back: {why}");
                }
                Reloaded::Failed(why) => {
                    self.failing
                        .lock()
                        .expect("not poisoned")
                        .insert(name.clone(), why.clone());
                    self.metrics.reloaded(name, true);
                    tracing::error!(
                        files = %name,
                        ?trigger,
                        "new contents do not load, the previous ones stay in use: {why}"
                    );
                }
            }
        }
        if trigger == Trigger::Signal {
            let changed = outcomes
                .iter()
                .filter(|(_, o)| *o != Reloaded::Unchanged)
                .count();
            if self.files.is_empty() {
                tracing::info!(
                    "SIGHUP: nothing to reload; keys and certificates given through environment \
                     variables or inline cannot change in a running process, only files can"
                );
            } else if changed == 0 {
                tracing::info!(files = ?self.names(), "SIGHUP: no file changed");
            }
        }
        outcomes
    }

    /// [`reload_now`](Self::reload_now) off the async workers.
    pub async fn reload(self: &Arc<Self>, trigger: Trigger) -> Vec<(String, Reloaded)> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.reload_now(trigger))
            .await
            .expect("reloading does not panic")
    }

    /// Reloads on every SIGHUP and, with `poll`, at that interval; runs until aborted.
    pub async fn run(self: Arc<Self>, poll: Option<Duration>) {
        #[cfg(unix)]
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("cannot listen for SIGHUP; files reload only on the poll: {e}");
                    None
                }
            };
        let mut tick = poll.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hangups.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            let polled = async {
                match tick.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let trigger = tokio::select! {
                got = hangup => match got {
                    Some(()) => Trigger::Signal,
                    None => return,
                },
                () = polled => Trigger::Poll,
            };
            if trigger == Trigger::Poll && self.files.is_empty() {
                continue;
            }
            self.reload(trigger).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file group whose next outcomes are scripted.
    struct Scripted {
        name: &'static str,
        next: Mutex<Vec<Reloaded>>,
    }

    impl Reloadable for Scripted {
        fn name(&self) -> &str {
            self.name
        }
        fn reload(&self, _: Trigger) -> Reloaded {
            self.next
                .lock()
                .unwrap()
                .pop()
                .unwrap_or(Reloaded::Unchanged)
        }
    }

    #[test]
    fn a_failing_group_is_unhealthy_until_new_contents_load() {
        let tls = Arc::new(Scripted {
            name: "tls",
            // Popped from the end.
            next: Mutex::new(vec![
                Reloaded::Changed("fixed".into()),
                Reloaded::Unchanged,
                Reloaded::Failed("not a key".into()),
            ]),
        });
        let metrics = duo_workflow_adapters::metrics::Metrics::new();
        let reloader = Reloader::new(vec![tls], metrics.reloads());
        assert!(reloader.healthy());
        reloader.reload_now(Trigger::Poll);
        assert!(!reloader.healthy());
        assert_eq!(reloader.failures()["tls"], "not a key");
        let page = metrics.render();
        assert!(
            page.contains("duo_workflow_auth_reload_failing{files=\"tls\"} 1"),
            "{page}"
        );
        reloader.reload_now(Trigger::Poll);
        assert!(
            !reloader.healthy(),
            "unchanged files are still the failing ones"
        );
        reloader.reload_now(Trigger::Signal);
        assert!(reloader.healthy());
        let page = metrics.render();
        assert!(
            page.contains("duo_workflow_auth_reload_failing{files=\"tls\"} 0"),
            "{page}"
        );
        assert!(
            page.contains("duo_workflow_auth_reloads_total{files=\"tls\",result=\"failed\"} 1"),
            "{page}"
        );
        assert!(
            page.contains("duo_workflow_auth_reloads_total{files=\"tls\",result=\"changed\"} 1"),
            "{page}"
        );
    }
}
