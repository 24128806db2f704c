//! The route table: every route of the API with the access it requires, in one place.
//!
//! The router is built from [`ROUTES`] and each route is guarded by the access its row names (see `access.rs`),
//! so a route cannot exist without a declared access rule, and the access-control tests can walk the table.

use axum::Router;
use axum::http::Method;
use axum::middleware;
use axum::routing::{MethodFilter, MethodRouter, on};
use esgf_events_auth::Role;

use crate::{
    SharedState, access, admin, cluster, events, groups, health, lifecycle, openapi, ops, recipients, status,
    stream, subscriptions, topics,
};

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health probes: credentials are not looked at and no rate limit applies, so an orchestrator always gets
    /// through.
    Probe,
    /// Public discovery: anyone. Credentials are optional but checked when present; anonymous calls count
    /// against the per-IP rate limit.
    Public,
    /// Reading events of the `{topic}` in the path: a grant on it, or the topic is public.
    Read,
    /// Publishing to the `{topic}` in the path: a producer grant on it.
    Publish,
    /// The consumer group `{group}` in the path: any principal (never anonymous); the handler checks a read
    /// grant on every topic involved and that the group is the caller's (`Auth::claim_group`).
    Group,
    /// Creating topics and changing their settings: operators.
    ManageTopics,
    /// Registering, changing, rotating and revoking producers and consumers: operators.
    ManagePrincipals,
    /// Reading the audit log: operators.
    ReadAudit,
    /// Webhook subscriptions: any principal (never anonymous); the handler checks a read grant on the topic
    /// when creating, and that the caller owns the subscription (or is an operator) for everything else.
    Subscriptions,
    /// Operating the service (maintenance windows): operators. Never refused by a maintenance window.
    Operate,
}

/// One route: method, path template (axum syntax, `{topic}`, `{name}`) and the access it requires.
#[derive(Debug)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub(crate) endpoint: Endpoint,
}

/// Which handler serves a route.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoint {
    Healthz,
    Readyz,
    ListTopics,
    TopicsPage,
    CreateTopic,
    DescribeTopic,
    UpdateTopic,
    Publish,
    Read,
    Stream,
    CommitOffsets,
    DescribeGroup,
    ListPrincipals(Role),
    RegisterPrincipal(Role),
    GetPrincipal(Role),
    UpdatePrincipal(Role),
    RotatePrincipal(Role),
    DeletePrincipal(Role),
    Audit,
    CreateSubscription,
    ListSubscriptions,
    GetSubscription,
    DeleteSubscription,
    PauseSubscription,
    ResumeSubscription,
    DeadLetters,
    Redrive,
    Metrics,
    ListMaintenance,
    ScheduleMaintenance,
    UpdateMaintenance,
    CancelMaintenance,
    Announce,
    ListAnnouncements,
    AnnouncementsPage,
    AnnouncementsFeed,
    Changelog,
    ChangelogPage,
    ChangelogFeed,
    MailDeliveries,
    ListRecipients,
    AddRecipient,
    RemoveRecipient,
    UnsubscribePage,
    Unsubscribe,
    Status,
    StatusPage,
    RecordIncident,
    ListIncidents,
    Home,
    OpenApi,
    Cluster,
}

const fn route(method: Method, path: &'static str, access: Access, endpoint: Endpoint) -> RouteSpec {
    RouteSpec { method, path, access, endpoint }
}

/// Every route of the API.
#[rustfmt::skip]
pub const ROUTES: &[RouteSpec] = &[
    route(GET,    "/healthz",                    Access::Probe,            Endpoint::Healthz),
    route(GET,    "/readyz",                     Access::Probe,            Endpoint::Readyz),
    route(GET,    "/v1/topics",                  Access::Public,           Endpoint::ListTopics),
    route(GET,    "/topics",                     Access::Public,           Endpoint::TopicsPage),
    route(POST,   "/v1/topics",                  Access::ManageTopics,     Endpoint::CreateTopic),
    route(GET,    "/v1/topics/{topic}",          Access::Public,           Endpoint::DescribeTopic),
    route(PATCH,  "/v1/topics/{topic}",          Access::ManageTopics,     Endpoint::UpdateTopic),
    route(POST,   "/v1/topics/{topic}/events",   Access::Publish,          Endpoint::Publish),
    route(GET,    "/v1/topics/{topic}/events",   Access::Read,             Endpoint::Read),
    route(GET,    "/v1/topics/{topic}/stream",   Access::Read,             Endpoint::Stream),
    route(PUT,    "/v1/groups/{group}/offsets",  Access::Group,            Endpoint::CommitOffsets),
    route(GET,    "/v1/groups/{group}",          Access::Group,            Endpoint::DescribeGroup),
    route(POST,   "/v1/producers",               Access::ManagePrincipals, Endpoint::RegisterPrincipal(PRODUCER)),
    route(GET,    "/v1/producers",               Access::ManagePrincipals, Endpoint::ListPrincipals(PRODUCER)),
    route(GET,    "/v1/producers/{name}",        Access::ManagePrincipals, Endpoint::GetPrincipal(PRODUCER)),
    route(PATCH,  "/v1/producers/{name}",        Access::ManagePrincipals, Endpoint::UpdatePrincipal(PRODUCER)),
    route(POST,   "/v1/producers/{name}/rotate", Access::ManagePrincipals, Endpoint::RotatePrincipal(PRODUCER)),
    route(DELETE, "/v1/producers/{name}",        Access::ManagePrincipals, Endpoint::DeletePrincipal(PRODUCER)),
    route(POST,   "/v1/consumers",               Access::ManagePrincipals, Endpoint::RegisterPrincipal(CONSUMER)),
    route(GET,    "/v1/consumers",               Access::ManagePrincipals, Endpoint::ListPrincipals(CONSUMER)),
    route(GET,    "/v1/consumers/{name}",        Access::ManagePrincipals, Endpoint::GetPrincipal(CONSUMER)),
    route(PATCH,  "/v1/consumers/{name}",        Access::ManagePrincipals, Endpoint::UpdatePrincipal(CONSUMER)),
    route(POST,   "/v1/consumers/{name}/rotate", Access::ManagePrincipals, Endpoint::RotatePrincipal(CONSUMER)),
    route(DELETE, "/v1/consumers/{name}",        Access::ManagePrincipals, Endpoint::DeletePrincipal(CONSUMER)),
    route(GET,    "/v1/audit",                   Access::ReadAudit,        Endpoint::Audit),
    route(POST,   "/v1/subscriptions",           Access::Subscriptions,    Endpoint::CreateSubscription),
    route(GET,    "/v1/subscriptions",           Access::Subscriptions,    Endpoint::ListSubscriptions),
    route(GET,    "/v1/subscriptions/{id}",      Access::Subscriptions,    Endpoint::GetSubscription),
    route(DELETE, "/v1/subscriptions/{id}",      Access::Subscriptions,    Endpoint::DeleteSubscription),
    route(POST,   "/v1/subscriptions/{id}/pause", Access::Subscriptions,   Endpoint::PauseSubscription),
    route(POST,   "/v1/subscriptions/{id}/resume", Access::Subscriptions,  Endpoint::ResumeSubscription),
    route(GET,    "/v1/subscriptions/{id}/dead-letters", Access::Subscriptions, Endpoint::DeadLetters),
    route(POST,   "/v1/subscriptions/{id}/redrive", Access::Subscriptions, Endpoint::Redrive),
    route(GET,    "/metrics",                    Access::Public,           Endpoint::Metrics),
    route(GET,    "/v1/maintenance",             Access::Public,           Endpoint::ListMaintenance),
    route(POST,   "/v1/maintenance",             Access::Operate,          Endpoint::ScheduleMaintenance),
    route(PATCH,  "/v1/maintenance/{window}",    Access::Operate,          Endpoint::UpdateMaintenance),
    route(DELETE, "/v1/maintenance/{window}",    Access::Operate,          Endpoint::CancelMaintenance),
    route(POST,   "/v1/announcements",           Access::Operate,          Endpoint::Announce),
    route(GET,    "/v1/announcements",           Access::Public,           Endpoint::ListAnnouncements),
    route(GET,    "/announcements",              Access::Public,           Endpoint::AnnouncementsPage),
    route(GET,    "/announcements.atom",         Access::Public,           Endpoint::AnnouncementsFeed),
    route(GET,    "/v1/changelog",               Access::Public,           Endpoint::Changelog),
    route(GET,    "/changelog",                  Access::Public,           Endpoint::ChangelogPage),
    route(GET,    "/changelog.atom",             Access::Public,           Endpoint::ChangelogFeed),
    route(GET,    "/v1/announcements/deliveries", Access::Operate,         Endpoint::MailDeliveries),
    route(GET,    "/v1/announcements/recipients", Access::Operate,         Endpoint::ListRecipients),
    route(POST,   "/v1/announcements/recipients", Access::Operate,         Endpoint::AddRecipient),
    route(DELETE, "/v1/announcements/recipients/{address}", Access::Operate, Endpoint::RemoveRecipient),
    route(GET,    "/v1/announcements/unsubscribe", Access::Public,         Endpoint::UnsubscribePage),
    route(POST,   "/v1/announcements/unsubscribe", Access::Public,         Endpoint::Unsubscribe),
    route(GET,    "/v1/status",                  Access::Public,           Endpoint::Status),
    route(GET,    "/status",                     Access::Public,           Endpoint::StatusPage),
    route(POST,   "/v1/incidents",               Access::Operate,          Endpoint::RecordIncident),
    route(GET,    "/v1/incidents",               Access::Public,           Endpoint::ListIncidents),
    route(GET,    "/",                           Access::Public,           Endpoint::Home),
    route(GET,    "/openapi.json",               Access::Public,           Endpoint::OpenApi),
    route(GET,    "/v1/cluster",                 Access::Operate,          Endpoint::Cluster),
];

// Short names for the table above.
const GET: Method = Method::GET;
const POST: Method = Method::POST;
const PUT: Method = Method::PUT;
const PATCH: Method = Method::PATCH;
const DELETE: Method = Method::DELETE;
const PRODUCER: Role = Role::Producer;
const CONSUMER: Role = Role::Consumer;

impl Endpoint {
    fn handler(self, filter: MethodFilter) -> MethodRouter<SharedState> {
        match self {
            Endpoint::Healthz => on(filter, health::healthz),
            Endpoint::Readyz => on(filter, health::readyz),
            Endpoint::ListTopics => on(filter, topics::list),
            Endpoint::TopicsPage => on(filter, lifecycle::page),
            Endpoint::CreateTopic => on(filter, topics::create),
            Endpoint::DescribeTopic => on(filter, topics::describe),
            Endpoint::UpdateTopic => on(filter, topics::update),
            Endpoint::Publish => on(filter, events::publish),
            Endpoint::Read => on(filter, events::read),
            Endpoint::Stream => on(filter, stream::stream),
            Endpoint::CommitOffsets => on(filter, groups::commit),
            Endpoint::DescribeGroup => on(filter, groups::describe),
            Endpoint::ListPrincipals(role) => on(filter, move |state, query| admin::list(role, state, query)),
            Endpoint::RegisterPrincipal(role) => on(filter, move |state, caller, query, headers, body| {
                admin::register(role, state, caller, query, headers, body)
            }),
            Endpoint::GetPrincipal(role) => {
                on(filter, move |state, path, query| admin::get(role, state, path, query))
            }
            Endpoint::UpdatePrincipal(role) => {
                on(filter, move |state, caller, path, query, headers, body| {
                    admin::update(role, state, caller, path, query, headers, body)
                })
            }
            Endpoint::RotatePrincipal(role) => {
                on(filter, move |state, caller, path, query| admin::rotate(role, state, caller, path, query))
            }
            Endpoint::DeletePrincipal(role) => {
                on(filter, move |state, caller, path, query| admin::delete(role, state, caller, path, query))
            }
            Endpoint::Audit => on(filter, admin::audit),
            Endpoint::CreateSubscription => on(filter, subscriptions::create),
            Endpoint::ListSubscriptions => on(filter, subscriptions::list),
            Endpoint::GetSubscription => on(filter, subscriptions::get),
            Endpoint::DeleteSubscription => on(filter, subscriptions::delete),
            Endpoint::PauseSubscription => on(filter, subscriptions::pause),
            Endpoint::ResumeSubscription => on(filter, subscriptions::resume),
            Endpoint::DeadLetters => on(filter, subscriptions::dead_letters),
            Endpoint::Redrive => on(filter, subscriptions::redrive),
            Endpoint::Metrics => on(filter, ops::metrics),
            Endpoint::ListMaintenance => on(filter, ops::list),
            Endpoint::ScheduleMaintenance => on(filter, ops::schedule),
            Endpoint::UpdateMaintenance => on(filter, ops::update),
            Endpoint::CancelMaintenance => on(filter, ops::cancel),
            Endpoint::Announce => on(filter, ops::announce),
            Endpoint::ListAnnouncements => on(filter, ops::list_announcements),
            Endpoint::AnnouncementsPage => on(filter, ops::announcements_page),
            Endpoint::AnnouncementsFeed => on(filter, ops::announcements_feed),
            Endpoint::Changelog => on(filter, ops::changelog),
            Endpoint::ChangelogPage => on(filter, ops::changelog_page),
            Endpoint::ChangelogFeed => on(filter, ops::changelog_feed),
            Endpoint::MailDeliveries => on(filter, ops::deliveries),
            Endpoint::ListRecipients => on(filter, recipients::list),
            Endpoint::AddRecipient => on(filter, recipients::add),
            Endpoint::RemoveRecipient => on(filter, recipients::remove),
            Endpoint::UnsubscribePage => on(filter, recipients::unsubscribe_page),
            Endpoint::Unsubscribe => on(filter, recipients::unsubscribe),
            Endpoint::Status => on(filter, ops::status),
            Endpoint::StatusPage => on(filter, ops::status_page),
            Endpoint::RecordIncident => on(filter, status::record_incident),
            Endpoint::ListIncidents => on(filter, status::list_incidents),
            Endpoint::Home => on(filter, ops::home_page),
            Endpoint::OpenApi => on(filter, openapi::serve),
            Endpoint::Cluster => on(filter, cluster::show),
        }
    }
}

/// The router of [`ROUTES`], each route behind the access guard of its row. Routes sharing a path merge into
/// one method router (axum does that on `route`), so methods not in the table answer 405.
pub(crate) fn build_routes(state: &SharedState) -> Router<SharedState> {
    let mut router = Router::new();
    for spec in ROUTES {
        // The table uses only standard methods, which all have a filter (checked by a unit test).
        let Ok(filter) = MethodFilter::try_from(spec.method.clone()) else {
            tracing::error!(method = %spec.method, path = spec.path, "route with a method axum cannot route");
            continue;
        };
        // `route_layer`: the guard runs for this method only, so a wrong method is still a plain 405.
        let handler = spec
            .endpoint
            .handler(filter)
            .route_layer(middleware::from_fn_with_state((state.clone(), spec), access::guard))
            // Outside the access guard: a window's answer is public, and costs no credential check.
            .route_layer(middleware::from_fn_with_state((state.clone(), spec), ops::maintenance_guard));
        router = router.route(spec.path, handler);
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_method_has_a_filter() {
        for spec in ROUTES {
            assert!(MethodFilter::try_from(spec.method.clone()).is_ok(), "{} {}", spec.method, spec.path);
        }
    }

    #[test]
    fn no_route_is_listed_twice() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[..i] {
                assert!(a.method != b.method || a.path != b.path, "{} {} twice", a.method, a.path);
            }
        }
    }

    #[test]
    fn routes_naming_a_topic_guard_it_by_that_topic() {
        for spec in ROUTES {
            if matches!(spec.access, Access::Read | Access::Publish) {
                assert!(spec.path.contains("{topic}"), "{} {}", spec.method, spec.path);
            }
        }
    }
}
