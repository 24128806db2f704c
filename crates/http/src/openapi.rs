//! `GET /openapi.json`: the OpenAPI 3.1 description of the API, generated from the route table so it cannot
//! drift from what the server routes.
//!
//! Methods, path templates, path parameters and security requirements come from [`ROUTES`] (the same rows the
//! router is built from); what each endpoint does, its query parameters and its body shapes come from
//! [`operation`], an exhaustive `match` on [`Endpoint`], so an endpoint added without documentation does not
//! compile. Schemas are hand-written JSON Schema literals (2020-12, the dialect of OpenAPI 3.1): the request
//! types live in several crates, and a literal also documents what a type's custom parsing accepts
//! (`retention` as text, a publish body that is one object or an array).

use std::sync::OnceLock;

use axum::Json;
use axum::response::{IntoResponse, Response};
use esgf_events_auth::Role;
use serde_json::{Map, Value, json};

use crate::routes::{Access, Endpoint, ROUTES, RouteSpec};

/// `GET /openapi.json`. Built once: the document depends only on the compiled-in table.
pub(crate) async fn serve() -> Response {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    Json(DOCUMENT.get_or_init(document)).into_response()
}

/// What the document says about one endpoint beyond its row in [`ROUTES`].
struct Operation {
    tag: &'static str,
    summary: String,
    description: &'static str,
    /// Parameter objects (`in: query` or `in: header`); path parameters are added from the template.
    parameters: Vec<Value>,
    /// A JSON request body's schema.
    body: Option<Value>,
    /// The success status and its response object.
    ok: (&'static str, Value),
}

fn op(tag: &'static str, summary: &str, description: &'static str, ok: (&'static str, Value)) -> Operation {
    Operation { tag, summary: summary.to_owned(), description, parameters: Vec::new(), body: None, ok }
}

impl Operation {
    fn query(mut self, params: &[(&str, &str, Value)]) -> Self {
        for (name, description, schema) in params {
            let mut param =
                json!({ "name": name, "in": "query", "description": description, "schema": schema });
            if schema.get("type") == Some(&json!("array")) {
                param["style"] = json!("form");
                param["explode"] = json!(true);
            }
            self.parameters.push(param);
        }
        self
    }

    fn header(mut self, name: &str, description: &str) -> Self {
        self.parameters.push(json!({
            "name": name, "in": "header", "description": description, "schema": { "type": "string" }
        }));
        self
    }

    fn body(mut self, schema: Value) -> Self {
        self.body = Some(schema);
        self
    }
}

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn media_ok(description: &str, media_type: &str) -> Value {
    json!({ "description": description, "content": { media_type: { "schema": { "type": "string" } } } })
}

fn no_content(description: &str) -> (&'static str, Value) {
    ("204", json!({ "description": description }))
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn integer() -> Value {
    json!({ "type": "integer", "minimum": 0 })
}

/// The `after`/`limit` pair of paged lists.
fn paging() -> [(&'static str, &'static str, Value); 2] {
    [
        ("after", "Return entries after this sequence number (the `next` of the previous page).", integer()),
        ("limit", "Entries per page.", json!({ "type": "integer", "minimum": 1 })),
    ]
}

fn role_names(role: Role) -> (&'static str, &'static str) {
    match role {
        Role::Producer => ("producer", "producers"),
        Role::Consumer => ("consumer", "consumers"),
        Role::Operator => ("operator", "operators"),
    }
}

/// The documentation of one endpoint. Exhaustive on purpose: a new [`Endpoint`] needs an arm here.
#[rustfmt::skip]
fn operation(endpoint: Endpoint) -> Operation {
    let time = || json!({ "type": "string", "format": "date-time" });
    let filters = || json!({ "type": "array", "items": { "type": "string" } });
    let formats = || json!({ "enum": ["native", "cloudevents"] });
    let include = [("include", "`retired` to list retired topics too.", json!({ "enum": ["retired"] }))];
    let html = || ("200", media_ok("HTML page.", "text/html"));
    let atom = || ("200", media_ok("Atom 1.0 feed.", "application/atom+xml"));
    let object = || json!({ "type": "object" });
    let seconds = || json!({ "type": "number", "minimum": 0 });
    let unsubscribe = [
        ("address", "The address to unsubscribe.", string()),
        ("sig", "The link's signature (HMAC-SHA256, base64url).", string()),
    ];
    let list_of = |name: &str, item: &str| {
        json!({ "type": "object", "properties": { name: { "type": "array", "items": schema(item) } } })
    };
    match endpoint {
        Endpoint::Healthz => op("health", "Liveness probe",
            "200 while the process runs.",
            ("200", json_ok("Alive.", object()))),
        Endpoint::Readyz => op("health", "Readiness probe",
            "200 when the service accepts requests, naming the active maintenance window if there is one; \
             503 once shutdown began.",
            ("200", json_ok("Ready.", json!({ "type": "object", "properties": {
                "status": string(), "maintenance": schema("MaintenanceWindow") } })))),
        Endpoint::Home => op("pages", "Home page",
            "What this service is, how to connect, links to every page and feed, and the current state \
             (HTML).",
            html()),
        Endpoint::OpenApi => op("pages", "This OpenAPI document",
            "Generated from the server's route table, so it lists exactly the routes the server serves.",
            ("200", json_ok("OpenAPI 3.1 document.", object()))),
        Endpoint::ListTopics => op("topics", "List topics",
            "Every topic with its settings and offsets; retired ones only with `include=retired`.",
            ("200", json_ok("The topics.", schema("TopicList"))))
            .query(&include),
        Endpoint::TopicsPage => op("pages", "Topic catalogue page",
            "The topic catalogue as an HTML table.",
            html())
            .query(&include),
        Endpoint::CreateTopic => op("topics", "Create a topic",
            "Creates a topic with its partitions, retention and catalogue settings.",
            ("201", json_ok("Created.", schema("Topic"))))
            .body(schema("CreateTopic")),
        Endpoint::DescribeTopic => op("topics", "Describe a topic",
            "A topic's settings, lifecycle state and offsets.",
            ("200", json_ok("The topic.", schema("Topic")))),
        Endpoint::UpdateTopic => op("topics", "Change a topic",
            "Changes `public`, retention or catalogue settings (lifecycle state, description, ...); only \
             what is given changes.",
            ("200", json_ok("The changed topic.", schema("Topic"))))
            .body(schema("UpdateTopic")),
        Endpoint::Publish => op("events", "Publish events",
            "One event (a JSON object) or a batch (an array of objects), validated whole before anything is \
             appended, and acknowledged only once durable. An event repeating a `metadata.event_id` the \
             topic has seen is not appended again: its original position comes back with `duplicate: true`.",
            ("201", json_ok("Where each event was stored, in request order.", schema("PublishResult"))))
            .query(&[("key", "Record key of every event (default: the key the envelope names).", string())])
            .body(schema("PublishRequest")),
        Endpoint::Read => op("events", "Read events",
            "Events of one partition from an offset, a time or a consumer group's committed offset; \
             optionally long-polling, filtered, and as CloudEvents.",
            ("200", json_ok("A page of events.", schema("EventPage"))))
            .query(&[
                ("partition", "Partition to read (default 0).", integer()),
                ("offset", "First offset to return (default: the earliest retained).", integer()),
                ("since", "Start at the first event at or after this RFC 3339 time.", time()),
                ("limit", "Most events to return.", json!({ "type": "integer", "minimum": 1 })),
                ("wait", "Long-poll: seconds to wait when there is no event yet.", seconds()),
                ("group", "Start at this consumer group's committed offset.", string()),
                ("format", "`native` (the stored JSON, default) or `cloudevents`.", formats()),
                ("filter", "`path:value` conditions on the event JSON, all of which must hold.", filters()),
                ("key_prefix", "Only events whose key (STAC item id) starts with this.", string()),
            ]),
        Endpoint::Stream => op("events", "Follow a topic (server-sent events)",
            "A `text/event-stream` of the topic's events; each event's `id` is a cursor, so `Last-Event-ID` \
             resumes exactly after it, across restarts.",
            ("200", media_ok("Server-sent events.", "text/event-stream")))
            .query(&[
                ("partition", "Follow one partition only (default: all).", integer()),
                ("from", "`beginning`, `latest` (default) or an offset (with `partition`).", string()),
                ("since", "Start at the first event at or after this RFC 3339 time.", time()),
                ("group", "Start at this consumer group's committed offsets.", string()),
                ("format", "`native` (default) or `cloudevents`.", formats()),
                ("filter", "`path:value` conditions, all of which must hold.", filters()),
                ("key_prefix", "Only events whose key starts with this.", string()),
                ("last_event_id", "Resume after this cursor (clients that cannot send headers).", string()),
            ])
            .header("Last-Event-ID", "Resume after this cursor (the `id` of the last event received)."),
        Endpoint::CommitOffsets => op("groups", "Commit a consumer group's offsets",
            "The next offset to read, per topic and partition: the offsets Kafka consumer groups commit too.",
            no_content("Committed."))
            .body(schema("CommitOffsets")),
        Endpoint::DescribeGroup => op("groups", "Describe a consumer group",
            "The group's committed offsets and lag per partition.",
            ("200", json_ok("The group.", schema("Group")))),
        Endpoint::ListPrincipals(role) => op("principals", &format!("List {}", role_names(role).1),
            "Never shows secrets.",
            ("200", json_ok("The principals.", object()))),
        Endpoint::RegisterPrincipal(role) => op("principals", &format!("Register a {}", role_names(role).0),
            "The answer carries the new token, shown this once.",
            ("201", json_ok("Registered, with its token.", schema("Principal"))))
            .body(schema("Registration")),
        Endpoint::GetPrincipal(role) => op("principals", &format!("Show a {}", role_names(role).0),
            "Never shows secrets.",
            ("200", json_ok("The principal.", schema("Principal")))),
        Endpoint::UpdatePrincipal(role) => op("principals", &format!("Change a {}", role_names(role).0),
            "Topics, rate limit, contact, OIDC identities; only what is given changes, `null` clears.",
            ("200", json_ok("The changed principal.", schema("Principal"))))
            .body(schema("PrincipalUpdate")),
        Endpoint::RotatePrincipal(role) => op("principals", &format!("Rotate a {}", role_names(role).0),
            "Issues a new token, shown this once.",
            ("200", json_ok("The principal with its new token.", schema("Principal")))),
        Endpoint::DeletePrincipal(role) => op("principals", &format!("Revoke a {}", role_names(role).0),
            "Deletes the principal and its credentials.",
            no_content("Revoked.")),
        Endpoint::Audit => op("principals", "Audit log",
            "A page of the audit log, oldest first: `{\"entries\", \"next\"}`.",
            ("200", json_ok("A page of entries.", json!({ "type": "object", "properties": {
                "entries": { "type": "array" }, "next": integer() } }))))
            .query(&paging()),
        Endpoint::CreateSubscription => op("webhooks", "Create a webhook subscription",
            "Events of a topic are POSTed to the URL, signed per Standard Webhooks; the answer carries the \
             signing secret, shown this once.",
            ("201", json_ok("Created, with its secret.", schema("Subscription"))))
            .body(schema("NewSubscription")),
        Endpoint::ListSubscriptions => op("webhooks", "List webhook subscriptions",
            "The caller's subscriptions (every subscription for operators).",
            ("200", json_ok("The subscriptions.", object()))),
        Endpoint::GetSubscription => op("webhooks", "Show a webhook subscription",
            "State, progress, lag, last error and dead letters.",
            ("200", json_ok("The subscription.", schema("Subscription")))),
        Endpoint::DeleteSubscription => op("webhooks", "Delete a webhook subscription",
            "Stops deliveries and forgets the subscription.",
            no_content("Deleted.")),
        Endpoint::PauseSubscription => op("webhooks", "Pause deliveries",
            "Keeps the cursor; nothing is delivered until resumed.",
            ("200", json_ok("The subscription.", schema("Subscription")))),
        Endpoint::ResumeSubscription => op("webhooks", "Resume deliveries",
            "Continues from the cursor.",
            ("200", json_ok("The subscription.", schema("Subscription")))),
        Endpoint::DeadLetters => op("webhooks", "Dead letters",
            "Events given up on after the retries, oldest first.",
            ("200", json_ok("A page of dead letters.", object())))
            .query(&paging()),
        Endpoint::Redrive => op("webhooks", "Redrive dead letters",
            "Queues every dead letter for delivery again: `{\"queued\": N}`.",
            ("202", json_ok("Queued.", json!({ "type": "object", "properties": { "queued": integer() } })))),
        Endpoint::Metrics => op("operations", "Prometheus metrics",
            "Events and bytes per topic, latencies, lag, requests, deliveries, mail: Prometheus text format.",
            ("200", media_ok("Metrics.", "text/plain"))),
        Endpoint::ListMaintenance => op("operations", "List maintenance windows",
            "Windows not yet over, and which one is active.",
            ("200", json_ok("The windows.", json!({ "type": "object", "properties": {
                "windows": { "type": "array", "items": schema("MaintenanceWindow") },
                "active": { "type": ["string", "null"] } } })))),
        Endpoint::ScheduleMaintenance => op("operations", "Schedule a maintenance window",
            "Refused without a prior announcement or with less notice than configured, unless `force` \
             (flagged on the status page). During the window affected requests answer 503 `maintenance` \
             with `Retry-After`.",
            ("201", json_ok("Scheduled.", schema("MaintenanceWindow"))))
            .body(schema("NewMaintenanceWindow")),
        Endpoint::UpdateMaintenance => op("operations", "Change a maintenance window",
            "Only what is given changes.",
            ("200", json_ok("The changed window.", schema("MaintenanceWindow"))))
            .body(schema("MaintenanceWindowPatch")),
        Endpoint::CancelMaintenance => op("operations", "Cancel a maintenance window",
            "The window is removed.",
            no_content("Cancelled.")),
        Endpoint::Announce => op("announcements", "Publish an announcement",
            "Shown on /announcements and in its Atom feed, and mailed to the announcement list.",
            ("201", json_ok("Published.", schema("Announcement"))))
            .body(schema("NewAnnouncement")),
        Endpoint::ListAnnouncements => op("announcements", "List announcements",
            "Newest first.",
            ("200", json_ok("The announcements.", list_of("announcements", "Announcement")))),
        Endpoint::AnnouncementsPage => op("pages", "Announcements page",
            "Maintenance windows not yet over, then every announcement (HTML).",
            html()),
        Endpoint::AnnouncementsFeed => op("announcements", "Announcements feed",
            "Every announcement, newest first.",
            atom()),
        Endpoint::Changelog => op("changelog", "Changelog",
            "Every API and behaviour change: runtime changes (newest first) and the releases compiled in.",
            ("200", json_ok("The changelog.", json!({ "type": "object", "properties": {
                "runtime": { "type": "array" }, "releases": { "type": "array" } } })))),
        Endpoint::ChangelogPage => op("pages", "Changelog page",
            "The changelog (HTML).",
            html()),
        Endpoint::ChangelogFeed => op("changelog", "Changelog feed",
            "Runtime changes and dated releases.",
            atom()),
        Endpoint::MailDeliveries => op("announcements", "Announcement mail deliveries",
            "Every announcement mail and its state, per recipient.",
            ("200", json_ok("The deliveries.", json!({ "type": "object", "properties": {
                "deliveries": { "type": "array" } } })))),
        Endpoint::Status => op("operations", "Service status",
            "State (operational, maintenance or degraded), uptime over 7, 30 and 90 days, incidents with \
             their durations and the mean and longest recovery time, active and upcoming windows, topic sizes \
             and publish rates, consumer-group lag.",
            ("200", json_ok("The status.", json!({ "type": "object", "properties": {
                "state": string() } })))),
        Endpoint::StatusPage => op("pages", "Status page",
            "The status (HTML).",
            html()),
        Endpoint::ListRecipients => op("announcements", "List the announcement list",
            "Every address announcements are mailed to: configured (`announce_to`), members added through \
             the API, and registered principals' contacts, each once with its `sources`; addresses that \
             unsubscribed are listed with `unsubscribed: true` and not mailed.",
            ("200", json_ok("The list.", json!({ "type": "object", "properties": {
                "recipients": { "type": "array", "items": { "type": "object", "properties": {
                    "address": string(),
                    "name": { "type": ["string", "null"] },
                    "sources": { "type": "array", "items": { "enum": ["configured", "member", "contact"] } },
                    "unsubscribed": { "type": "boolean" } } } } } })))),
        Endpoint::AddRecipient => op("announcements", "Add a member to the announcement list",
            "Idempotent: 201 when the address joins, 200 when it already was a member. Adding an address \
             that unsubscribed subscribes it again.",
            ("201", json_ok("The member.", json!({ "type": "object", "properties": {
                "address": string(), "name": string(), "added": string() } }))))
            .body(json!({ "type": "object", "required": ["address"], "additionalProperties": false,
                "properties": { "address": { "type": "string", "format": "email" }, "name": string() } })),
        Endpoint::RemoveRecipient => op("announcements", "Remove a member from the announcement list",
            "Configured and contact addresses are not members: they change in the configuration and on the \
             principal.",
            no_content("Removed.")),
        Endpoint::UnsubscribePage => op("announcements", "Unsubscribe page",
            "The page an announcement mail's unsubscribe link opens: a button that POSTs to the same URL. \
             Changes nothing (mail clients and link scanners fetch links on their own). 403 \
             `unsubscribe-signature-invalid` for a link whose signature does not match.",
            html())
            .query(&unsubscribe),
        Endpoint::Unsubscribe => op("announcements", "One-click unsubscribe (RFC 8058)",
            "Removes the address from the announcement list for good, whatever put it there. The body, as \
             mail providers send it, is the form `List-Unsubscribe=One-Click`. 403 \
             `unsubscribe-signature-invalid` for a link whose signature does not match.",
            ("200", json_ok("Unsubscribed (an HTML confirmation when the request accepts text/html).",
                json!({ "type": "object", "properties": { "unsubscribed": string() } }))))
            .query(&unsubscribe),
        Endpoint::Cluster => op("operations", "Cluster nodes and leases",
            "Live service nodes sharing this backend and each lease's owner, epoch and expiry (operators).",
            ("200", json_ok("The nodes and leases.", json!({ "type": "object", "properties": {
                "node": string(), "nodes": { "type": "array" }, "leases": { "type": "array" } } })))),
        Endpoint::RecordIncident => op("operations", "Record an incident",
            "An unplanned outage seen by the downtime monitor, idempotent by its `id`: 201 when new, 200 \
             when known (updated if it changed).",
            ("201", json_ok("Recorded.", schema("Incident"))))
            .body(schema("NewIncident")),
        Endpoint::ListIncidents => op("operations", "List incidents",
            "Unplanned outages, the latest first, with their durations and the mean and longest recovery \
             time.",
            ("200", json_ok("The incidents.", json!({ "type": "object", "properties": {
                "incidents": { "type": "array", "items": schema("Incident") },
                "rto": { "type": "object" } } })))),
    }
}

/// What each access rule asks of the caller, for the operation's description.
fn access_text(access: Access) -> &'static str {
    match access {
        Access::Probe => "Health probe: no credentials are looked at and no rate limit applies.",
        Access::Public => {
            "Public: credentials are optional (checked when present); anonymous calls are rate-limited per \
             IP."
        }
        Access::Read => "A read grant on the topic, or the topic is public.",
        Access::Publish => "A producer with a grant on the topic.",
        Access::Group => {
            "Any principal with a read grant on every topic involved; the group must be the caller's."
        }
        Access::ManageTopics | Access::ManagePrincipals | Access::ReadAudit | Access::Operate => "Operators.",
        Access::Subscriptions => {
            "Any principal; the subscription's owner or an operator for an existing one."
        }
    }
}

/// `security` of an operation: none for probes, optional for public routes, a bearer token for the rest.
fn security(access: Access) -> Value {
    match access {
        Access::Probe => json!([]),
        Access::Public => json!([{}, { "bearerAuth": [] }]),
        _ => json!([{ "bearerAuth": [] }]),
    }
}

/// The `{name}` segments of a path template.
fn path_parameters(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}')).collect()
}

fn path_parameter(name: &str) -> Value {
    let description = match name {
        "topic" => "Topic name.",
        "group" => "Consumer group id.",
        "name" => "Principal name.",
        "id" => "Subscription id.",
        "window" => "Maintenance window id.",
        "address" => "Email address of a member of the announcement list.",
        _ => "Path parameter.",
    };
    json!({ "name": name, "in": "path", "required": true, "description": description, "schema": string() })
}

/// A unique operation id from the endpoint's name (`ListPrincipals(Producer)` → `listPrincipalsProducer`).
fn operation_id(endpoint: Endpoint) -> String {
    let name: String = format!("{endpoint:?}").chars().filter(char::is_ascii_alphanumeric).collect();
    let mut chars = name.chars();
    chars.next().map(|first| first.to_ascii_lowercase().to_string() + chars.as_str()).unwrap_or_default()
}

fn path_item(spec: &RouteSpec) -> Value {
    let doc = operation(spec.endpoint);
    let mut parameters: Vec<Value> = path_parameters(spec.path).into_iter().map(path_parameter).collect();
    parameters.extend(doc.parameters);
    let mut responses = Map::new();
    responses.insert(doc.ok.0.to_owned(), doc.ok.1);
    if spec.access != Access::Probe {
        responses.insert("401".to_owned(), json!({ "$ref": "#/components/responses/Unauthenticated" }));
    }
    if !matches!(spec.access, Access::Probe | Access::Public) {
        responses.insert("403".to_owned(), json!({ "$ref": "#/components/responses/Problem" }));
    }
    responses.insert("4XX".to_owned(), json!({ "$ref": "#/components/responses/Problem" }));
    responses.insert("5XX".to_owned(), json!({ "$ref": "#/components/responses/Problem" }));
    let mut operation = json!({
        "operationId": operation_id(spec.endpoint),
        "tags": [doc.tag],
        "summary": doc.summary,
        "description": format!("{}\n\nAccess: {}", doc.description, access_text(spec.access)),
        "security": security(spec.access),
        "x-esgf-access": format!("{:?}", spec.access),
        "responses": responses,
    });
    if !parameters.is_empty() {
        operation["parameters"] = Value::Array(parameters);
    }
    if let Some(body) = doc.body {
        operation["requestBody"] =
            json!({ "required": true, "content": { "application/json": { "schema": body } } });
    }
    operation
}

/// The whole document.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    for spec in ROUTES {
        let item = paths.entry(spec.path.to_owned()).or_insert_with(|| json!({}));
        item[spec.method.as_str().to_ascii_lowercase()] = path_item(spec);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "ESGF Event Service",
            "version": env!("CARGO_PKG_VERSION"),
            "summary": "The Earth System Grid Federation's event stream.",
            "description": "A durable, ordered log of ESGF `{metadata, data}` events about datasets. \
                Producers publish over HTTP or Kafka; consumers read over HTTP (pages, long-poll, \
                server-sent events), Kafka or webhooks. Errors are RFC 9457 problem documents \
                (`application/problem+json`) with stable `urn:esgf-events:problem:<kind>` types.",
            "license": { "name": env!("CARGO_PKG_LICENSE"), "identifier": env!("CARGO_PKG_LICENSE") },
        },
        "servers": [{ "url": "/" }],
        "tags": [
            { "name": "topics", "description": "Topics and their catalogue settings." },
            { "name": "events", "description": "Publishing and reading events." },
            { "name": "groups", "description": "Consumer groups (shared with Kafka)." },
            { "name": "webhooks", "description": "Push delivery to subscribers' URLs." },
            { "name": "principals", "description": "Producers, consumers and the audit log (operators)." },
            { "name": "operations", "description": "Metrics, maintenance windows, status." },
            { "name": "announcements", "description": "Announcements (mailed to the list too)." },
            { "name": "changelog", "description": "Every API and behaviour change." },
            { "name": "pages", "description": "Pages for a web browser." },
            { "name": "health", "description": "Probes for orchestrators." },
        ],
        "paths": paths,
        "components": components(),
    })
}

fn components() -> Value {
    let nullable_string = json!({ "type": ["string", "null"] });
    let time = json!({ "type": "string", "format": "date-time" });
    let catalogue = json!({
        "validation": {
            "enum": ["none", "esgf-envelope", "esgf-strict"],
            "description": "What a published event must be."
        },
        "description": nullable_string,
        "owner": { "type": ["string", "null"], "description": "Contact address of the topic's owner." },
        "schemas": {
            "type": "array",
            "items": { "type": "string" },
            "description": "Extension schema ids checked under `esgf-strict`."
        },
        "state": { "enum": ["active", "deprecated", "read-only", "retired"] },
        "state_at": {
            "type": ["string", "null"],
            "format": "date-time",
            "description": "Make the `state` change at this time instead of now."
        },
        "sunset": { "type": ["string", "null"], "format": "date-time" },
        "successor": nullable_string,
        "announcement": {
            "type": ["string", "null"],
            "description": "URL of the announcement of a lifecycle change."
        },
        "errors_topic": { "type": "boolean", "description": "Keep a companion `<topic>.errors` topic." },
    });
    let with = |extra: Value| {
        let mut properties = catalogue.as_object().cloned().unwrap_or_default();
        if let Value::Object(extra) = extra {
            properties.extend(extra);
        }
        Value::Object(properties)
    };
    let retention = json!({
        "type": "string",
        "description": "`90d`, `12h`, `1d 12h`, ... or `forever`.",
        "examples": ["90d"]
    });
    let retention_bytes =
        json!({ "type": ["integer", "null"], "minimum": 0, "description": "`null`: no size limit." });
    json!({
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description":
                    "An API token (`esgfev_...`) issued by the operators, or a JWT of a configured issuer."
            }
        },
        "responses": {
            "Problem": {
                "description": "An RFC 9457 problem document.",
                "headers": {
                    "Retry-After": {
                        "description": "Seconds until a retry may succeed (maintenance, rate limits).",
                        "schema": { "type": "integer" }
                    }
                },
                "content": { "application/problem+json": { "schema": schema("Problem") } }
            },
            "Unauthenticated": {
                "description": "Credentials are missing where required, or were refused.",
                "headers": {
                    "WWW-Authenticate": { "description": "RFC 6750 bearer challenge.", "schema": string() }
                },
                "content": { "application/problem+json": { "schema": schema("Problem") } }
            }
        },
        "schemas": {
            "Problem": {
                "type": "object",
                "description": "RFC 9457 problem details.",
                "required": ["type", "title", "status"],
                "properties": {
                    "type": {
                        "type": "string",
                        "pattern": "^urn:esgf-events:problem:[a-z-]+$",
                        "examples": ["urn:esgf-events:problem:topic-not-found"]
                    },
                    "title": string(),
                    "status": { "type": "integer", "minimum": 400, "maximum": 599 },
                    "detail": string(),
                    "instance": string()
                },
                "additionalProperties": true
            },
            "Event": {
                "type": "object",
                "description":
                    "An ESGF event, `{metadata, data}`, as strict as its topic's `validation` requires.",
                "properties": { "metadata": { "type": "object" }, "data": { "type": "object" } }
            },
            "PublishRequest": {
                "description": "One event, or a non-empty batch of events.",
                "oneOf": [schema("Event"), { "type": "array", "items": schema("Event"), "minItems": 1 }]
            },
            "PublishResult": {
                "type": "object",
                "required": ["results"],
                "properties": {
                    "results": { "type": "array", "items": {
                        "type": "object",
                        "required": ["partition", "offset"],
                        "properties": {
                            "partition": integer(),
                            "offset": integer(),
                            "duplicate": { "type": "boolean" }
                        }
                    } }
                }
            },
            "CreateTopic": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": false,
                "properties": with(json!({
                    "name": { "type": "string", "examples": ["esgf2.publications"] },
                    "partitions": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": crate::topics::MAX_PARTITIONS
                    },
                    "retention": retention,
                    "retention_bytes": retention_bytes,
                }))
            },
            "UpdateTopic": {
                "type": "object",
                "additionalProperties": false,
                "properties": with(json!({
                    "public": { "type": "boolean", "description": "Readable without credentials." },
                    "retention": retention,
                    "retention_bytes": retention_bytes,
                }))
            },
            "Topic": {
                "type": "object",
                "required": ["name", "partitions", "retention", "created", "public", "offsets"],
                "properties": with(json!({
                    "name": string(),
                    "partitions": integer(),
                    "retention": string(),
                    "retention_bytes": { "type": ["integer", "null"] },
                    "created": time,
                    "public": { "type": "boolean" },
                    "offsets": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "partition": integer(),
                                "earliest": integer(),
                                "latest": integer()
                            }
                        }
                    },
                    "errors_topic": string(),
                }))
            },
            "TopicList": {
                "type": "object",
                "properties": { "topics": { "type": "array", "items": schema("Topic") } }
            },
            "StoredEvent": {
                "type": "object",
                "required": ["partition", "offset", "timestamp"],
                "properties": {
                    "partition": integer(),
                    "offset": integer(),
                    "timestamp": time,
                    "key": nullable_string,
                    "key_base64": string(),
                    "value": { "description": "The event JSON exactly as published." },
                    "value_base64": string(),
                    "headers": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": { "name": string(), "value": string(), "value_base64": string() }
                        }
                    }
                }
            },
            "EventPage": {
                "type": "object",
                "required": ["events", "next_offset"],
                "properties": {
                    "events": { "type": "array", "items": schema("StoredEvent") },
                    "next_offset": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Where the next read continues."
                    }
                }
            },
            "CommitOffsets": {
                "description": "One offset inline, or a list.",
                "oneOf": [
                    schema("CommitEntry"),
                    {
                        "type": "object",
                        "required": ["offsets"],
                        "additionalProperties": false,
                        "properties": {
                            "offsets": { "type": "array", "minItems": 1, "items": schema("CommitEntry") }
                        }
                    }
                ]
            },
            "CommitEntry": {
                "type": "object",
                "required": ["topic", "partition", "offset"],
                "additionalProperties": false,
                "properties": {
                    "topic": string(),
                    "partition": integer(),
                    "offset": integer(),
                    "metadata": string()
                }
            },
            "Group": {
                "type": "object",
                "properties": {
                    "group": string(),
                    "lag": integer(),
                    "offsets": { "type": "array", "items": { "type": "object", "properties": {
                        "topic": string(), "partition": integer(), "offset": integer(),
                        "latest": { "type": ["integer", "null"] }, "lag": { "type": ["integer", "null"] },
                        "committed": time, "metadata": string()
                    } } }
                }
            },
            "RateSpec": {
                "type": "object",
                "required": ["events_per_second", "burst"],
                "properties": {
                    "events_per_second": integer(),
                    "burst": integer(),
                    "bytes_per_second": integer(),
                    "burst_bytes": integer()
                }
            },
            "OidcIdentity": {
                "type": "object", "required": ["issuer", "subject"],
                "properties": { "issuer": string(), "subject": string() }
            },
            "Registration": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": false,
                "properties": {
                    "name": string(),
                    "topics": { "type": "array", "items": string() },
                    "rate": schema("RateSpec"),
                    "contact": { "type": "string", "format": "email" },
                    "oidc": { "type": "array", "items": schema("OidcIdentity") }
                }
            },
            "PrincipalUpdate": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "topics": { "type": "array", "items": string() },
                    "rate": { "oneOf": [schema("RateSpec"), { "type": "null" }] },
                    "contact": nullable_string,
                    "oidc": { "type": "array", "items": schema("OidcIdentity") }
                }
            },
            "Principal": {
                "type": "object",
                "properties": {
                    "name": string(), "role": string(), "topics": { "type": "array", "items": string() },
                    "contact": nullable_string,
                    "token": {
                        "type": "string",
                        "description": "Only when registered or rotated: shown this once."
                    }
                }
            },
            "NewSubscription": {
                "type": "object",
                "required": ["topic", "url"],
                "additionalProperties": false,
                "properties": {
                    "topic": string(),
                    "url": { "type": "string", "format": "uri" },
                    "filter": {
                        "type": "array",
                        "items": string(),
                        "description": "`path:value` conditions, all of which must hold."
                    },
                    "key_prefix": string(),
                    "from": {
                        "type": "string",
                        "description": "`beginning`, `latest` (default) or an RFC 3339 time."
                    },
                    "format": { "enum": ["raw", "cloudevents"] }
                }
            },
            "Subscription": {
                "type": "object",
                "properties": {
                    "id": string(), "owner": string(), "topic": string(), "url": string(),
                    "state": string(), "lag": integer(), "dead_letters": integer(),
                    "secret": {
                        "type": "string",
                        "description": "Only when created: the signing secret, shown this once."
                    }
                }
            },
            "NewMaintenanceWindow": {
                "type": "object",
                "required": ["starts_at", "ends_at", "mode", "message"],
                "additionalProperties": false,
                "properties": {
                    "starts_at": time,
                    "ends_at": time,
                    "mode": {
                        "enum": ["read-only", "full"],
                        "description": "`read-only` keeps reads and streams working."
                    },
                    "message": {
                        "type": "string",
                        "minLength": 1,
                        "description": "What clients are told during the window."
                    },
                    "announcement": {
                        "type": "string",
                        "description": "Id of the announcement of this window."
                    },
                    "force": {
                        "type": "boolean",
                        "description": "Schedule without announcement or notice (emergencies)."
                    }
                }
            },
            "MaintenanceWindowPatch": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "starts_at": time, "ends_at": time, "mode": { "enum": ["read-only", "full"] },
                    "message": {
                        "type": "string",
                        "minLength": 1
                    }, "announcement": string(), "force": { "type": "boolean" }
                }
            },
            "MaintenanceWindow": {
                "type": "object",
                "properties": {
                    "id": string(), "starts_at": time, "ends_at": time,
                    "mode": { "enum": ["read-only", "full"] }, "message": string(),
                    "announcement": nullable_string, "forced": { "type": "boolean" }, "created": time
                }
            },
            "AnnouncementKind": {
                "enum": [
                    "planned-downtime",
                    "unplanned-downtime",
                    "restored",
                    "api-change",
                    "topic-change",
                    "general"
                ]
            },
            "NewAnnouncement": {
                "type": "object",
                "required": ["kind", "title"],
                "additionalProperties": false,
                "properties": {
                    "kind": schema("AnnouncementKind"),
                    "title": { "type": "string", "minLength": 1 },
                    "body": string(),
                    "topic": { "type": "string", "description": "The topic the announcement is about." },
                    "mailed_by": {
                        "type": "string",
                        "description": "Already mailed to the list by this sender (the downtime monitor): \
                            not mailed again."
                    }
                }
            },
            "NewIncident": {
                "type": "object",
                "required": ["id", "started_at", "detected_by"],
                "additionalProperties": false,
                "properties": {
                    "id": {
                        "type": "string",
                        "pattern": "^[A-Za-z0-9._:-]{1,100}$",
                        "description":
                            "Chosen by the reporter; the same id again updates or repeats the incident."
                    },
                    "started_at": time, "ended_at": { "type": ["string", "null"], "format": "date-time" },
                    "detected_by": string(), "detail": string()
                }
            },
            "Incident": {
                "type": "object",
                "properties": {
                    "id": string(), "started_at": time,
                    "ended_at": { "type": ["string", "null"], "format": "date-time" },
                    "duration_seconds": { "type": ["integer", "null"] },
                    "detected_by": string(), "detail": string(), "recorded": time
                }
            },
            "Announcement": {
                "type": "object",
                "properties": {
                    "id": string(), "kind": schema("AnnouncementKind"), "title": string(), "body": string(),
                    "published": time, "window": string(), "topic": string()
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_appears_with_its_method_and_path_parameters() {
        let doc = document();
        for spec in ROUTES {
            let method = spec.method.as_str().to_ascii_lowercase();
            let operation = &doc["paths"][spec.path][&method];
            assert!(operation.is_object(), "{} {} missing", spec.method, spec.path);
            let declared: Vec<&str> = operation["parameters"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert_eq!(declared, path_parameters(spec.path), "{} {}", spec.method, spec.path);
            for name in declared {
                assert_ne!(path_parameter(name)["description"], "Path parameter.", "describe {{{name}}}");
            }
        }
        let documented: usize = doc["paths"]
            .as_object()
            .map_or(0, |p| p.values().map(|i| i.as_object().map_or(0, Map::len)).sum());
        assert_eq!(documented, ROUTES.len(), "operations without a route");
    }

    #[test]
    fn only_probes_and_public_routes_go_without_a_token() {
        let doc = document();
        for spec in ROUTES {
            let security = &doc["paths"][spec.path][spec.method.as_str().to_ascii_lowercase()]["security"];
            let anonymous = security.as_array().is_some_and(|s| s.is_empty() || s.contains(&json!({})));
            assert_eq!(
                anonymous,
                matches!(spec.access, Access::Probe | Access::Public),
                "{} {}",
                spec.method,
                spec.path
            );
        }
    }

    #[test]
    fn operation_ids_are_unique_and_references_resolve() {
        let doc = document();
        let mut ids: Vec<String> = ROUTES.iter().map(|s| operation_id(s.endpoint)).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), ROUTES.len());
        let text = doc.to_string();
        for reference in text.split("\"$ref\":\"#/components/").skip(1) {
            let target = reference.split('"').next().unwrap_or_default();
            let (kind, name) = target.split_once('/').unwrap_or_default();
            assert!(doc["components"][kind][name].is_object(), "dangling $ref {target}");
        }
    }

    #[test]
    fn path_parameters_are_read_from_the_template() {
        assert_eq!(path_parameters("/v1/topics/{topic}/events"), ["topic"]);
        assert!(path_parameters("/v1/topics").is_empty());
    }
}
