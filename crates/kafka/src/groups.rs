//! The classic consumer-group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) and committed offsets
//! (OffsetCommit, OffsetFetch).
//!
//! Group membership is in memory, like Kafka's (clients rejoin after a restart); committed offsets are durable
//! in [`GroupOffsets`] before OffsetCommit answers. States follow Kafka's coordinator: `Empty` →
//! `PreparingRebalance` (waiting for every member to rejoin, at most the longest rebalance timeout) →
//! `CompletingRebalance` (waiting for the leader's assignment) → `Stable`. A member joining or leaving, or one
//! whose session times out, starts a new rebalance; the generation id grows with every completed one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use esgf_events_auth::Action;
use esgf_events_meta::offsets::{GroupOffsets, OffsetCommit};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::broker::{Broker, Session};
use crate::errors::{self, NONE, code};

/// Bounds on what clients may ask for (Kafka's group.min/max.session.timeout.ms, loosened at the low end).
const MIN_SESSION_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Longest a rebalance waits for members to rejoin, whatever they ask for.
const MAX_REBALANCE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Members per group and groups per node.
const MAX_MEMBERS: usize = 1_000;
const MAX_GROUPS: usize = 100_000;
/// Kafka's offset.metadata.max.bytes.
const MAX_OFFSET_METADATA: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

/// The outcome of a JoinGroup, independent of the response version.
#[derive(Debug, Clone, Default)]
struct JoinResult {
    error: i16,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: String,
    member_id: String,
    /// Only for the leader: every member's id, instance id and metadata for the chosen protocol.
    members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    fn error(error: i16, member_id: &str) -> Self {
        JoinResult { error, generation: -1, member_id: member_id.to_owned(), ..JoinResult::default() }
    }
}

#[derive(Debug, Clone, Default)]
struct SyncResult {
    error: i16,
    assignment: Bytes,
    protocol_type: Option<String>,
    protocol: Option<String>,
}

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
    /// Rejoined during the current rebalance.
    joined: bool,
    last_seen: Instant,
    /// Order of arrival: the earliest member becomes leader when there is none.
    seq: u64,
}

#[derive(Debug)]
struct Group {
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    rebalance_deadline: Option<Instant>,
    next_seq: u64,
    /// The principal whose consumers use the group (authentication on only).
    pub(crate) owner: Option<String>,
}

impl Group {
    fn new() -> Self {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            rebalance_deadline: None,
            next_seq: 0,
            owner: None,
        }
    }

    fn prepare_rebalance(&mut self, now: Instant, why: &str, group_id: &str) {
        if self.state == State::PreparingRebalance {
            return;
        }
        info!(group = group_id, generation = self.generation, reason = why, "rebalance started");
        self.state = State::PreparingRebalance;
        let longest = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default()
            .min(MAX_REBALANCE_TIMEOUT);
        self.rebalance_deadline = Some(now + longest);
        for member in self.members.values_mut() {
            member.joined = false;
            if let Some(waiter) = member.sync_waiter.take() {
                let _ = waiter.send(SyncResult {
                    error: code(ResponseError::RebalanceInProgress),
                    ..SyncResult::default()
                });
            }
        }
    }

    fn all_joined(&self) -> bool {
        self.members.values().all(|m| m.joined)
    }

    /// Ends the join phase: members that did not rejoin are dropped, the rest get the new generation.
    fn complete_join(&mut self, now: Instant, group_id: &str) {
        let dropped: Vec<String> =
            self.members.iter().filter(|(_, m)| !m.joined).map(|(id, _)| id.clone()).collect();
        for id in dropped {
            info!(group = group_id, member = %id, "member did not rejoin in time: removed");
            self.members.remove(&id);
        }
        self.generation = self.generation.wrapping_add(1).max(1);
        self.rebalance_deadline = None;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            info!(group = group_id, generation = self.generation, "group is empty");
            return;
        }
        let leader = match &self.leader {
            Some(leader) if self.members.contains_key(leader) => leader.clone(),
            _ => self.members.iter().min_by_key(|(_, m)| m.seq).map(|(id, _)| id.clone()).unwrap_or_default(),
        };
        // The first protocol, in the leader's order of preference, that every member supports.
        let protocol = self.members[&leader]
            .protocols
            .iter()
            .map(|(name, _)| name.clone())
            .find(|name| self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == name)));
        self.leader = Some(leader.clone());
        self.protocol = protocol.clone();
        self.state = State::CompletingRebalance;
        info!(
            group = group_id,
            generation = self.generation,
            members = self.members.len(),
            leader = %leader,
            protocol = protocol.as_deref().unwrap_or(""),
            "rebalance: join phase complete"
        );
        let everyone: Vec<(String, Option<String>, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| {
                let metadata = m
                    .protocols
                    .iter()
                    .find(|(n, _)| Some(n) == protocol.as_ref())
                    .map(|(_, md)| md.clone())
                    .unwrap_or_default();
                (id.clone(), m.instance_id.clone(), metadata)
            })
            .collect();
        for (id, member) in &mut self.members {
            member.last_seen = now;
            member.assignment = Bytes::new();
            if let Some(waiter) = member.join_waiter.take() {
                let _ = waiter.send(JoinResult {
                    error: NONE,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader { everyone.clone() } else { Vec::new() },
                });
            }
        }
    }

    /// Removes a member and rebalances the rest (or empties the group).
    fn remove_member(&mut self, id: &str, now: Instant, why: &str, group_id: &str) {
        let Some(mut member) = self.members.remove(id) else { return };
        if let Some(waiter) = member.join_waiter.take() {
            let _ = waiter.send(JoinResult::error(code(ResponseError::UnknownMemberId), id));
        }
        if let Some(waiter) = member.sync_waiter.take() {
            let _ = waiter
                .send(SyncResult { error: code(ResponseError::UnknownMemberId), ..SyncResult::default() });
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        match self.state {
            State::Empty => {}
            State::PreparingRebalance => {
                if self.all_joined() {
                    self.complete_join(now, group_id);
                }
            }
            State::CompletingRebalance | State::Stable => {
                if self.members.is_empty() {
                    self.generation = self.generation.wrapping_add(1).max(1);
                    self.state = State::Empty;
                    self.protocol = None;
                    info!(group = group_id, generation = self.generation, "last member left: group is empty");
                } else {
                    self.prepare_rebalance(now, why, group_id);
                    if self.all_joined() {
                        self.complete_join(now, group_id);
                    }
                }
            }
        }
    }
}

/// Every group of this node.
pub(crate) struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    pub(crate) offsets: GroupOffsets,
}

impl Coordinator {
    pub(crate) fn new(offsets: GroupOffsets) -> Self {
        Coordinator { groups: Mutex::new(HashMap::new()), offsets }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drops members whose session expired and ends rebalances whose time is up.
    pub(crate) fn expire(&self, now: Instant) {
        let mut groups = self.lock();
        for (group_id, group) in groups.iter_mut() {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    m.join_waiter.is_none() && now.duration_since(m.last_seen) > m.session_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                info!(group = %group_id, member = %id, "member session timed out: removed");
                group.remove_member(&id, now, "member session timed out", group_id);
            }
            if group.state == State::PreparingRebalance && group.rebalance_deadline.is_some_and(|d| now >= d)
            {
                group.complete_join(now, group_id);
            }
        }
        // Membership of an empty group is gone; its committed offsets stay in the store.
        groups.retain(|_, g| g.state != State::Empty || !g.members.is_empty());
    }

    /// Forgets every group, answering members waiting in a join or sync with `error`; returns how many
    /// groups there were. For a node that stopped coordinating: its members rejoin at the new coordinator.
    pub(crate) fn drop_all(&self, error: i16) -> usize {
        let dropped = std::mem::take(&mut *self.lock());
        let count = dropped.len();
        for (_, group) in dropped {
            for (id, member) in group.members {
                if let Some(waiter) = member.join_waiter {
                    let _ = waiter.send(JoinResult::error(error, &id));
                }
                if let Some(waiter) = member.sync_waiter {
                    let _ = waiter.send(SyncResult { error, ..SyncResult::default() });
                }
            }
        }
        count
    }

    /// The principal owning `group_id` now (the one whose consumers are members), if any.
    #[allow(dead_code)]
    pub(crate) fn owner(&self, group_id: &str) -> Option<String> {
        self.lock().get(group_id).and_then(|g| if g.members.is_empty() { None } else { g.owner.clone() })
    }

    /// Checks a commit against the group's membership. `Ok` for a member of the current generation, and for
    /// any commit while the group has no members here.
    ///
    /// Kafka refuses a commit naming a generation to a group without members, because its coordinator never
    /// forgets a generation. Membership here is in memory: a group without members is usually one this node
    /// has not seen since it restarted or took the coordination over, and the commit comes from a member of
    /// the previous coordinator's generation that has not rejoined yet. Refusing it would make that member
    /// consume its last records again. Accepting it fences nothing less than Kafka does: while the group has
    /// no members, anyone may commit to it with generation -1 anyway.
    fn validate_commit(&self, group_id: &str, generation: i32, member_id: &str) -> Result<(), i16> {
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id).filter(|g| !g.members.is_empty()) else {
            return Ok(());
        };
        let Some(member) = group.members.get_mut(member_id) else {
            return Err(code(ResponseError::UnknownMemberId));
        };
        member.last_seen = Instant::now();
        if group.state == State::CompletingRebalance {
            return Err(code(ResponseError::RebalanceInProgress));
        }
        if generation != group.generation {
            return Err(code(ResponseError::IllegalGeneration));
        }
        Ok(())
    }
}

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

fn new_member_id(client_id: Option<&str>) -> String {
    let prefix: String =
        client_id.unwrap_or("consumer").chars().filter(|c| !c.is_control()).take(64).collect();
    format!("{prefix}-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn join_response(version: i16, result: JoinResult) -> JoinGroupResponse {
    let mut response = JoinGroupResponse::default();
    response.error_code = result.error;
    response.generation_id = result.generation;
    if version >= 7 {
        response.protocol_type = result.protocol_type.as_deref().map(s);
        response.protocol_name = result.protocol.as_deref().map(s);
    } else {
        response.protocol_name = Some(s(result.protocol.as_deref().unwrap_or("")));
    }
    response.leader = s(&result.leader);
    response.member_id = s(&result.member_id);
    response.members = result
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let mut m = join_group_response::JoinGroupResponseMember::default();
            m.member_id = s(&id);
            if version >= 5 {
                m.group_instance_id = instance.as_deref().map(s);
            }
            m.metadata = metadata;
            m
        })
        .collect();
    response
}

fn sync_response(version: i16, result: SyncResult) -> SyncGroupResponse {
    let mut response = SyncGroupResponse::default();
    response.error_code = result.error;
    response.assignment = result.assignment;
    if version >= 5 {
        response.protocol_type = result.protocol_type.as_deref().map(s);
        response.protocol_name = result.protocol.as_deref().map(s);
    }
    response
}

impl Broker {
    pub(crate) async fn join_group(
        &self,
        session: &mut Session,
        version: i16,
        request: JoinGroupRequest,
    ) -> JoinGroupResponse {
        let member_id = request.member_id.to_string();
        if let Err(error) = self.coordinating() {
            return join_response(version, JoinResult::error(error, &member_id));
        }
        if let Err(error) = self.group_access(session, &request.group_id.0).await {
            return join_response(version, JoinResult::error(error, &member_id));
        }
        match self.join(session, version, request).await {
            Ok(receiver) => {
                // Bounded: a rebalance ends at its deadline (expire), which answers every waiter.
                let wait = MAX_REBALANCE_TIMEOUT + Duration::from_secs(30);
                let result = tokio::select! {
                    result = tokio::time::timeout(wait, receiver) => match result {
                        Ok(Ok(result)) => result,
                        _ => JoinResult::error(code(ResponseError::RebalanceInProgress), &member_id),
                    },
                    () = self.stopped() => JoinResult::error(errors::shutting_down(), &member_id),
                };
                join_response(version, result)
            }
            Err(result) => join_response(version, *result),
        }
    }

    /// Registers the join; the receiver yields the result once the join phase completes. `Err` is an
    /// immediate answer.
    async fn join(
        &self,
        session: &Session,
        version: i16,
        request: JoinGroupRequest,
    ) -> Result<oneshot::Receiver<JoinResult>, Box<JoinResult>> {
        let group_id = request.group_id.0.to_string();
        let fail = |error: ResponseError| Err(Box::new(JoinResult::error(code(error), &request.member_id)));
        if group_id.is_empty() {
            return fail(ResponseError::InvalidGroupId);
        }
        let session_timeout = Duration::from_millis(u64::try_from(request.session_timeout_ms).unwrap_or(0));
        if !(MIN_SESSION_TIMEOUT..=MAX_SESSION_TIMEOUT).contains(&session_timeout) {
            return fail(ResponseError::InvalidSessionTimeout);
        }
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        let rebalance_timeout = if version >= 1 {
            Duration::from_millis(u64::try_from(request.rebalance_timeout_ms).unwrap_or(0))
        } else {
            session_timeout
        };
        if request.protocol_type.is_empty() || request.protocols.is_empty() {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        let protocols: Vec<(String, Bytes)> =
            request.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect();
        let now = Instant::now();

        let mut groups = self.groups.lock();
        if !groups.contains_key(&group_id) && groups.len() >= MAX_GROUPS {
            return fail(ResponseError::CoordinatorNotAvailable);
        }
        let group = groups.entry(group_id.clone()).or_insert_with(Group::new);
        if !group.members.is_empty()
            && (group.protocol_type.as_deref() != Some(&*request.protocol_type)
                || !protocols.iter().any(|(name, _)| {
                    group.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == name))
                }))
        {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        let member_id = if request.member_id.is_empty() {
            if group.members.len() >= MAX_MEMBERS {
                return fail(ResponseError::GroupMaxSizeReached);
            }
            let id = new_member_id(session.client_id.as_deref());
            let seq = group.next_seq;
            group.next_seq += 1;
            group.members.insert(
                id.clone(),
                Member {
                    instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
                    session_timeout,
                    rebalance_timeout,
                    protocols: protocols.clone(),
                    assignment: Bytes::new(),
                    join_waiter: None,
                    sync_waiter: None,
                    joined: false,
                    last_seen: now,
                    seq,
                },
            );
            info!(group = %group_id, member = %id, client = session.client_id.as_deref().unwrap_or(""), "member joined");
            id
        } else {
            let id = request.member_id.to_string();
            let Some(member) = group.members.get_mut(&id) else {
                return fail(ResponseError::UnknownMemberId);
            };
            member.last_seen = now;
            let unchanged = member.protocols == protocols;
            let is_leader = group.leader.as_deref() == Some(&id);
            // A rejoin that changes nothing gets the current generation back without a rebalance.
            if unchanged
                && (group.state == State::CompletingRebalance || (group.state == State::Stable && !is_leader))
            {
                let protocol = group.protocol.clone();
                let members = if is_leader && group.state == State::CompletingRebalance {
                    group
                        .members
                        .iter()
                        .map(|(mid, m)| {
                            let md = m.protocols.iter().find(|(n, _)| Some(n) == protocol.as_ref());
                            (
                                mid.clone(),
                                m.instance_id.clone(),
                                md.map(|(_, md)| md.clone()).unwrap_or_default(),
                            )
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                return Err(Box::new(JoinResult {
                    error: NONE,
                    generation: group.generation,
                    protocol_type: group.protocol_type.clone(),
                    protocol,
                    leader: group.leader.clone().unwrap_or_default(),
                    member_id: id,
                    members,
                }));
            }
            member.protocols = protocols.clone();
            member.session_timeout = session_timeout;
            member.rebalance_timeout = rebalance_timeout;
            id
        };
        group.protocol_type = Some(request.protocol_type.to_string());
        group.prepare_rebalance(now, "member joined or changed its subscription", &group_id);
        let (sender, receiver) = oneshot::channel();
        if let Some(member) = group.members.get_mut(&member_id) {
            if let Some(previous) = member.join_waiter.replace(sender) {
                let _ =
                    previous.send(JoinResult::error(code(ResponseError::RebalanceInProgress), &member_id));
            }
            member.joined = true;
        }
        if group.all_joined() {
            group.complete_join(now, &group_id);
        }
        debug!(group = %group_id, member = %member_id, "join registered");
        Ok(receiver)
    }

    pub(crate) async fn sync_group(
        &self,
        session: &mut Session,
        version: i16,
        request: SyncGroupRequest,
    ) -> SyncGroupResponse {
        if let Err(error) = self.coordinating() {
            return sync_response(version, SyncResult { error, ..SyncResult::default() });
        }
        if let Err(error) = self.group_access(session, &request.group_id.0).await {
            return sync_response(version, SyncResult { error, ..SyncResult::default() });
        }
        let receiver = {
            let mut groups = self.groups.lock();
            let fail = |error: ResponseError| {
                sync_response(version, SyncResult { error: code(error), ..SyncResult::default() })
            };
            let Some(group) = groups.get_mut(&*request.group_id.0) else {
                return fail(ResponseError::UnknownMemberId);
            };
            let member_id = request.member_id.to_string();
            if !group.members.contains_key(&member_id) {
                return fail(ResponseError::UnknownMemberId);
            }
            if request.generation_id != group.generation {
                return fail(ResponseError::IllegalGeneration);
            }
            if version >= 5
                && (request
                    .protocol_type
                    .as_ref()
                    .is_some_and(|t| Some(&**t) != group.protocol_type.as_deref())
                    || request
                        .protocol_name
                        .as_ref()
                        .is_some_and(|n| Some(&**n) != group.protocol.as_deref()))
            {
                return fail(ResponseError::InconsistentGroupProtocol);
            }
            let protocol_type = group.protocol_type.clone();
            let protocol = group.protocol.clone();
            let now = Instant::now();
            match group.state {
                State::Empty => return fail(ResponseError::UnknownMemberId),
                State::PreparingRebalance => return fail(ResponseError::RebalanceInProgress),
                State::Stable => {
                    let member = &group.members[&member_id];
                    return sync_response(
                        version,
                        SyncResult {
                            error: NONE,
                            assignment: member.assignment.clone(),
                            protocol_type,
                            protocol,
                        },
                    );
                }
                State::CompletingRebalance => {
                    if let Some(member) = group.members.get_mut(&member_id) {
                        member.last_seen = now;
                    }
                    if group.leader.as_deref() == Some(&member_id) {
                        let assignments: HashMap<String, Bytes> = request
                            .assignments
                            .into_iter()
                            .map(|a| (a.member_id.to_string(), a.assignment))
                            .collect();
                        for (id, member) in &mut group.members {
                            member.assignment = assignments.get(id).cloned().unwrap_or_default();
                            if let Some(waiter) = member.sync_waiter.take() {
                                let _ = waiter.send(SyncResult {
                                    error: NONE,
                                    assignment: member.assignment.clone(),
                                    protocol_type: protocol_type.clone(),
                                    protocol: protocol.clone(),
                                });
                            }
                        }
                        group.state = State::Stable;
                        info!(group = %request.group_id.0, generation = group.generation, "group is stable");
                        let assignment = group.members[&member_id].assignment.clone();
                        return sync_response(
                            version,
                            SyncResult { error: NONE, assignment, protocol_type, protocol },
                        );
                    }
                    let (sender, receiver) = oneshot::channel();
                    if let Some(member) = group.members.get_mut(&member_id) {
                        member.sync_waiter = Some(sender);
                    }
                    receiver
                }
            }
        };
        // Bounded: if the leader never syncs, its session expires and the rebalance answers every waiter.
        let result = tokio::select! {
            result = tokio::time::timeout(MAX_SESSION_TIMEOUT, receiver) => match result {
                Ok(Ok(result)) => result,
                _ => SyncResult { error: code(ResponseError::RebalanceInProgress), ..SyncResult::default() },
            },
            () = self.stopped() => SyncResult { error: errors::shutting_down(), ..SyncResult::default() },
        };
        sync_response(version, result)
    }

    pub(crate) fn heartbeat(&self, session: &mut Session, request: HeartbeatRequest) -> HeartbeatResponse {
        let _ = session;
        let mut response = HeartbeatResponse::default();
        let mut groups = self.groups.lock();
        let error = match groups.get_mut(&*request.group_id.0) {
            None => ResponseError::UnknownMemberId,
            Some(group) => {
                let state = group.state;
                let generation = group.generation;
                match group.members.get_mut(&*request.member_id) {
                    None => ResponseError::UnknownMemberId,
                    Some(member) => {
                        member.last_seen = Instant::now();
                        if state == State::PreparingRebalance {
                            ResponseError::RebalanceInProgress
                        } else if request.generation_id != generation {
                            ResponseError::IllegalGeneration
                        } else {
                            response.error_code = NONE;
                            return response;
                        }
                    }
                }
            }
        };
        response.error_code = code(error);
        response
    }

    pub(crate) fn leave_group(
        &self,
        session: &mut Session,
        version: i16,
        request: LeaveGroupRequest,
    ) -> LeaveGroupResponse {
        let _ = session;
        let mut response = LeaveGroupResponse::default();
        let leaving: Vec<(String, Option<String>)> = if version >= 3 {
            request
                .members
                .iter()
                .map(|m| (m.member_id.to_string(), m.group_instance_id.as_ref().map(|i| i.to_string())))
                .collect()
        } else {
            vec![(request.member_id.to_string(), None)]
        };
        let mut groups = self.groups.lock();
        let group_id = request.group_id.0.to_string();
        let Some(group) = groups.get_mut(&group_id) else {
            response.error_code = code(ResponseError::UnknownMemberId);
            return response;
        };
        let now = Instant::now();
        for (member_id, instance_id) in leaving {
            // v3+ may name a static member by its instance id alone.
            let id = if member_id.is_empty() {
                group
                    .members
                    .iter()
                    .find(|(_, m)| m.instance_id.is_some() && m.instance_id == instance_id)
                    .map(|(id, _)| id.clone())
                    .unwrap_or_default()
            } else {
                member_id.clone()
            };
            let error = if group.members.contains_key(&id) {
                info!(group = %group_id, member = %id, "member left");
                group.remove_member(&id, now, "member left", &group_id);
                NONE
            } else {
                code(ResponseError::UnknownMemberId)
            };
            if version >= 3 {
                let mut m = leave_group_response::MemberResponse::default();
                m.member_id = s(&member_id);
                m.group_instance_id = instance_id.as_deref().map(s);
                m.error_code = error;
                response.members.push(m);
            } else {
                response.error_code = error;
            }
        }
        response
    }

    pub(crate) async fn offset_commit(
        &self,
        session: &mut Session,
        version: i16,
        request: OffsetCommitRequest,
    ) -> OffsetCommitResponse {
        let _ = version;
        let mut response = OffsetCommitResponse::default();
        let group_id = request.group_id.0.to_string();
        let membership = if group_id.is_empty() {
            Err(code(ResponseError::InvalidGroupId))
        } else if let Err(error) = self.coordinating() {
            // Only the coordinator validates commits against the generation: a commit accepted elsewhere could
            // come from a member the coordinator has already fenced out.
            Err(error)
        } else if let Err(error) = self.group_access(session, &group_id).await {
            Err(error)
        } else {
            self.groups.validate_commit(&group_id, request.generation_id_or_member_epoch, &request.member_id)
        };

        // (topic index, partition index, error); NONE entries are committed together.
        let mut outcomes: Vec<(usize, i32, i16)> = Vec::new();
        let mut commits: Vec<OffsetCommit> = Vec::new();
        let mut topic_exists: HashMap<String, Result<u32, i16>> = HashMap::new();
        for (ti, topic) in request.topics.iter().enumerate() {
            let name = topic.name.0.to_string();
            if !topic_exists.contains_key(&name) {
                let known = match self.ctx.store.describe_topic(&name).await {
                    Ok(info) => Ok(info.partitions),
                    Err(e) => Err(errors::store_error(&e)),
                };
                topic_exists.insert(name.clone(), known);
            }
            let allowed = self.may(session, Action::Read { topic: &name });
            for p in &topic.partitions {
                let error = match (&membership, &topic_exists[&name]) {
                    (Err(e), _) => *e,
                    _ if !allowed => errors::topic_denied(),
                    (_, Err(e)) => *e,
                    (Ok(()), Ok(partitions)) => {
                        let metadata_len = p.committed_metadata.as_ref().map_or(0, |m| m.len());
                        if u32::try_from(p.partition_index).map_or(true, |i| i >= *partitions) {
                            code(ResponseError::UnknownTopicOrPartition)
                        } else if metadata_len > MAX_OFFSET_METADATA {
                            code(ResponseError::OffsetMetadataTooLarge)
                        } else if p.committed_offset < 0 {
                            code(ResponseError::InvalidCommitOffsetSize)
                        } else {
                            commits.push((
                                name.clone(),
                                p.partition_index as u32,
                                p.committed_offset as u64,
                                p.committed_metadata.as_ref().map(|m| m.to_string()),
                            ));
                            NONE
                        }
                    }
                };
                outcomes.push((ti, p.partition_index, error));
            }
        }
        let stored =
            if commits.is_empty() { Ok(()) } else { self.groups.offsets.commit(&group_id, commits).await };
        let store_error = match &stored {
            Ok(()) => None,
            Err(e) => {
                warn!(group = %group_id, error = %e, "storing committed offsets failed");
                Some(errors::offsets_error(e))
            }
        };
        for topic in &request.topics {
            let mut t = offset_commit_response::OffsetCommitResponseTopic::default();
            t.name = topic.name.clone();
            response.topics.push(t);
        }
        for (ti, partition, error) in outcomes {
            let mut p = offset_commit_response::OffsetCommitResponsePartition::default();
            p.partition_index = partition;
            p.error_code = match (error, store_error) {
                (NONE, Some(e)) => e,
                (error, _) => error,
            };
            response.topics[ti].partitions.push(p);
        }
        response
    }

    pub(crate) async fn offset_fetch(
        &self,
        session: &mut Session,
        version: i16,
        request: OffsetFetchRequest,
    ) -> OffsetFetchResponse {
        let mut response = OffsetFetchResponse::default();
        if version >= 8 {
            for group in request.groups {
                let topics =
                    group.topics.map(|ts| ts.into_iter().map(|t| (t.name, t.partition_indexes)).collect());
                let (error, found) = self.committed(session, &group.group_id.0, topics).await;
                let mut g = offset_fetch_response::OffsetFetchResponseGroup::default();
                g.group_id = group.group_id;
                g.error_code = error;
                g.topics = found
                    .into_iter()
                    .map(|(name, partitions)| {
                        let mut t = offset_fetch_response::OffsetFetchResponseTopics::default();
                        t.name = name;
                        t.partitions = partitions
                            .into_iter()
                            .map(|(index, offset, metadata, error)| {
                                let mut p = offset_fetch_response::OffsetFetchResponsePartitions::default();
                                p.partition_index = index;
                                p.committed_offset = offset;
                                p.metadata = Some(s(&metadata));
                                p.error_code = error;
                                p
                            })
                            .collect();
                        t
                    })
                    .collect();
                response.groups.push(g);
            }
            return response;
        }
        let topics = request.topics.map(|ts| ts.into_iter().map(|t| (t.name, t.partition_indexes)).collect());
        let (error, found) = self.committed(session, &request.group_id.0, topics).await;
        if version >= 2 {
            response.error_code = error;
        }
        response.topics = found
            .into_iter()
            .map(|(name, partitions)| {
                let mut t = offset_fetch_response::OffsetFetchResponseTopic::default();
                t.name = name;
                t.partitions = partitions
                    .into_iter()
                    .map(|(index, offset, metadata, p_error)| {
                        let mut p = offset_fetch_response::OffsetFetchResponsePartition::default();
                        p.partition_index = index;
                        p.committed_offset = offset;
                        p.metadata = Some(s(&metadata));
                        // v1 has no group-level error: it goes on every partition.
                        p.error_code = if p_error == NONE && version < 2 { error } else { p_error };
                        p
                    })
                    .collect();
                t
            })
            .collect();
        response
    }

    /// Committed offsets of a group: for the requested partitions, or every committed one when `topics` is None.
    /// Partitions without a commit answer offset -1.
    #[allow(clippy::type_complexity)]
    async fn committed(
        &self,
        session: &mut Session,
        group_id: &str,
        topics: Option<Vec<(TopicName, Vec<i32>)>>,
    ) -> (i16, Vec<(TopicName, Vec<(i32, i64, String, i16)>)>) {
        if group_id.is_empty() {
            return (code(ResponseError::InvalidGroupId), Vec::new());
        }
        if let Err(error) = self.coordinating() {
            // Each requested partition carries the error too: v0 and v1 have no group-level error field.
            let refused = topics
                .unwrap_or_default()
                .into_iter()
                .map(|(name, partitions)| {
                    (name, partitions.into_iter().map(|p| (p, -1, String::new(), error)).collect())
                })
                .collect();
            return (error, refused);
        }
        if let Err(error) = self.group_access(session, group_id).await {
            return (error, Vec::new());
        }
        match topics {
            None => match self.groups.offsets.list(group_id).await {
                Ok(entries) => {
                    let mut by_topic: BTreeMap<String, Vec<(i32, i64, String, i16)>> = BTreeMap::new();
                    for e in
                        entries.into_iter().filter(|e| self.may(session, Action::Read { topic: &e.topic }))
                    {
                        let offset = i64::try_from(e.offset).unwrap_or(i64::MAX);
                        by_topic.entry(e.topic).or_default().push((
                            e.partition as i32,
                            offset,
                            e.metadata,
                            NONE,
                        ));
                    }
                    let found = by_topic
                        .into_iter()
                        .map(|(t, ps)| (TopicName(StrBytes::from_string(t)), ps))
                        .collect();
                    (NONE, found)
                }
                Err(e) => (errors::offsets_error(&e), Vec::new()),
            },
            Some(topics) => {
                let mut found = Vec::new();
                for (name, partitions) in topics {
                    let mut answers = Vec::new();
                    let allowed = self.may(session, Action::Read { topic: &name.0 });
                    for index in partitions {
                        let answer = match u32::try_from(index) {
                            _ if !allowed => (index, -1, String::new(), errors::topic_denied()),
                            Err(_) => {
                                (index, -1, String::new(), code(ResponseError::UnknownTopicOrPartition))
                            }
                            Ok(partition) => {
                                match self.groups.offsets.fetch(group_id, &name.0, partition).await {
                                    Ok(Some(c)) => {
                                        (index, i64::try_from(c.offset).unwrap_or(i64::MAX), c.metadata, NONE)
                                    }
                                    Ok(None) => (index, -1, String::new(), NONE),
                                    Err(e) => (index, -1, String::new(), errors::offsets_error(&e)),
                                }
                            }
                        };
                        answers.push(answer);
                    }
                    found.push((name, answers));
                }
                (NONE, found)
            }
        }
    }
}
