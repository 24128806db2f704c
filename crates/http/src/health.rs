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
///
/// During a maintenance window the answer stays 200, naming the window (`"maintenance"`): the service is still
/// answering, and clients should get its 503 `maintenance` problems rather than a load balancer's error page.
pub(crate) async fn readyz(State(state): State<SharedState>) -> Result<Json<Value>, ApiError> {
    if state.shutdown.has_begun() {
        return Err(ApiError::ShuttingDown);
    }
    match crate::ops::active_window(&state) {
        Some(window) => Ok(Json(json!({ "status": "ready", "maintenance": window }))),
        None => Ok(Json(json!({ "status": "ready" }))),
    }
}
