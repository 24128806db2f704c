//! Keeping this node's in-memory caches (access control, the topic catalogue, maintenance windows) in step
//! with changes other service nodes make to a shared state store (the NATS backend): a revocation, a new
//! topic's settings or a forced maintenance window made through one node takes effect on every node within
//! about a second.
//!
//! One task reads the store's change notifications ([`MetaStore::watch`]) and re-reads the changed key into
//! whichever cache holds it. When changes may have been missed (the watch restarted, this task fell behind)
//! or a re-read failed, it reloads every cache, retrying until that succeeds: a cache is never left stale
//! silently. The embedded backend has nothing to follow (one process owns its state, and its own writes
//! update the caches), so there the task is not started.

use std::sync::Arc;
use std::time::Duration;

use esgf_events_auth::Auth;
use esgf_events_catalogue::Catalogue;
use esgf_events_meta::{Change, MetaStore};
use esgf_events_ops::Maintenance;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tracing::{debug, warn};

/// Pause before retrying a failed reload.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The caches that follow the shared state.
pub(super) struct Caches {
    pub auth: Arc<Auth>,
    pub catalogue: Arc<Catalogue>,
    pub maintenance: Option<Arc<Maintenance>>,
}

impl Caches {
    fn collections(&self) -> Vec<&'static str> {
        let mut all = Auth::CACHED_COLLECTIONS.to_vec();
        all.extend(Catalogue::CACHED_COLLECTIONS);
        if self.maintenance.is_some() {
            all.extend(Maintenance::CACHED_COLLECTIONS);
        }
        all
    }

    /// Re-reads one changed key into the cache holding it (each ignores collections it does not hold).
    async fn refresh(&self, collection: &str, key: &str) -> Result<(), String> {
        self.auth.refresh(collection, key).await.map_err(|e| e.to_string())?;
        self.catalogue.refresh(collection, key).await.map_err(|e| e.to_string())?;
        if let Some(maintenance) = &self.maintenance {
            maintenance.refresh(collection, key).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn reload(&self) -> Result<(), String> {
        self.auth.reload().await.map_err(|e| format!("access control: {e}"))?;
        self.catalogue.reload().await.map_err(|e| format!("topic catalogue: {e}"))?;
        if let Some(maintenance) = &self.maintenance {
            maintenance.reload().await.map_err(|e| format!("maintenance windows: {e}"))?;
        }
        Ok(())
    }
}

/// Starts following `meta`'s changes into `caches` until `stop` turns true; `None` when the store has
/// nothing to follow.
pub(super) fn start(
    meta: &dyn MetaStore,
    caches: Caches,
    stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let changes = meta.watch(&caches.collections())?;
    debug!("following state changes made by other service nodes");
    Some(tokio::spawn(run(changes, caches, stop)))
}

async fn run(mut changes: broadcast::Receiver<Change>, caches: Caches, mut stop: watch::Receiver<bool>) {
    // The caches were loaded before the watch began: whatever changed in between is caught by the reload
    // the watch's first message (`Change::All`, once it is established) asks for.
    let mut reload_due = false;
    loop {
        if reload_due {
            match caches.reload().await {
                Ok(()) => {
                    reload_due = false;
                    debug!("caches reloaded from the shared state store");
                }
                Err(error) => {
                    warn!(%error, "cannot reload caches from the shared state store; retrying");
                    tokio::select! {
                        _ = stop.wait_for(|stop| *stop) => return,
                        () = tokio::time::sleep(RETRY_PAUSE) => continue,
                    }
                }
            }
        }
        let change = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            change = changes.recv() => change,
        };
        match change {
            Ok(Change::Key { collection, key }) => {
                if let Err(error) = caches.refresh(&collection, &key).await {
                    warn!(%collection, %error, "cannot re-read a changed entry; reloading everything");
                    reload_due = true;
                }
            }
            Ok(Change::All) => reload_due = true,
            Err(RecvError::Lagged(missed)) => {
                debug!(missed, "fell behind the state changes; reloading everything");
                reload_due = true;
            }
            Err(RecvError::Closed) => {
                warn!("the state change watch ended; caches no longer follow other nodes");
                return;
            }
        }
    }
}
