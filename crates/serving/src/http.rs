//! HTTP/JSON in TF Serving's REST shape.
//!
//! `POST /v1/models/{name}:predict` with `{"instances": [{"I1": 3, "C1": "68fd1e64"}, ...]}`
//! answers `{"predictions": [0.12, ...], "model_version": 7}`;
//! `POST /v1/models/{name}/versions/{v}:predict` asks version `v` (one held in memory);
//! `GET /v1/models/{name}` answers the model's status. An unknown model or version is a 404. A value may be a string or a number (written as training data writes it);
//! null means missing; anything else is a 400 naming the sample and field. Requests are traced
//! like gRPC ones (`ember_proto::trace`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::predictor::SampleIn;
use crate::{Models, ServingError};

/// The REST routes over a node's `models`.
pub fn router(models: Arc<Models>) -> Router {
    Router::new()
        .route("/v1/models/{target}", get(status).post(predict))
        .route("/v1/models/{name}/versions/{target}", axum::routing::post(predict_version))
        .with_state(models)
        // A span per request, child of the caller's `traceparent` (as on the gRPC port).
        .layer(ember_proto::trace::TraceLayer)
}

fn reply(code: StatusCode, body: Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error(e: &ServingError) -> Response {
    reply(e.http_status(), json!({ "error": e.to_string() }))
}

/// The samples of a request body.
pub fn parse_instances(body: &[u8]) -> Result<Vec<SampleIn>, ServingError> {
    let bad = |m: String| ServingError::InvalidArgument(m);
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
    let instances = value
        .get("instances")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("body needs \"instances\": a list of objects".into()))?;
    instances
        .iter()
        .enumerate()
        .map(|(i, inst)| {
            let obj = inst.as_object().ok_or_else(|| bad(format!("instances[{i}] is not an object")))?;
            let mut fields = Vec::with_capacity(obj.len());
            for (name, v) in obj {
                let raw = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Null => continue,
                    other => {
                        return Err(bad(format!("instances[{i}].{name}: expected a string or a number, got {other}")))
                    }
                };
                fields.push((name.clone(), raw));
            }
            Ok(SampleIn { fields, ..Default::default() })
        })
        .collect()
}

async fn predict(State(models): State<Arc<Models>>, Path(target): Path<String>, body: Bytes) -> Response {
    let Some(name) = target.strip_suffix(":predict") else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("unknown method in {target:?}; use NAME:predict") }),
        );
    };
    answer(&models, name, 0, &body).await
}

async fn predict_version(
    State(models): State<Arc<Models>>,
    Path((name, target)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let version = target.strip_suffix(":predict").and_then(|v| v.parse::<u64>().ok());
    let Some(version) = version.filter(|v| *v > 0) else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("{target:?} is not VERSION:predict (a version number > 0)") }),
        );
    };
    answer(&models, &name, version, &body).await
}

async fn answer(models: &Models, name: &str, version: u64, body: &[u8]) -> Response {
    let started = Instant::now();
    let result = match parse_instances(body) {
        Ok(samples) => models.predict(name, version, samples).await,
        Err(e) => Err(e),
    };
    crate::record("http", started, &result);
    match result {
        Ok(p) => reply(StatusCode::OK, json!({ "predictions": p.probabilities, "model_version": p.version })),
        Err(e) => error(&e),
    }
}

async fn status(State(models): State<Arc<Models>>, Path(name): Path<String>) -> Response {
    match models.pick(&name).and_then(|p| p.status()) {
        Ok(s) => reply(
            StatusCode::OK,
            json!({
                "name": s.name,
                "version": s.version,
                "rows_trained": s.rows_trained,
                "kept_versions": s.kept_versions,
                "fields": s.fields.iter().map(|(name, _, kind)| json!({"name": name, "kind": kind})).collect::<Vec<_>>(),
            }),
        ),
        Err(e) => error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_take_strings_numbers_and_nulls_and_name_bad_values() {
        let s = parse_instances(br#"{"instances": [{"I1": 3, "C1": "ab", "C2": null}, {"I2": 1.5}]}"#).unwrap();
        assert_eq!(s[0].fields, vec![("C1".to_string(), "ab".to_string()), ("I1".to_string(), "3".to_string())]);
        assert_eq!(s[1].fields, vec![("I2".to_string(), "1.5".to_string())]);
        let e = parse_instances(br#"{"instances": [{}, {"C1": [1]}]}"#).unwrap_err().to_string();
        assert!(e.contains("instances[1].C1"), "{e}");
        assert!(parse_instances(b"{}").is_err());
        assert!(parse_instances(b"nope").is_err());
    }
}
