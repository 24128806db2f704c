//! `GET /v1/cluster` (operators): the service nodes sharing this backend and who owns each lease, so an
//! operator can see which node delivers webhooks, sends mail, runs retention and lifecycle changes and
//! coordinates Kafka groups, and how soon a dead owner's work moves.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use esgf_events_meta::lease::{Leases, Nodes};
use serde_json::json;

use crate::SharedState;
use crate::body::NoQuery;
use crate::error::ApiError;

/// This node's view of the cluster: its lease holder and the node registry.
#[derive(Clone)]
pub struct Cluster {
    pub leases: Arc<Leases>,
    pub nodes: Arc<Nodes>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node_id", &self.leases.node_id()).finish()
    }
}

fn rfc3339(ms: i64) -> String {
    esgf_events_envelope::rfc3339_millis(ms)
}

/// `GET /v1/cluster`.
pub(crate) async fn show(State(state): State<SharedState>, _: NoQuery) -> Result<Response, ApiError> {
    let cluster = state.cluster.as_ref().ok_or(ApiError::OpsUnavailable("the cluster view"))?;
    let now = chrono::Utc::now().timestamp_millis();
    let nodes: Vec<_> = cluster
        .nodes
        .live()
        .await
        .map_err(ApiError::OpsStorage)?
        .into_iter()
        .map(|n| {
            json!({
                "id": n.id,
                "http_url": n.http_url,
                "kafka_host": n.kafka_host,
                "kafka_port": n.kafka_port,
                "last_seen": rfc3339(n.seen_ms),
            })
        })
        .collect();
    let leases: Vec<_> = cluster
        .leases
        .all()
        .await
        .map_err(ApiError::OpsStorage)?
        .into_iter()
        .map(|(name, r)| {
            let live = r.expires_ms > now;
            json!({
                "name": name,
                // An expired lease has no owner: the next node to look takes it.
                "owner": if live { Some(r.owner.clone()) } else { None },
                "last_owner": r.owner,
                "epoch": r.epoch,
                "expires": rfc3339(r.expires_ms),
                "expired": !live,
            })
        })
        .collect();
    let config = cluster.leases.config();
    Ok(Json(json!({
        "node": cluster.leases.node_id(),
        "lease_ttl_ms": u64::try_from(config.ttl.as_millis()).unwrap_or(u64::MAX),
        "lease_renew_ms": u64::try_from(config.renew_every.as_millis()).unwrap_or(u64::MAX),
        "nodes": nodes,
        "leases": leases,
    }))
    .into_response())
}
