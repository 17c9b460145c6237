//! The OpenAPI 3.1 document of the REST API, served at `/v1/openapi.json`.
//! Written by hand next to the router; `tests/api_openapi.rs` checks that
//! both list the same routes.

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_body(schema: Value, required: bool) -> Value {
    json!({ "required": required, "content": { "application/json": { "schema": schema } } })
}

fn path_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description,
            "schema": { "type": "string" } })
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

fn session_id() -> Value {
    path_param("id", "session id, `[a-z0-9_-]{1,64}`")
}

/// One operation with the error answers every authenticated route shares.
fn op(
    summary: &str,
    params: Vec<Value>,
    body: Option<Value>,
    mut responses: serde_json::Map<String, Value>,
) -> Value {
    for (status, what) in [
        ("400", "malformed request"),
        ("401", "missing or invalid token"),
        (
            "429",
            "too many failed authentications from this client address (`too_many_auth_failures`; valid tokens are never throttled)",
        ),
        ("503", "timed out or shutting down"),
    ] {
        responses
            .entry(status)
            .or_insert_with(|| error_response(what));
    }
    let mut op = json!({ "summary": summary, "parameters": params, "responses": responses });
    if let Some(body) = body {
        op["requestBody"] = body;
    }
    op
}

fn responses(items: &[(&str, Value)]) -> serde_json::Map<String, Value> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn session_action(summary: &str) -> Value {
    json!({ "post": op(summary, vec![session_id()], None, responses(&[
        ("200", json_response("the session afterwards", schema_ref("Session"))),
        ("404", error_response("no such session")),
        ("409", error_response("not possible in the session's state")),
    ])) })
}

pub fn document() -> Value {
    let state_enum: Vec<&str> = crate::session::SessionState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "whatsd",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Self-hosted WhatsApp multi-device session daemon. Every route except /healthz, /readyz and this document needs `Authorization: Bearer <token>`: the admin token, or a tenant token (scoped to that tenant's sessions). Errors are always `{\"error\":{\"code\",\"message\"}}`."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": {
                    "type": "object", "required": ["error"],
                    "properties": { "error": { "type": "object", "required": ["code", "message"],
                        "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } }
                },
                "SessionState": { "type": "string", "enum": state_enum },
                "Transition": {
                    "type": "object",
                    "properties": {
                        "from": schema_ref("SessionState"), "to": schema_ref("SessionState"),
                        "reason": { "type": ["string", "null"] }, "at_ms": { "type": "integer" }
                    }
                },
                "Session": {
                    "type": "object",
                    "properties": {
                        "id": { "type": "string" }, "tenant": { "type": "string" },
                        "state": schema_ref("SessionState"),
                        "reason": { "type": ["string", "null"] }, "reason_message": { "type": ["string", "null"] },
                        "phone": { "type": "string" }, "jid": { "type": "string" }, "lid": { "type": "string" },
                        "push_name": { "type": "string" }, "business_name": { "type": "string" },
                        "platform": { "type": "string" },
                        "created_at_ms": { "type": "integer" }, "updated_at_ms": { "type": "integer" },
                        "paired_at_ms": { "type": "integer" }, "last_connected_at_ms": { "type": "integer" },
                        "transitions": { "type": "array", "items": schema_ref("Transition") }
                    }
                },
                "SessionList": { "type": "object", "properties": { "sessions": { "type": "array", "items": schema_ref("Session") } } },
                "Qr": {
                    "type": "object",
                    "properties": {
                        "code": { "type": "string", "description": "a credential: whoever sees it can link a device" },
                        "expires_at": { "type": "string", "format": "date-time" },
                        "expires_at_ms": { "type": "integer" }, "index": { "type": "integer" },
                        "svg": { "type": "string" }
                    }
                },
                "Tenant": {
                    "type": "object",
                    "properties": {
                        "id": { "type": "string" }, "created_at": { "type": "string", "format": "date-time" },
                        "created_at_ms": { "type": "integer" }, "token_issued_at_ms": { "type": "integer" },
                        "sessions": { "type": "integer" },
                        "token": { "type": "string", "description": "only when created or rotated; shown once" }
                    }
                }
            }
        },
        "security": [ { "bearer": [] } ],
        "paths": {
            "/healthz": { "get": { "summary": "the process is up", "security": [],
                "responses": { "200": { "description": "up" } } } },
            "/readyz": { "get": { "summary": "the store is open and the supervisor runs", "security": [],
                "responses": { "200": { "description": "ready" }, "503": error_response("not ready") } } },
            "/metrics": {
                "get": op("Prometheus metrics, text exposition format 0.0.4 (admin)", vec![], None, responses(&[
                    ("200", json!({ "description": "the metrics", "content": { "text/plain": {} } })),
                    ("403", error_response("needs the admin token")),
                ]))
            },
            "/v1/admin/backup": {
                "post": op("a consistent backup of the whole store (admin); values stay sealed, the master key is not included", vec![], None, responses(&[
                    ("200", json!({ "description": "the backup file (`whatsd store restore --in`)",
                        "content": { "application/octet-stream": {} } })),
                    ("403", error_response("needs the admin token")),
                ]))
            },
            "/v1/openapi.json": { "get": { "summary": "this document", "security": [],
                "responses": { "200": { "description": "OpenAPI 3.1" } } } },
            "/v1/sessions": {
                "get": op("list sessions", vec![
                    query_param("state", "only sessions in this state", schema_ref("SessionState")),
                    query_param("tenant", "only this tenant's sessions", json!({ "type": "string" })),
                ], None, responses(&[
                    ("200", json_response("sessions", schema_ref("SessionList"))),
                    ("403", error_response("a tenant token asked for another tenant")),
                ])),
                "post": op("create a session", vec![], Some(json_body(json!({
                    "type": "object", "additionalProperties": false,
                    "properties": {
                        "id": { "type": "string", "pattern": "^[a-z0-9_-]{1,64}$", "description": "generated when absent" },
                        "tenant": { "type": "string", "description": "default `default` (admin) or the caller's tenant" },
                        "start": { "type": "boolean", "default": true }
                    }
                }), false)), responses(&[
                    ("201", json_response("created", schema_ref("Session"))),
                    ("403", error_response("a tenant token named another tenant")),
                    ("403", error_response("`quota_exceeded`: the tenant holds sessions.max_per_tenant sessions")),
                    ("409", error_response("a session with that id exists")),
                    ("413", error_response("body too large")),
                    ("415", error_response("body is not JSON")),
                    ("422", error_response("invalid id, unknown tenant or unknown field")),
                ]))
            },
            "/v1/sessions/{id}": {
                "get": op("show a session", vec![session_id()], None, responses(&[
                    ("200", json_response("the session", schema_ref("Session"))),
                    ("404", error_response("no such session")),
                ])),
                "patch": op("move the session to another tenant (admin): from then on its events reach only the new tenant; its session webhook endpoints are removed; deliveries already queued still go to the old tenant", vec![session_id()],
                    Some(json_body(json!({ "type": "object", "required": ["tenant"], "properties": {
                        "tenant": { "type": "string", "description": "an existing tenant id" } } }), true)),
                    responses(&[
                    ("200", json_response("the session afterwards", schema_ref("Session"))),
                    ("403", error_response("needs the admin token")),
                    ("404", error_response("no such session")),
                    ("415", error_response("body is not JSON")),
                    ("422", error_response("invalid or unknown tenant")),
                ])),
                "delete": op("delete a session and everything attached to it (device keys, its webhook endpoints, queued deliveries, dead letters)", vec![session_id()], None, responses(&[
                    ("204", json!({ "description": "deleted" })),
                    ("404", error_response("no such session")),
                ]))
            },
            "/v1/sessions/{id}/start": session_action("start a session"),
            "/v1/sessions/{id}/stop": session_action("stop a session"),
            "/v1/sessions/{id}/reset": session_action("wipe keys and pair again"),
            "/v1/sessions/{id}/logout": session_action("unlink the device"),
            "/v1/sessions/{id}/qr": {
                "get": op("the live pairing QR", vec![session_id(),
                    query_param("format", "json (default), svg or png", json!({ "type": "string", "enum": ["json", "svg", "png"] }))],
                    None, responses(&[
                    ("200", json!({ "description": "the QR", "content": {
                        "application/json": { "schema": schema_ref("Qr") },
                        "image/svg+xml": {}, "image/png": {} } })),
                    ("404", error_response("no such session, or no live QR (code: qr_pending, already_paired, pairing_by_code, not_started)")),
                ]))
            },
            "/v1/sessions/{id}/pair-code": {
                "post": op("pair with a phone-number code", vec![session_id()], Some(json_body(json!({
                    "type": "object", "additionalProperties": false, "required": ["phone"],
                    "properties": { "phone": { "type": "string", "description": "international number, digits" } }
                }), true)), responses(&[
                    ("200", json_response("the code to type on the phone", json!({ "type": "object", "properties": {
                        "code": { "type": "string" }, "expires_at": { "type": "string", "format": "date-time" },
                        "expires_at_ms": { "type": "integer" } } }))),
                    ("404", error_response("no such session")),
                    ("409", error_response("not possible in the session's state")),
                    ("422", error_response("invalid phone, or WhatsApp refused")),
                ]))
            },
            "/v1/sessions/{id}/messages": {
                "post": op("send a text message", vec![session_id()], Some(json_body(json!({
                    "type": "object", "additionalProperties": false, "required": ["to", "text"],
                    "properties": { "to": { "type": "string", "description": "phone number or JID" }, "text": { "type": "string" } }
                }), true)), responses(&[
                    ("200", json_response("sent", json!({ "type": "object", "properties": { "id": { "type": "string" } } }))),
                    ("404", error_response("no such session")),
                    ("409", error_response("the session is not connected")),
                    ("422", error_response("invalid recipient or text")),
                    ("502", error_response("WhatsApp did not take the message")),
                ]))
            },
            "/v1/phones/{phone}": {
                "get": op("sessions paired with a phone number", vec![path_param("phone", "digits")], None, responses(&[
                    ("200", json_response("sessions", json!({ "type": "object", "properties": {
                        "phone": { "type": "string" }, "sessions": { "type": "array", "items": schema_ref("Session") } } }))),
                ]))
            },
            "/v1/tenants": {
                "get": op("list tenants", vec![], None, responses(&[
                    ("200", json_response("tenants", json!({ "type": "object", "properties": {
                        "tenants": { "type": "array", "items": schema_ref("Tenant") } } }))),
                ])),
                "post": op("create a tenant (admin); returns its token once", vec![], Some(json_body(json!({
                    "type": "object", "additionalProperties": false, "required": ["id"],
                    "properties": { "id": { "type": "string", "pattern": "^[a-z0-9_-]{1,64}$" } }
                }), true)), responses(&[
                    ("201", json_response("created, with `token`", schema_ref("Tenant"))),
                    ("403", error_response("needs the admin token")),
                    ("409", error_response("exists")),
                    ("422", error_response("invalid id")),
                ]))
            },
            "/v1/tenants/{id}": {
                "get": op("show a tenant", vec![path_param("id", "tenant id")], None, responses(&[
                    ("200", json_response("the tenant", schema_ref("Tenant"))),
                    ("404", error_response("no such tenant")),
                ])),
                "delete": op("delete a tenant without sessions (admin)", vec![path_param("id", "tenant id")], None, responses(&[
                    ("204", json!({ "description": "deleted" })),
                    ("403", error_response("needs the admin token")),
                    ("404", error_response("no such tenant")),
                    ("409", error_response("`tenant_not_empty`: the tenant still owns sessions; `default_tenant`: the default tenant cannot be deleted")),
                ]))
            },
            "/v1/tenants/{id}/token": {
                "post": op("rotate a tenant's token; the old one stops working", vec![path_param("id", "tenant id")], None, responses(&[
                    ("200", json_response("the tenant, with the new `token`", schema_ref("Tenant"))),
                    ("404", error_response("no such tenant")),
                ]))
            },
            "/v1/ws-tickets": {
                "post": op("a one-time ticket for /v1/events?ticket=", vec![], None, responses(&[
                    ("201", json_response("the ticket", json!({ "type": "object", "properties": {
                        "ticket": { "type": "string" }, "expires_at": { "type": "string", "format": "date-time" },
                        "expires_at_ms": { "type": "integer" } } }))),
                    ("429", error_response("too many unused tickets for this principal (`too_many_tickets`), or too many failed authentications")),
                ]))
            },
            "/v1/events": {
                "get": op("WebSocket of session events: a `snapshot` frame, then `session.*` and `message.*` frames", vec![
                    query_param("session", "follow one session", json!({ "type": "string" })),
                    query_param("tenant", "follow one tenant", json!({ "type": "string" })),
                    query_param("ticket", "one-time ticket (browsers); refused once its token is rotated or its tenant deleted", json!({ "type": "string" })),
                ], None, responses(&[
                    ("101", json!({ "description": "switching to the WebSocket protocol" })),
                    ("403", error_response("a tenant token asked for another tenant")),
                    ("404", error_response("no such session")),
                ]))
            }
        }
    });
    webhook_paths(&mut doc);
    doc
}

/// Webhook endpoints (tenant and session level), status and dead letters.
fn webhook_paths(doc: &mut Value) {
    let tenant = || path_param("id", "tenant id");
    let name = || {
        path_param(
            "name",
            "endpoint name, `[a-z0-9_-]{1,64}` (not `status` or `dead-letters`)",
        )
    };
    let dead = || path_param("dead", "dead-letter id");
    let spec = json_body(
        json!({ "type": "object", "required": ["url", "secret"], "properties": {
        "url": { "type": "string", "description": "http(s) URL without credentials; internal addresses need webhooks.allow_private_targets" },
        "secret": { "type": "string", "minLength": 16, "description": "HMAC-SHA256 signing key; never shown again" },
        "events": { "type": "array", "items": { "type": "string", "enum": crate::webhook::endpoint::EVENT_TYPES }, "description": "empty: all" },
        "format": { "type": "string", "enum": ["whatsd", "cloud_api"], "default": "whatsd" } } }),
        true,
    );
    let endpoint = json!({ "type": "object", "description": "an endpoint (without its secret)" });
    let endpoints = json!({ "type": "object", "properties": { "webhooks": { "type": "array", "items": endpoint } } });
    let put = |scope: &str, first: Value| {
        op(
            &format!("create or replace a {scope} webhook endpoint"),
            vec![first, name()],
            Some(spec.clone()),
            responses(&[
                ("200", json_response("replaced", endpoint.clone())),
                ("201", json_response("created", endpoint.clone())),
                (
                    "403",
                    error_response("`quota_exceeded`: webhooks.max_endpoints_per_tenant reached"),
                ),
                ("404", error_response("no such tenant/session")),
                ("415", error_response("not JSON")),
                (
                    "422",
                    error_response("invalid url, secret, events, or a private target"),
                ),
            ]),
        )
    };
    let show = |first: Value| {
        op(
            "show a webhook endpoint",
            vec![first, name()],
            None,
            responses(&[
                ("200", json_response("the endpoint", endpoint.clone())),
                ("404", error_response("no such endpoint")),
            ]),
        )
    };
    let delete = |first: Value| {
        op(
            "delete a webhook endpoint and its pending deliveries",
            vec![first, name()],
            None,
            responses(&[
                ("204", json!({ "description": "deleted" })),
                ("404", error_response("no such endpoint")),
            ]),
        )
    };
    let paths = json!({
        "/v1/tenants/{id}/webhooks": {
            "get": op("the tenant's webhook endpoints", vec![tenant()], None, responses(&[
                ("200", json_response("endpoints", endpoints.clone())),
                ("404", error_response("no such tenant")),
            ]))
        },
        "/v1/tenants/{id}/webhooks/{name}": {
            "get": show(tenant()), "put": put("tenant", tenant()), "delete": delete(tenant())
        },
        "/v1/tenants/{id}/webhooks/status": {
            "get": op("delivery status of the tenant's (and its sessions') endpoints: queue depth, oldest pending age, attempts, last error, last success", vec![tenant()], None, responses(&[
                ("200", json_response("per-endpoint status", json!({ "type": "object" }))),
                ("404", error_response("no such tenant")),
            ]))
        },
        "/v1/tenants/{id}/webhooks/dead-letters": {
            "get": op("the tenant's dead letters, oldest first", vec![tenant(),
                query_param("after", "only ids above this one", json!({ "type": "integer" })),
                query_param("limit", "1-1000, default 100", json!({ "type": "integer" }))], None, responses(&[
                ("200", json_response("dead letters and `next_after`", json!({ "type": "object" }))),
                ("404", error_response("no such tenant")),
            ])),
            "delete": op("purge the tenant's dead letters", vec![tenant()], None, responses(&[
                ("200", json_response("`purged` count", json!({ "type": "object" }))),
                ("404", error_response("no such tenant")),
            ]))
        },
        "/v1/tenants/{id}/webhooks/dead-letters/redeliver": {
            "post": op("redeliver all the tenant's dead letters (to the end of their queues)", vec![tenant()], None, responses(&[
                ("200", json_response("`redelivering` count", json!({ "type": "object" }))),
                ("404", error_response("no such tenant")),
            ]))
        },
        "/v1/tenants/{id}/webhooks/dead-letters/{dead}": {
            "delete": op("delete one dead letter", vec![tenant(), dead()], None, responses(&[
                ("204", json!({ "description": "deleted" })),
                ("404", error_response("no such dead letter")),
            ]))
        },
        "/v1/tenants/{id}/webhooks/dead-letters/{dead}/redeliver": {
            "post": op("redeliver one dead letter", vec![tenant(), dead()], None, responses(&[
                ("200", json_response("queued again", json!({ "type": "object" }))),
                ("404", error_response("no such dead letter, or its endpoint is gone")),
            ]))
        },
        "/v1/webhooks/dead-letters": {
            "get": op("every dead letter, global endpoints' and every tenant's, oldest first (admin)", vec![
                query_param("after", "only ids above this one", json!({ "type": "integer" })),
                query_param("limit", "1-1000, default 100", json!({ "type": "integer" }))], None, responses(&[
                ("200", json_response("dead letters and `next_after`", json!({ "type": "object" }))),
                ("403", error_response("needs the admin token")),
            ])),
            "delete": op("purge every dead letter (admin)", vec![], None, responses(&[
                ("200", json_response("`purged` count", json!({ "type": "object" }))),
                ("403", error_response("needs the admin token")),
            ]))
        },
        "/v1/webhooks/dead-letters/{dead}": {
            "delete": op("delete one dead letter (admin)", vec![dead()], None, responses(&[
                ("204", json!({ "description": "deleted" })),
                ("400", error_response("not a dead-letter id")),
                ("403", error_response("needs the admin token")),
                ("404", error_response("no such dead letter")),
            ]))
        },
        "/v1/webhooks/dead-letters/{dead}/redeliver": {
            "post": op("redeliver one dead letter (admin)", vec![dead()], None, responses(&[
                ("200", json_response("queued again", json!({ "type": "object" }))),
                ("400", error_response("not a dead-letter id")),
                ("403", error_response("needs the admin token")),
                ("404", error_response("no such dead letter, or its endpoint is gone")),
            ]))
        },
        "/v1/sessions/{id}/webhooks": {
            "get": op("the session's own webhook endpoints (they replace the tenant's for this session)", vec![session_id()], None, responses(&[
                ("200", json_response("endpoints", endpoints.clone())),
                ("404", error_response("no such session")),
            ]))
        },
        "/v1/sessions/{id}/webhooks/{name}": {
            "get": show(session_id()), "put": put("session", session_id()), "delete": delete(session_id())
        }
    });
    if let (Some(all), Value::Object(new)) = (doc["paths"].as_object_mut(), paths) {
        all.extend(new);
    }
}
