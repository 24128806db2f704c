//! Operations of the ESGF Event Service: Prometheus metrics ([`metrics`]), planned maintenance windows
//! ([`maintenance`]), announcements ([`announcements`]) and their mailing list ([`mail`], [`recipients`]), the
//! changelog ([`changelog`]: CHANGELOG.md compiled in plus the runtime entries of
//! `esgf_events_meta::changelog`) and their HTML pages and Atom feeds ([`pages`]).
//! The status page's records ([`status`]: recorded availability, [`incidents`] pushed by the monitor, publish
//! [`rates`], consumer lag) and its [`svg`] charts.
//! Transport-free: the HTTP crate serves these, the Kafka crate consults the shared
//! [`maintenance::MaintenanceState`].

pub mod announcements;
pub mod availability;
pub mod changelog;
pub mod incidents;
pub mod mail;
pub mod maintenance;
pub mod metrics;
pub mod pages;
pub mod rates;
pub mod recipients;
pub mod status;
pub mod svg;
pub mod topic_announcer;

pub use maintenance::{
    Maintenance, MaintenanceError, MaintenanceMode, MaintenanceState, NewWindow, Window, WindowPatch,
};

pub use metrics_exporter_prometheus::PrometheusHandle;

/// What the operations endpoints serve from; each part optional so a server can run without it.
#[derive(Clone, Default)]
pub struct Ops {
    /// Renders `GET /metrics`; `None`: the endpoint answers 501.
    pub metrics: Option<PrometheusHandle>,
    /// Maintenance windows; `None`: the endpoints answer 501 and nothing is ever refused for maintenance.
    pub maintenance: Option<std::sync::Arc<Maintenance>>,
    /// Announcements; `None`: their endpoints answer 501.
    pub announcements: Option<std::sync::Arc<announcements::Announcements>>,
    /// The runtime changelog's store; `None`: the changelog shows the compiled-in entries only.
    pub changelog: Option<std::sync::Arc<dyn esgf_events_meta::MetaStore>>,
    /// The service's public base URL (`https://events.example.org`), for the absolute links Atom feeds need;
    /// `None`: taken from each request's `Host` header.
    pub public_url: Option<String>,
    /// The announcement mailer, for its delivery records; `None`: no mail configured.
    pub mail: Option<std::sync::Arc<mail::Mailer>>,
    /// Availability, incidents, publish rates and consumer lag for the status page; `None`: the page shows
    /// the maintenance windows and topic sizes only, and the incident endpoints answer 501.
    pub status: Option<std::sync::Arc<status::StatusRecorder>>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("metrics", &self.metrics.is_some())
            .field("maintenance", &self.maintenance.is_some())
            .field("announcements", &self.announcements.is_some())
            .field("changelog", &self.changelog.is_some())
            .field("public_url", &self.public_url)
            .field("mail", &self.mail.is_some())
            .field("status", &self.status.is_some())
            .finish()
    }
}
