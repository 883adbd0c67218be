//! Whether this control plane leads the deployment: a handle the leader loop
//! (`leader::run`) writes and the singleton loops, the ledger and the event writer read.
//! It imports no service.

use std::future::Future;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The lease's name in the store.
pub const LEASE: &str = "control-plane";

/// Every control plane also holds a lease of its own, `replica:<owner>`, renewed with the
/// leader lease: the live ones tell how many control planes share the instances' capacity.
pub const PRESENCE: &str = "replica:";

/// This control plane's view of the leadership.
pub struct Leadership {
    /// `Some(generation)` while this control plane leads.
    pub(crate) leading: watch::Sender<Option<i64>>,
    /// Who leads, as last seen (owner name), for `/v1/system`.
    leader: std::sync::Mutex<Option<String>>,
}

impl Default for Leadership {
    fn default() -> Self {
        Self {
            leading: watch::Sender::new(None),
            leader: std::sync::Mutex::new(None),
        }
    }
}

impl Leadership {
    /// True while this control plane leads.
    pub fn is_leader(&self) -> bool {
        self.leading.borrow().is_some()
    }

    /// The generation of this control plane's term, while it leads.
    pub fn generation(&self) -> Option<i64> {
        *self.leading.borrow()
    }

    /// Follows this control plane's leadership: `Some(generation)` while it leads.
    pub fn watch(&self) -> watch::Receiver<Option<i64>> {
        self.leading.subscribe()
    }

    /// The leader as last seen (its owner name), if any.
    pub fn leader(&self) -> Option<String> {
        self.leader.lock().ok().and_then(|l| l.clone())
    }

    /// Records who holds the lease, as just seen.
    pub(crate) fn seen(&self, holder: &str) {
        if let Ok(mut leader) = self.leader.lock()
            && leader.as_deref() != Some(holder)
        {
            *leader = Some(holder.to_owned());
        }
    }
}

/// Runs `job` while this control plane leads: started when it becomes the leader, cancelled
/// (and awaited) when it stops being it, again on the next term; until `shutdown`.
pub async fn singleton<F, Fut>(
    leadership: std::sync::Arc<Leadership>,
    shutdown: CancellationToken,
    job: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut leading = leadership.watch();
    loop {
        // Wait to lead.
        tokio::select! {
            () = shutdown.cancelled() => return,
            led = leading.wait_for(Option::is_some) => if led.is_err() { return },
        }
        let term = shutdown.child_token();
        let running = tokio::spawn(job(term.clone()));
        tokio::select! {
            () = shutdown.cancelled() => {}
            _ = leading.wait_for(Option::is_none) => {}
        }
        term.cancel();
        if let Err(e) = running.await {
            tracing::error!(error = %e, "A singleton loop failed");
        }
    }
}
