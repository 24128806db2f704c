//! Liveness and readiness probes for orchestrators and load balancers.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::SharedState;
use crate::error::ApiError;

/// The process is up and serving HTTP.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Whether to send traffic here: not once shutdown has begun, so a load balancer drains us first.
pub(crate) async fn readyz(State(state): State<SharedState>) -> Result<Json<Value>, ApiError> {
    if state.shutdown.has_begun() {
        return Err(ApiError::ShuttingDown);
    }
    Ok(Json(json!({ "status": "ready" })))
}
