//! Fleet events: logged at once, written to the store in batches by one writer, pruned to the
//! configured retention. Emitting never blocks and never fails the caller.

use crate::telemetry::metrics::{KindLabels, Metrics};
use flotilla_core::Timestamp;
use flotilla_core::event::{EventKind, NewEvent};
use flotilla_core::id::{AgentId, TenantId};
use flotilla_store::DynStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often pending events are written.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Prune after this many writes.
const PRUNE_EVERY: u32 = 200;

/// Where fleet events go. Cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<NewEvent>,
    metrics: Option<Arc<Metrics>>,
}

impl EventSink {
    /// Records an event: logs it and queues it for the store. `tenant` is who may read it
    /// (`flotilla_core::event::visible_to`): `None` for a fleet fact that names no tenant.
    pub fn emit(
        &self,
        at: Timestamp,
        kind: EventKind,
        agent_type: &str,
        agent_id: Option<AgentId>,
        tenant: Option<TenantId>,
        message: String,
    ) {
        match agent_id {
            Some(id) => {
                tracing::info!(event = %kind, agent_type, agent_id = %id, "{message}");
            }
            None => tracing::info!(event = %kind, agent_type, "{message}"),
        }
        if let Some(m) = &self.metrics {
            m.fleet_events
                .get_or_create(&KindLabels {
                    kind: kind.as_str().to_owned(),
                })
                .inc();
        }
        // Fails only when the writer stopped at shutdown; the log line above remains.
        let _ = self.tx.send(NewEvent {
            at,
            kind,
            agent_type: agent_type.to_owned(),
            agent_id,
            message,
            tenant,
        });
    }

    /// Queues an event already logged for the next batch.
    pub fn queue(&self, event: NewEvent) {
        let _ = self.tx.send(event);
    }

    /// A sink whose events are only logged and collected by the returned receiver (tests).
    pub fn detached() -> (Self, mpsc::UnboundedReceiver<NewEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx, metrics: None }, rx)
    }
}

/// The sink and its writer loop, which runs until `stop` and then writes what is left.
pub fn channel(
    store: DynStore,
    metrics: Arc<Metrics>,
    retention: u64,
    leadership: Arc<crate::leadership::Leadership>,
    stop: CancellationToken,
) -> (EventSink, impl Future<Output = ()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<NewEvent>();
    let writer = async move {
        let mut writes = 0u32;
        let mut batch = Vec::new();
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                () = tokio::time::sleep(FLUSH_EVERY) => false,
            };
            while let Ok(event) = rx.try_recv() {
                batch.push(event);
            }
            if !batch.is_empty() {
                match store.insert_events(&batch).await {
                    Ok(()) => batch.clear(),
                    Err(e) if batch.len() > 10_000 => {
                        tracing::warn!(error = %e, dropped = batch.len(), "Could not write fleet events; dropping them (they were logged)");
                        batch.clear();
                    }
                    Err(e) => tracing::warn!(error = %e, "Could not write fleet events; retrying"),
                }
                writes += 1;
                // Pruning is the leader's job (one control plane on SQLite always leads).
                if writes.is_multiple_of(PRUNE_EVERY)
                    && leadership.is_leader()
                    && let Err(e) = store.prune_events(retention).await
                {
                    tracing::warn!(error = %e, "Could not prune fleet events");
                }
            }
            if stopping {
                return;
            }
        }
    };
    (
        EventSink {
            tx,
            metrics: Some(metrics),
        },
        writer,
    )
}
