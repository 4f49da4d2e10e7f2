//! The OpenAPI 3 document of the API, generated from the request, response and record types
//! (schemars), served at `/openapi.json` and kept in the repository as `docs/openapi.json`; a test
//! fails when the two differ (`NODEMEDIC_BLESS=1 cargo test -p nodemedic-api openapi` rewrites it).

use crate::actions::NodesSummary;
use crate::request::{ActionRequest, ActionType};
use crate::store::ActionRecord;
use crate::{ActionResponse, DEFAULT_BODY_LIMIT};
use serde_json::{Value, json};

/// `ActionRequest` as one schema per action type (`oneOf`), each requiring the fields its type
/// needs, so the document says exactly what the API accepts (a client, or schemathesis, can tell a
/// valid request from an invalid one without reading the prose).
fn per_type(schemas: &mut serde_json::Map<String, Value>) {
    let Some(base) = schemas.get("ActionRequest").cloned() else { return };
    let variants: Vec<Value> = ActionType::ALL
        .iter()
        .map(|t| {
            let mut v = base.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("description");
                o.insert("title".into(), json!(t.as_str()));
            }
            v["properties"]["type"] = json!({"type": "string", "enum": [t.as_str()]});
            let mut required = v["required"].as_array().cloned().unwrap_or_default();
            for field in t.required_fields() {
                required.push(json!(field));
                if let Some(p) = v["properties"].get_mut(*field).and_then(Value::as_object_mut) {
                    p.remove("nullable");
                }
            }
            v["required"] = Value::Array(required);
            v
        })
        .collect();
    schemas.insert("ActionRequest".into(), json!({"description": base["description"], "oneOf": variants}));
}

fn error(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ActionResponse"}}}})
}

/// The document.
pub fn document() -> Value {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    generator.subschema_for::<ActionRequest>();
    generator.subschema_for::<ActionResponse>();
    generator.subschema_for::<ActionRecord>();
    generator.subschema_for::<NodesSummary>();
    let mut schemas = generator.take_definitions(true);
    per_type(&mut schemas);
    // Every operation but this document's may answer these.
    let auth_errors = |mut responses: serde_json::Map<String, Value>| {
        responses.insert("401".into(), error("No bearer token, or the API server did not accept it (TokenReview)."));
        responses.insert("403".into(), error("The caller lacks the RBAC permission (SubjectAccessReview)."));
        responses.entry("503").or_insert_with(|| error(API_SERVER_AWAY));
        responses.insert("504".into(), error(API_SERVER_SLOW));
        Value::Object(responses)
    };
    let text = |description: &str| json!({"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}});
    let controller = |summary: &str, ok: Value, mut more: serde_json::Map<String, Value>| {
        more.insert("200".into(), ok);
        json!({"get": {"summary": summary, "responses": auth_errors(more)}})
    };
    let post_responses = {
        let mut r = serde_json::Map::new();
        r.insert("200".into(), json!({"description": "Done (or, for a dry run, checked and told). The body is `{\"id\"}`.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ActionResponse"}}}}));
        r.insert(
            "400".into(),
            error(
                "Malformed JSON, a key given twice, an unknown field or type, a missing field, or a value that breaks the field's rule \
                 (the patterns and lengths above: label values, DNS-1123 names, no control characters); `field` names it. \
                 Nothing reached the API server.",
            ),
        );
        r.insert("415".into(), error("The body is not declared as JSON (`Content-Type: application/json`)."));
        r.insert("404".into(), error("No such node pool, node or JobSet, or the JobSet has no leader pod; `field` names it."));
        r.insert(
            "409".into(),
            error(
                "The id was used before, a node is being remediated, or a safety gate refuses (`gates`); `force: true` overrides a gate.",
            ),
        );
        r.insert("413".into(), error(&format!("The body is larger than the limit ({DEFAULT_BODY_LIMIT} bytes by default).")));
        r.insert("422".into(), error("The expected-node-counts preflight failed."));
        r.insert("500".into(), error("Carrying the action out failed; `GET /actions/{id}` says how far it got."));
        r.insert(
            "503".into(),
            error(&format!(
                "This replica is not the leader (`leader` names the one that is), or {API_SERVER_AWAY_LOWER} Retry after `Retry-After` seconds."
            )),
        );
        r
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "nodemedic actions API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Seed 002's node-pool actions (cordon, restart a JobSet, repair an instance), authenticated with Kubernetes bearer tokens (TokenReview), authorised by RBAC (SubjectAccessReview: `create` on `actions.nodemedic.io` for POST, `get` on `actions` and `list` on `nodes` in group `nodemedic.io` for reads) and held to the safety gates of the NodeHealthPolicy that selects the nodes."
        },
        "security": [{"bearer": []}],
        "paths": {
            "/actions": {
                "post": {
                    "operationId": "createAction",
                    "summary": "Carry out an action on a node pool or a node",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ActionRequest"}}}},
                    "responses": auth_errors(post_responses),
                }
            },
            "/actions/{id}": {
                "get": {
                    "operationId": "getAction",
                    "summary": "An action's state and result",
                    "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "responses": auth_errors({
                        let mut r = serde_json::Map::new();
                        r.insert("200".into(), json!({"description": "The action record.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ActionRecord"}}}}));
                        r.insert("404".into(), error("No action with this id."));
                        r
                    }),
                }
            },
            "/nodes": {
                "get": {
                    "operationId": "listNodes",
                    "summary": "Every node's health as the cluster and nodemedic see it",
                    "responses": auth_errors({
                        let mut r = serde_json::Map::new();
                        r.insert("200".into(), json!({"description": "The summary.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NodesSummary"}}}}));
                        r
                    }),
                }
            },
            "/metrics": controller(
                "The controller's Prometheus metrics (RBAC: `get` on the non-resource URL `/metrics`)",
                json!({"description": "OpenMetrics text.", "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}),
                serde_json::Map::new(),
            ),
            "/healthz": controller("The controller process is alive (RBAC: `get` on `/healthz`)", text("`ok`."), serde_json::Map::new()),
            "/readyz": controller(
                "The controller's watches are synced and the API server answers (RBAC: `get` on `/readyz`)",
                text("`ready`."),
                [("503".to_string(), text("Not ready: the watches have not synced or the API server does not answer."))].into_iter().collect(),
            ),
            "/openapi.json": {
                "get": {"operationId": "openapi", "summary": "This document", "security": [], "responses": {"200": {"description": "The OpenAPI document."}}}
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A Kubernetes bearer token (a user's or a service account's)."}},
            "schemas": Value::Object(schemas),
        }
    })
}

const API_SERVER_AWAY: &str = "The Kubernetes API server is unavailable or refused nodemedic's own call; nothing the caller can fix. Retry after `Retry-After` seconds.";
const API_SERVER_AWAY_LOWER: &str = "the Kubernetes API server is unavailable or refused nodemedic's own call.";
const API_SERVER_SLOW: &str = "The Kubernetes API server did not answer within the deadline (`--api-server-timeout`, 15 s by default). An action may be partly done: `GET /actions/{id}` says how far it got.";

/// The document as it is written to `docs/openapi.json`.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_openapi_json_is_generated_from_the_code() -> Result<(), std::io::Error> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let generated = document_text();
        if std::env::var_os("NODEMEDIC_BLESS").is_some() {
            std::fs::write(&path, &generated)?;
        }
        let kept = std::fs::read_to_string(&path)?;
        assert!(
            kept == generated,
            "docs/openapi.json differs from the code; regenerate it with NODEMEDIC_BLESS=1 cargo test -p nodemedic-api openapi"
        );
        Ok(())
    }

    #[test]
    fn the_document_names_every_action_type() {
        let text = document_text();
        for t in crate::request::ActionType::ALL {
            assert!(text.contains(&format!("\"{}\"", t.as_str())), "{t} missing");
        }
    }
}
