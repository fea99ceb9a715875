//! The OpenAPI document, generated from the handlers' annotations and the proto types, then
//! completed by [`document`]: the document is the contract (checked by schemathesis against a
//! live server in CI), so every status an operation can answer is in it with its schema.
//!
//! What every admin handler answers alike comes from the extractors it takes, and is added here
//! once rather than repeated on each handler: `Admin` (401 bad token, 403 missing scope),
//! `ApiJson` (400 bad JSON, 413 too large), `ApiPath` and query parsing (400), and the store
//! behind every admin operation (503 `storage_unavailable`). The input rules the handlers
//! enforce (names, durations, ranges) are written into the parameter and body schemas, so that
//! what the schema accepts the server accepts.

use axum::Json;
use keyroll_core::DecisionCode;
use serde_json::{Map, Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::{admin, forward_auth};

/// The API description served at `/openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "keyroll", description = "Credential rotation: per-consumer API keys, graceful rotation, explained rejections."),
    paths(
        forward_auth::forward_auth,
        forward_auth::verify_json,
        admin::health::healthz,
        admin::health::readyz,
        admin::environments::create_environment,
        admin::environments::list_environments,
        admin::environments::get_environment,
        admin::environments::update_environment,
        crate::http::schedule::schedule,
        crate::http::schedule::preflight,
        crate::http::adoption::adoption,
        admin::consumers::create_consumer,
        admin::consumers::list_consumers,
        admin::consumers::get_consumer,
        admin::consumers::update_consumer,
        admin::versions::rotate,
        admin::versions::revoke,
        admin::versions::retire,
        admin::consumers::disable,
        admin::consumers::enable,
        crate::http::status::status,
        crate::http::status::events,
        crate::http::audit::audit,
        crate::http::keys::get_key,
        crate::http::observe::metrics,
        crate::http::observe::decisions,
        crate::http::tokens::create_token,
        crate::http::tokens::list_tokens,
        crate::http::tokens::get_token,
        crate::http::tokens::revoke_token,
        crate::http::tokens::rotate_token,
        crate::http::webhooks::create_webhook,
        crate::http::webhooks::list_webhooks,
        crate::http::webhooks::get_webhook,
        crate::http::webhooks::delete_webhook,
        crate::http::webhooks::rotate_secret,
        crate::http::webhooks::enable_webhook,
        crate::http::webhooks::list_deliveries,
        crate::http::webhooks::get_delivery,
        crate::http::webhooks::replay_delivery,
        crate::http::self_service::self_state,
        crate::http::self_service::self_rotate,
        crate::http::self_service::self_handover,
        crate::http::self_service::self_report,
        crate::http::self_service::request_rotation,
        crate::http::self_service::list_agents,
        crate::http::cluster::cluster,
        crate::http::ca::init,
        crate::http::ca::issue,
        crate::http::ca::self_certificate,
        crate::http::ca::bundle,
        crate::http::ca::crl,
        crate::http::ca::revoke,
        crate::http::ca::list,
        crate::http::ca::get,
        crate::http::ca::status,
        crate::http::ca::rotate,
    ),
    modifiers(&AdminToken),
)]
pub struct ApiDoc;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("kra_<id>_<secret>")
                    .build(),
            ),
        );
    }
}

/// `GET /openapi.json`.
pub async fn openapi_json() -> Json<Value> {
    Json(document())
}

/// The HTTP methods an OpenAPI path item can hold operations for.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// `[a-z][a-z0-9]{0,15}` (keyroll_core::Environment).
const ENVIRONMENT: &str = "^[a-z][a-z0-9]{0,15}$";
/// keyroll_core::ConsumerName.
const CONSUMER_NAME: &str = "^[a-z][a-z0-9-]{0,62}$";
/// ENV/NAME (keyroll_core::ConsumerRef).
const CONSUMER_REF: &str = "^[a-z][a-z0-9]{0,15}/[a-z][a-z0-9-]{0,62}$";
/// 12 base62 characters: a kid, or an admin token id.
const BASE62_ID: &str = "^[0-9A-Za-z]{12}$";
/// A webhook endpoint id.
const WEBHOOK_ID: &str = "^wh_[0-9A-Za-z]{16}$";
/// A webhook delivery id.
const DELIVERY_ID: &str = "^whd_[0-9A-Za-z]{16}$";
/// An event type a webhook subscribes to.
const EVENT_TYPE: &str = "^([a-z_]+(\\.[a-z_]+)+|\\*)$";
/// A humantime duration in its simplest form, or `0`. The server reads more (`1h 30m`); the
/// schema names the form clients are told to send.
const DURATION: &str = "^(0|[1-9][0-9]{0,3}(ms|s|m|h|d))$";
/// A duration that must be longer than 0.
const POSITIVE_DURATION: &str = "^[1-9][0-9]{0,3}(ms|s|m|h|d)$";
/// `since` of `/v1/audit`: a duration as [`DURATION`], or an RFC 3339 UTC time. The days stop at
/// 28 so that every string the pattern admits is a real date; the server reads every RFC 3339
/// time.
const AUDIT_SINCE: &str = r"^(0|[1-9][0-9]{0,3}(ms|s|m|h|d)|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?Z)$";
/// A character that is not Unicode White_Space (what `str::trim` removes): spelled out, because
/// `\s` differs between regex dialects (U+0085, U+FEFF).
const NOT_WHITESPACE: &str = r"[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";
/// 1 to 64 characters without control characters, the first not whitespace (a name is not
/// only whitespace).
const TOKEN_NAME: &str = r"^[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]{0,63}$";
/// A SPIFFE trust domain (keyroll_ca::TrustDomain): `[a-z0-9-]` labels joined by single dots.
const TRUST_DOMAIN: &str = r"^[a-z0-9-]+(\.[a-z0-9-]+)*$";
/// A workload certificate's lifetime: a duration of at least 5 minutes (MIN_LEAF_LIFETIME).
const LEAF_TTL: &str =
    "^(([5-9]|[1-9][0-9]{1,3})m|[1-9][0-9]{0,3}(h|d)|([3-9][0-9]{2}|[1-9][0-9]{3})s)$";
/// A certificate serial: 32 hex digits, not all zero (the length is in [`serial_schema`]).
const SERIAL: &str = "^[0-9a-f]*[1-9a-f][0-9a-f]*$";
/// An RFC 3339 UTC time (days up to 28, so that every match is a real date).
const RFC3339_TIME: &str = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?Z$";

/// Free text without control characters (`char::is_control`).
const NO_CONTROL: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

/// The OpenAPI document served at `/openapi.json`: the annotations, completed with what the
/// extractors and the input rules add (see the module documentation).
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    complete(&mut doc);
    doc
}

fn problem_ref() -> Value {
    json!({ "$ref": "#/components/schemas/Problem" })
}

fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": problem_ref() } },
    })
}

fn complete(doc: &mut Value) {
    if let Some(schemes) = doc.pointer_mut("/components/securitySchemes") {
        schemes["api_key"] = json!({
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "a consumer's key (kr_<env>_<kid>_<secret>); `Authorization: Bearer <key>` is read first when present",
        });
        schemes["consumer_key"] = json!({
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "kr_<env>_<kid>_<secret>",
            "description": "a consumer's own key: the agent's credential for /v1/self (its own consumer only)",
        });
    }
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        body_rules(schemas);
    }
    let schemas = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        if path == "/v1/forward-auth" {
            every_method(item);
        }
        links(path, item);
        for method in METHODS {
            if let Some(op) = item.get_mut(method).and_then(Value::as_object_mut) {
                complete_operation(path, op, &schemas);
            }
        }
    }
}

/// OpenAPI links from what creates a resource (its 201) to what acts on it, so that a client (and
/// schemathesis's stateful phase) knows where the identifiers come from.
fn links(path: &str, item: &mut Map<String, Value>) {
    let (targets, parameters) = match path {
        "/v1/consumers" => (
            &[
                "get_consumer",
                "preflight",
                "update_consumer",
                "rotate",
                "disable",
                "enable",
                "revoke",
                "retire",
            ][..],
            json!({
                "env": "$response.body#/consumer/environment",
                "name": "$response.body#/consumer/name",
                "version": "$response.body#/version",
            }),
        ),
        "/v1/environments" => (
            &["get_environment", "update_environment"][..],
            json!({ "name": "$response.body#/name" }),
        ),
        "/v1/tokens" => (
            &["get_token", "rotate_token", "revoke_token"][..],
            json!({ "id": "$response.body#/info/id" }),
        ),
        "/v1/webhooks" => (
            &[
                "get_webhook",
                "delete_webhook",
                "rotate_secret",
                "enable_webhook",
            ][..],
            json!({ "id": "$response.body#/webhook/id" }),
        ),
        _ => return,
    };
    if let Some(r) = item
        .get_mut("post")
        .and_then(|op| op.pointer_mut("/responses/201"))
    {
        let mut links = Map::new();
        for target in targets {
            // A link names only the parameters its target has.
            let wanted: Map<String, Value> = parameters
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| *k != "version" || matches!(*target, "revoke" | "retire"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            links.insert(
                (*target).to_owned(),
                json!({ "operationId": target, "parameters": wanted }),
            );
        }
        r["links"] = Value::Object(links);
    }
}

/// Forward-auth answers every method (a gateway forwards the client's), so it is documented
/// under each with the same responses.
fn every_method(item: &mut Map<String, Value>) {
    let Some(get) = item.get("get").cloned() else {
        return;
    };
    for method in ["post", "put", "patch", "delete", "options"] {
        let mut op = get.clone();
        if let Some(id) = op.get("operationId").and_then(Value::as_str) {
            op["operationId"] = Value::String(format!("{id}_{method}"));
        }
        item.entry(method).or_insert(op);
    }
}

/// `ApiJson` reads an empty body as `{}`: where `{}` is a valid body, the body is optional.
fn optional_when_empty_is_valid(request: &mut Value, schemas: &Map<String, Value>) {
    let name = request
        .pointer("/content/application~1json/schema/$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"));
    let Some(schema) = name.and_then(|n| schemas.get(n)) else {
        return;
    };
    let no_required = schema
        .get("required")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if no_required {
        request["required"] = Value::Bool(false);
    }
}

fn complete_operation(path: &str, op: &mut Map<String, Value>, schemas: &Map<String, Value>) {
    let admin = op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|r| r.get("admin_token").is_some()));
    let consumer = op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|r| r.get("consumer_key").is_some()));
    if path == "/v1/forward-auth" {
        op.insert("security".into(), json!([{ "api_key": [] }, {}]));
    }
    let body = op.contains_key("requestBody");
    if let Some(request) = op.get_mut("requestBody") {
        optional_when_empty_is_valid(request, schemas);
    }
    let mut validated_params = false;
    if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
        for p in params.iter_mut() {
            param_rules(path, p);
        }
        validated_params = !params.is_empty();
    }
    let responses = op
        .entry("responses")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(responses) = responses.as_object_mut() else {
        return;
    };
    // utoipa names `application/json` for every body; a Problem is always problem+json.
    for r in responses.values_mut() {
        let Some(content) = r.get_mut("content").and_then(Value::as_object_mut) else {
            continue;
        };
        let is_problem = content
            .values()
            .any(|c| c.pointer("/schema/$ref") == Some(&problem_ref()["$ref"]));
        if is_problem {
            content.clear();
            content.insert(
                "application/problem+json".into(),
                json!({ "schema": problem_ref() }),
            );
        }
    }
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status)
            .or_insert_with(|| problem_response(description));
    };
    if consumer {
        add(
            "401",
            "no consumer key, or one that is not valid now; the code says why (`key_retired`, `key_revoked`, …)",
        );
        add("503", "the store is unavailable (`storage_unavailable`)");
    }
    if (admin || consumer) && (body || validated_params) {
        add(
            "400",
            "the request is malformed: a parameter, a header or the body (`invalid_request`)",
        );
    }
    if admin {
        add(
            "401",
            "no admin token, or one that is malformed, unknown, expired, revoked or replaced; `WWW-Authenticate` says which",
        );
        add(
            "403",
            "the admin token lacks the scope (`insufficient_scope`)",
        );
        add(
            "503",
            "the store is unavailable (`storage_unavailable`); verification keeps working",
        );
    }
    if body {
        add("413", "the body is larger than 64 KiB (`body_too_large`)");
    }
}

/// A certificate serial.
fn serial_schema() -> Value {
    json!({ "type": "string", "minLength": 32, "maxLength": 32, "pattern": SERIAL })
}

/// The schema of a parameter, from the rule the handler enforces on it.
fn param_rules(path: &str, p: &mut Value) {
    let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
    let location = p.get("in").and_then(Value::as_str).unwrap_or_default();
    let rule = match (location, name) {
        ("path", "env") | ("query", "environment") => {
            json!({ "type": "string", "pattern": ENVIRONMENT })
        }
        // `/v1/environments/{name}` names an environment; everywhere else `name` is a consumer's.
        ("path", "name") if path.starts_with("/v1/environments/") => {
            json!({ "type": "string", "pattern": ENVIRONMENT })
        }
        ("path", "name") => json!({ "type": "string", "pattern": CONSUMER_NAME }),
        ("path", "version") => json!({ "type": "string", "pattern": "^v?[1-9][0-9]{0,8}$" }),
        ("path", "id") if path.starts_with("/v1/webhooks/") => {
            json!({ "type": "string", "pattern": WEBHOOK_ID })
        }
        ("path", "id") if path.starts_with("/v1/webhook-deliveries/") => {
            json!({ "type": "string", "pattern": DELIVERY_ID })
        }
        ("query", "endpoint") => json!({ "type": "string", "pattern": WEBHOOK_ID }),
        ("path", "serial") => serial_schema(),
        ("query", "identity") => json!({ "type": "string", "pattern": CONSUMER_REF }),
        ("query", "state") if path == "/v1/certs" => {
            json!({ "type": "string", "enum": ["live", "expired", "revoked"] })
        }
        ("query", "after") if path == "/v1/certs" => serial_schema(),
        ("query", "format") => json!({ "type": "string", "enum": ["pem", "json"] }),
        ("query", "state") if path == "/v1/webhook-deliveries" => {
            json!({ "type": "string", "enum": ["pending", "delivered", "failed", "disabled"] })
        }
        ("path", "kid" | "id") | ("query", "kid") => {
            json!({ "type": "string", "pattern": BASE62_ID })
        }
        ("query", "consumer") => json!({ "type": "string", "pattern": CONSUMER_REF }),
        ("query", "fingerprint") => json!({ "type": "string", "pattern": "^fp_[0-9a-fA-F]{16}$" }),
        ("query", "since") if path == "/v1/audit" => {
            json!({ "type": "string", "pattern": AUDIT_SINCE })
        }
        ("query", "since" | "wait") => json!({ "type": "string", "pattern": DURATION }),
        ("query", "code") => {
            let codes: Vec<&str> = DecisionCode::ALL
                .iter()
                .map(DecisionCode::as_str)
                .chain(["invalid_key"])
                .collect();
            let one = codes.join("|");
            // The server skips empty items and trims each (`code=`, `a, b,`).
            let item = format!(r"\s*({one})?\s*");
            json!({ "type": "string", "pattern": format!("^{item}(,{item})*$") })
        }
        ("query", "limit") => {
            let max = if path == "/v1/decisions" {
                crate::http::observe::MAX_LIMIT
            } else {
                1000
            };
            json!({ "type": "integer", "minimum": 1, "maximum": max })
        }
        ("query", "after") => json!({ "type": "integer", "format": "int64" }),
        ("header", "Idempotency-Key") => json!({
            "type": "string",
            "pattern": format!("^[!-~]{{1,{}}}$", crate::service::idempotency::MAX_LEN),
        }),
        _ => return,
    };
    p["schema"] = rule;
}

/// The rules the handlers enforce on request bodies, written into the proto schemas.
fn body_rules(schemas: &mut Map<String, Value>) {
    let string = |pattern: &str| json!({ "type": "string", "pattern": pattern });
    let nullable = |pattern: &str| json!({ "type": ["string", "null"], "pattern": pattern });
    let owner = json!({ "type": ["string", "null"], "maxLength": 200, "pattern": NO_CONTROL });
    let retire = json!({ "type": ["string", "null"], "enum": ["when-idle", "at-deadline", null] });
    let on_stall = json!({ "type": ["string", "null"], "enum": ["extend", "retire", null] });
    let scope = json!({ "type": "string", "pattern": "^[A-Za-z0-9:._/*-]{1,128}$" });
    let admin_scopes = json!({
        "type": "array",
        "minItems": 1,
        "items": { "type": "string", "enum": crate::admin_token::SCOPES },
    });
    let rules: [(&str, &str, Value); 20] = [
        ("CreateEnvironment", "name", string(ENVIRONMENT)),
        ("CreateConsumer", "environment", string(ENVIRONMENT)),
        ("CreateConsumer", "name", string(CONSUMER_NAME)),
        (
            "CreateConsumer",
            "scopes",
            json!({ "type": "array", "items": scope }),
        ),
        ("CreateConsumer", "owner", owner.clone()),
        ("CreateConsumer", "expires_in", nullable(POSITIVE_DURATION)),
        ("CreateConsumer", "retire", retire.clone()),
        ("CreateConsumer", "idle", nullable(POSITIVE_DURATION)),
        ("CreateConsumer", "on_stall", on_stall.clone()),
        (
            "UpdateConsumer",
            "scopes",
            json!({ "type": ["array", "null"], "items": scope }),
        ),
        ("UpdateConsumer", "owner", owner),
        ("UpdateConsumer", "retire", retire),
        ("UpdateConsumer", "idle", nullable(POSITIVE_DURATION)),
        ("UpdateConsumer", "on_stall", on_stall),
        ("RotateRequest", "grace", nullable(DURATION)),
        ("RotateRequest", "expires_in", nullable(POSITIVE_DURATION)),
        (
            "RevokeRequest",
            "reason",
            json!({ "type": "string", "minLength": 1, "maxLength": 500, "pattern": NOT_WHITESPACE }),
        ),
        ("CreateToken", "name", string(TOKEN_NAME)),
        ("CreateToken", "scopes", admin_scopes),
        ("CreateToken", "expires_in", nullable(POSITIVE_DURATION)),
    ];
    let delivery = json!({ "type": ["string", "null"], "enum": ["agent", "ci", "manual", null] });
    let schedule: [(&str, &str, Value); 8] = [
        (
            "CreateConsumer",
            "rotate_every",
            nullable(POSITIVE_DURATION),
        ),
        ("CreateConsumer", "grace", nullable(POSITIVE_DURATION)),
        ("CreateConsumer", "delivery", delivery.clone()),
        (
            "UpdateConsumer",
            "rotate_every",
            nullable(POSITIVE_DURATION),
        ),
        ("UpdateConsumer", "grace", nullable(POSITIVE_DURATION)),
        ("UpdateConsumer", "delivery", delivery),
        ("CreateEnvironment", "rotate_after", nullable(ENVIRONMENT)),
        ("UpdateEnvironment", "rotate_after", nullable(ENVIRONMENT)),
    ];
    let more: [(&str, &str, Value); 3] = [
        (
            "RevokeToken",
            "reason",
            json!({ "type": ["string", "null"], "maxLength": 500, "pattern": NO_CONTROL }),
        ),
        ("RotateToken", "overlap", nullable(DURATION)),
        ("VerifyRequest", "environment", nullable(ENVIRONMENT)),
    ];
    let webhooks: [(&str, &str, Value); 4] = [
        (
            "CreateWebhook",
            "events",
            json!({ "type": ["array", "null"], "minItems": 1, "items": { "type": "string", "pattern": EVENT_TYPE, "maxLength": 64 } }),
        ),
        (
            "CreateWebhook",
            "description",
            json!({ "type": ["string", "null"], "maxLength": 200, "pattern": NO_CONTROL }),
        ),
        (
            "CreateWebhook",
            "url",
            json!({ "type": "string", "maxLength": 2048, "pattern": "^http://" }),
        ),
        ("RotateWebhookSecret", "overlap", nullable(DURATION)),
    ];
    let dns = json!({ "type": "array", "items": { "type": "string", "pattern": r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", "maxLength": 253 } });
    // IPv6 is accepted too; the schema names the form a generator can produce reliably.
    let ip = json!({ "type": "array", "items": { "type": "string", "pattern": r"^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])$" } });
    let reason = json!({ "type": ["string", "null"], "enum": ["unspecified", "key-compromise", "ca-compromise", "affiliation-changed", "superseded", "cessation-of-operation", null] });
    let ca: [(&str, &str, Value); 14] = [
        (
            "CaInit",
            "trust_domain",
            json!({ "type": "string", "pattern": TRUST_DOMAIN, "maxLength": 255 }),
        ),
        ("CaInit", "root_ttl", nullable(POSITIVE_DURATION)),
        ("CaInit", "intermediate_ttl", nullable(POSITIVE_DURATION)),
        ("IssueCert", "identity", string(CONSUMER_REF)),
        ("IssueCert", "ttl", nullable(LEAF_TTL)),
        ("IssueCert", "dns", dns),
        ("IssueCert", "ip", ip),
        ("SelfCertRequest", "ttl", nullable(LEAF_TTL)),
        (
            "RevokeCert",
            "serial",
            json!({ "type": ["string", "null"], "minLength": 32, "maxLength": 32, "pattern": SERIAL }),
        ),
        ("RevokeCert", "identity", nullable(CONSUMER_REF)),
        ("RevokeCert", "reason", reason),
        ("CaRotate", "enters_bundle_at", nullable(RFC3339_TIME)),
        ("CaRotate", "signs_from", nullable(RFC3339_TIME)),
        ("CaRotate", "idle", nullable(POSITIVE_DURATION)),
    ];
    // Exactly one of serial and identity.
    if let Some(s) = schemas.get_mut("RevokeCert") {
        // A null member counts as absent, as the server reads it.
        s["oneOf"] = json!([
            { "required": ["serial"], "properties": { "serial": { "type": "string" } } },
            { "required": ["identity"], "properties": { "identity": { "type": "string" } } },
        ]);
    }
    for (schema, field, rule) in rules
        .into_iter()
        .chain(more)
        .chain(schedule)
        .chain(webhooks)
        .chain(ca)
    {
        if let Some(prop) = schemas
            .get_mut(schema)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(field))
        {
            let description = prop.get("description").cloned();
            *prop = rule;
            if let Some(d) = description {
                prop["description"] = d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for method in METHODS {
                if let Some(op) = item.get(method) {
                    out.push((path.clone(), method.to_owned(), op));
                }
            }
        }
        out
    }

    #[test]
    fn every_error_status_is_a_problem_json_response() {
        let doc = document();
        let ops = operations(&doc);
        assert!(ops.len() >= 24, "{} operations", ops.len());
        for (path, method, op) in ops {
            let responses = op["responses"].as_object().expect("responses");
            for (status, r) in responses {
                if !status.starts_with('4') && !status.starts_with('5') {
                    continue;
                }
                // `/readyz` answers 503 with its health body, not a problem.
                if path == "/readyz" {
                    continue;
                }
                let content = r["content"].as_object();
                let types: Vec<&String> = content.into_iter().flat_map(|c| c.keys()).collect();
                assert_eq!(
                    types,
                    ["application/problem+json"],
                    "{method} {path} {status}: content types"
                );
                assert_eq!(
                    r["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path} {status}: schema"
                );
            }
            let has = |s: &str| responses.contains_key(s);
            let admin = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("admin_token").is_some()));
            if admin {
                for s in ["401", "403", "503"] {
                    assert!(has(s), "{method} {path} does not list {s}");
                }
            }
            if op.get("requestBody").is_some() {
                for s in ["400", "413"] {
                    assert!(has(s), "{method} {path} takes a body but does not list {s}");
                }
            }
            let path_params = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "path"));
            if path_params {
                assert!(has("400"), "{method} {path} has path parameters but no 400");
            }
            let consumer = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("consumer_key").is_some()));
            if consumer {
                assert!(
                    path.starts_with("/v1/self"),
                    "{method} {path}: only /v1/self takes a consumer key"
                );
                for s in ["401", "503"] {
                    assert!(has(s), "{method} {path} does not list {s}");
                }
            }
            // The CA's public material is served like a JWKS: no credential.
            let public = matches!(
                path.as_str(),
                "/v1/forward-auth" | "/v1/ca/bundle" | "/v1/ca/crl"
            );
            if path.starts_with("/v1/") && !public {
                assert!(admin || consumer, "{method} {path} names no credential");
            }
        }
    }

    #[test]
    fn both_credentials_are_documented() {
        let doc = document();
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["admin_token"]["scheme"], "bearer");
        assert_eq!(schemes["api_key"]["type"], "apiKey");
        assert_eq!(schemes["api_key"]["in"], "header");
        assert_eq!(schemes["api_key"]["name"], "X-API-Key");
        for method in ["get", "post", "put", "patch", "delete", "options"] {
            let op = &doc["paths"]["/v1/forward-auth"][method];
            assert_eq!(op["security"][0], json!({ "api_key": [] }), "{method}");
            assert!(op["responses"]["401"].is_object(), "{method}");
        }
    }

    #[test]
    fn links_name_real_operations() {
        let doc = document();
        let ids: Vec<String> = operations(&doc)
            .iter()
            .filter_map(|(_, _, op)| op["operationId"].as_str().map(str::to_owned))
            .collect();
        let created = &doc["paths"]["/v1/consumers"]["post"]["responses"]["201"]["links"];
        assert_eq!(created.as_object().map(Map::len), Some(8));
        for (path, status) in [("/v1/consumers", "201"), ("/v1/tokens", "201")] {
            let links = &doc["paths"][path]["post"]["responses"][status]["links"];
            for (name, link) in links.as_object().into_iter().flatten() {
                let target = link["operationId"].as_str().unwrap_or_default();
                assert!(ids.iter().any(|i| i == target), "{name} -> {target}");
            }
        }
        assert_eq!(
            created["revoke"]["parameters"]["version"],
            "$response.body#/version"
        );
        assert!(created["rotate"]["parameters"]["version"].is_null());
    }

    #[test]
    fn input_rules_are_in_the_schemas() {
        let doc = document();
        let rotate = &doc["paths"]["/v1/consumers/{env}/{name}/rotate"]["post"];
        let env = rotate["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "env"))
            .expect("env parameter");
        assert_eq!(env["schema"]["pattern"], ENVIRONMENT);
        for method in ["get", "patch"] {
            let name = doc["paths"]["/v1/environments/{name}"][method]["parameters"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == "name"))
                .expect("name parameter");
            assert_eq!(name["schema"]["pattern"], ENVIRONMENT, "{method}");
        }
        let create = &doc["components"]["schemas"]["CreateConsumer"]["properties"];
        assert_eq!(create["name"]["pattern"], CONSUMER_NAME);
        assert!(create["name"]["description"].is_string(), "kept");
        let code = &doc["paths"]["/v1/decisions"]["get"]["parameters"];
        let code = code
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "code"))
            .expect("code parameter");
        assert!(
            code["schema"]["pattern"]
                .as_str()
                .is_some_and(|p| p.contains("key_revoked") && p.contains("invalid_key"))
        );
    }
}
