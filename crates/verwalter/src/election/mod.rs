//! Leader election: the original's epoch/vote protocol with pre-vote and check-quorum.
//!
//! [`Election`] is sans-I/O: it takes packets, timer ticks and the current [`View`] of the
//! cluster, and returns packets to send plus [`Event`]s for the daemon. [`runner`] drives it
//! over a [`transport::Transport`]; tests drive it over the in-memory network in
//! deterministic simulation.

pub mod packet;
pub mod runner;
pub mod transport;

#[cfg(test)]
mod simulation;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use protocol::domain::MachineId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

use crate::schedule::Stamp;
pub use packet::{ActionDigest, Message};

/// The protocol's timers.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub timeout_min: Duration,
    pub timeout_max: Duration,
    pub round: Duration,
    pub quorum_window: Duration,
    /// A node alone waits this long before electing itself.
    pub alone: Duration,
    /// A pre-vote is refused while a leader pinged within this.
    pub leader_quiet: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(200),
            timeout_min: Duration::from_millis(600),
            timeout_max: Duration::from_millis(1200),
            round: Duration::from_millis(200),
            quorum_window: Duration::from_millis(1200),
            alone: Duration::from_millis(500),
            leader_quiet: Duration::from_millis(600),
        }
    }
}

/// A peer as the election sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// cantal says `dead`.
    pub dead: bool,
    /// Where its election socket is.
    pub addr: Option<SocketAddr>,
}

/// The cluster as this node's cantal sees it, reduced to what the election needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Every peer cantal lists (self excluded).
    pub peers: BTreeMap<MachineId, Member>,
    /// `⌊M/2⌋ + 1` (see `membership`).
    pub needed: usize,
    /// cantal's first snapshot arrived (or the start wait is over).
    pub ready: bool,
    /// The peer list is current (cantal answered within 3 s, or there are no peers).
    pub fresh: bool,
}

impl View {
    pub fn is_member(&self, id: &MachineId) -> bool {
        self.peers.contains_key(id)
    }

    fn is_dead(&self, id: &MachineId) -> bool {
        self.peers.get(id).is_none_or(|member| member.dead)
    }
}

/// What this node contributes to its packets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Local {
    pub schedule: Option<Stamp>,
    pub actions: ActionDigest,
    pub frozen: bool,
    pub errors: u32,
    pub failed_roles: Vec<String>,
}

/// The spec's election states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state")]
pub enum State {
    Starting,
    PreCandidate,
    Electing {
        votes: usize,
        needed: usize,
    },
    Voted {
        #[serde(with = "crate::id_hex")]
        peer: MachineId,
    },
    Leader,
    Follower {
        #[serde(with = "crate::id_hex")]
        leader: MachineId,
    },
    Unstable,
}

/// Where a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    All,
    One(MachineId),
}

/// What the daemon must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This node just won an election: schedule at once.
    BecameLeader,
    /// This leader won against another leader (a partition healed): fetch the loser's
    /// schedule and schedule with both as parents.
    WonAgainst {
        loser: MachineId,
        schedule: Option<Stamp>,
    },
    /// This leader lost check-quorum or met a newer epoch.
    SteppedDown,
}

/// The result of one step.
#[derive(Debug, Default)]
pub struct Step {
    pub send: Vec<(Target, Message)>,
    pub events: Vec<Event>,
}

/// The election state machine of one node.
#[derive(Debug)]
pub struct Election {
    id: MachineId,
    epoch: u64,
    voted: Option<(u64, MachineId)>,
    state: State,
    leader: Option<MachineId>,
    timing: Timing,
    rng: StdRng,
    started: Instant,
    deadline: Instant,
    last_leader_ping: Option<Instant>,
    /// Follower: the followers and epoch its leader's last Ping advertised.
    leader_claim: (usize, u64),
    leader_since: Instant,
    /// Leader: when each peer last answered a Ping of this epoch.
    pongs: BTreeMap<MachineId, Instant>,
    /// Pre-candidate: the epoch asked for and who granted it (self included).
    pre_votes: (u64, BTreeSet<MachineId>),
    /// Candidate: who voted for this node in the current epoch.
    votes: BTreeSet<MachineId>,
    /// The last pre-vote this node granted.
    granted: Option<(u64, MachineId)>,
    /// Starting with peers: one time-out spent listening for a leader.
    listened: bool,
    /// Between a failed round and the next one.
    backing_off: bool,
}

impl Election {
    /// A node starting at `now` with its persisted epoch and vote.
    pub fn new(
        id: MachineId,
        epoch: u64,
        voted: Option<(u64, MachineId)>,
        timing: Timing,
        seed: u64,
        now: Instant,
    ) -> Self {
        Self {
            id,
            epoch,
            voted,
            state: State::Starting,
            leader: None,
            timing,
            rng: StdRng::seed_from_u64(seed),
            started: now,
            deadline: now,
            last_leader_ping: None,
            leader_claim: (0, 0),
            leader_since: now,
            pongs: BTreeMap::new(),
            pre_votes: (0, BTreeSet::new()),
            votes: BTreeSet::new(),
            granted: None,
            listened: false,
            backing_off: false,
        }
    }

    pub fn id(&self) -> MachineId {
        self.id
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// What must survive a restart: the epoch and this epoch's vote.
    pub fn persistent(&self) -> (u64, Option<(u64, MachineId)>) {
        (self.epoch, self.voted)
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The leader this node follows or is.
    pub fn leader(&self) -> Option<MachineId> {
        self.leader
    }

    pub fn is_leader(&self) -> bool {
        self.state == State::Leader
    }

    /// When [`Election::tick`] wants to run next.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Distinct peers that answered within the last check-quorum window.
    pub fn followers(&self, now: Instant) -> usize {
        let since = now
            .checked_sub(self.timing.quorum_window)
            .unwrap_or(self.started);
        self.pongs.values().filter(|&&at| at >= since).count()
    }

    fn random_timeout(&mut self, now: Instant) -> Instant {
        let min = self.timing.timeout_min.as_millis() as u64;
        let max = self.timing.timeout_max.as_millis() as u64;
        now + Duration::from_millis(self.rng.random_range(min..=max))
    }

    /// Timers: heartbeats and check-quorum for a leader, time-outs and new rounds otherwise.
    pub fn tick(&mut self, now: Instant, view: &View, local: &Local) -> Step {
        let mut step = Step::default();
        if now < self.deadline {
            return step;
        }
        match self.state {
            State::Leader => {
                let window_over =
                    now.duration_since(self.leader_since) >= self.timing.quorum_window;
                if window_over && self.followers(now) + 1 < view.needed {
                    self.step_down(now, &mut step);
                } else {
                    step.send.push((Target::All, self.ping(now, local)));
                    self.deadline = now + self.timing.heartbeat;
                }
            }
            State::Starting if !view.ready => {
                self.deadline = now + Duration::from_millis(50);
            }
            State::Starting if view.peers.is_empty() && now < self.started + self.timing.alone => {
                self.deadline = self.started + self.timing.alone;
            }
            State::Starting if !view.peers.is_empty() && !self.listened => {
                // Peers exist: listen for a leader for one time-out before asking for votes.
                self.listened = true;
                self.deadline = self.random_timeout(now);
            }
            State::PreCandidate | State::Electing { .. } if !self.backing_off => {
                // The round failed: wait a fresh random time-out before the next one.
                self.backing_off = true;
                self.deadline = self.random_timeout(now);
            }
            _ => {
                if view.fresh || view.peers.is_empty() {
                    self.start_pre_vote(now, view, local, &mut step);
                } else {
                    // No new elections on a stale peer list.
                    self.deadline = self.random_timeout(now);
                }
            }
        }
        step
    }

    fn ping(&self, now: Instant, local: &Local) -> Message {
        Message::Ping {
            id: self.id,
            epoch: self.epoch,
            schedule: local.schedule.clone(),
            followers: u32::try_from(self.followers(now)).unwrap_or(u32::MAX),
            actions: local.actions.clone(),
            frozen: local.frozen,
        }
    }

    /// A Ping now, e.g. after a new schedule or action (leaders only).
    pub fn ping_now(&mut self, now: Instant, local: &Local) -> Step {
        let mut step = Step::default();
        if self.is_leader() {
            step.send.push((Target::All, self.ping(now, local)));
            self.deadline = now + self.timing.heartbeat;
        }
        step
    }

    fn step_down(&mut self, now: Instant, step: &mut Step) {
        self.state = State::Unstable;
        self.leader = None;
        self.pongs.clear();
        self.deadline = self.random_timeout(now);
        step.events.push(Event::SteppedDown);
    }

    fn start_pre_vote(&mut self, now: Instant, view: &View, local: &Local, step: &mut Step) {
        self.state = State::PreCandidate;
        self.backing_off = false;
        self.leader = None;
        let proposed = self.epoch + 1;
        self.pre_votes = (proposed, BTreeSet::from([self.id]));
        step.send.push((
            Target::All,
            Message::PreVote {
                id: self.id,
                epoch: proposed,
                schedule: local.schedule.clone(),
            },
        ));
        self.deadline = now + self.timing.round;
        if self.pre_votes.1.len() >= view.needed {
            self.start_vote(now, view, local, step);
        }
    }

    fn start_vote(&mut self, now: Instant, view: &View, local: &Local, step: &mut Step) {
        self.epoch += 1;
        self.voted = Some((self.epoch, self.id));
        self.votes = BTreeSet::from([self.id]);
        self.state = State::Electing {
            votes: 1,
            needed: view.needed,
        };
        step.send.push((
            Target::All,
            Message::Vote {
                id: self.id,
                epoch: self.epoch,
                target: self.id,
                schedule: local.schedule.clone(),
            },
        ));
        self.deadline = now + self.timing.round;
        if self.votes.len() >= view.needed {
            self.become_leader(now, local, step);
        }
    }

    fn become_leader(&mut self, now: Instant, local: &Local, step: &mut Step) {
        self.state = State::Leader;
        self.leader = Some(self.id);
        self.leader_since = now;
        self.pongs.clear();
        step.events.push(Event::BecameLeader);
        step.send.push((Target::All, self.ping(now, local)));
        self.deadline = now + self.timing.heartbeat;
    }

    /// Follows `leader`, whose Ping advertised `followers` and `epoch`; the own epoch never
    /// goes back.
    fn follow(&mut self, now: Instant, leader: MachineId, epoch: u64, followers: usize) {
        self.epoch = self.epoch.max(epoch);
        self.state = State::Follower { leader };
        self.leader = Some(leader);
        self.leader_claim = (followers, epoch);
        self.pongs.clear();
        self.last_leader_ping = Some(now);
        self.deadline = self.random_timeout(now);
    }

    /// The leader this node follows, if it pinged within `leader_quiet`.
    fn live_leader(&self, now: Instant) -> Option<MachineId> {
        let State::Follower { leader } = self.state else {
            return None;
        };
        self.last_leader_ping
            .is_some_and(|at| now.duration_since(at) < self.timing.leader_quiet)
            .then_some(leader)
    }

    /// A packet from a peer cantal lists (the caller drops the others).
    pub fn receive(&mut self, now: Instant, message: Message, view: &View, local: &Local) -> Step {
        let mut step = Step::default();
        match message {
            Message::Ping {
                id,
                epoch,
                schedule,
                followers,
                ..
            } => {
                if id == self.id {
                    return step;
                }
                let followers = followers as usize;
                let theirs = rank(followers, epoch, id);
                if self.is_leader() {
                    if rank(self.followers(now), self.epoch, self.id) > theirs {
                        self.epoch = self.epoch.max(epoch) + 1;
                        step.events.push(Event::WonAgainst {
                            loser: id,
                            schedule,
                        });
                        step.send.push((Target::All, self.ping(now, local)));
                        self.deadline = now + self.timing.heartbeat;
                        return step;
                    }
                    self.follow(now, id, epoch, followers);
                    step.events.push(Event::SteppedDown);
                } else if let Some(leader) = self.live_leader(now)
                    && leader != id
                {
                    // Rule 6 from a follower's side: stay with a live leader unless the other
                    // would win against it, whatever the epochs (a minority that elected later
                    // has the higher one).
                    let (leader_followers, leader_epoch) = self.leader_claim;
                    if theirs > rank(leader_followers, leader_epoch, leader) {
                        self.follow(now, id, epoch, followers);
                    }
                } else if epoch >= self.epoch || self.leader == Some(id) {
                    self.follow(now, id, epoch, followers);
                } else {
                    step.send.push((Target::One(id), self.pong(local)));
                    return step;
                }
                step.send.push((Target::One(id), self.pong(local)));
            }
            Message::Pong {
                id, epoch, leader, ..
            } => {
                // A node following another leader neither counts nor deposes this one: rule 6
                // settles two leaders when their Pings meet, check-quorum one without quorum.
                if !self.is_leader() || leader.is_some_and(|leader| leader != self.id) {
                    return step;
                }
                if epoch > self.epoch {
                    self.epoch = epoch;
                    if leader.is_none() {
                        self.step_down(now, &mut step);
                        return step;
                    }
                    // An own follower that came from a newer epoch: catch up, so that no
                    // epoch goes back, and tell the others at once.
                    step.send.push((Target::All, self.ping(now, local)));
                    self.deadline = now + self.timing.heartbeat;
                }
                if epoch == self.epoch {
                    self.pongs.insert(id, now);
                }
            }
            Message::PreVote { id, epoch, .. } => {
                let quiet = self
                    .last_leader_ping
                    .is_none_or(|at| now.duration_since(at) >= self.timing.leader_quiet);
                let granted =
                    !self.is_leader() && quiet && !view.is_dead(&id) && epoch > self.epoch;
                if granted {
                    self.granted = Some((epoch, id));
                }
                step.send.push((
                    Target::One(id),
                    Message::PreVoteReply {
                        id: self.id,
                        epoch: if granted { epoch } else { self.epoch },
                        granted,
                    },
                ));
            }
            Message::PreVoteReply { id, epoch, granted } => {
                if self.state != State::PreCandidate {
                    return step;
                }
                if granted && epoch == self.pre_votes.0 {
                    self.pre_votes.1.insert(id);
                    if self.pre_votes.1.len() >= view.needed {
                        self.start_vote(now, view, local, &mut step);
                    }
                } else if !granted && epoch > self.epoch {
                    // Someone is ahead: catch up so the next proposal can be granted.
                    self.epoch = epoch;
                }
            }
            Message::Vote {
                id, epoch, target, ..
            } => {
                if target == self.id {
                    if let State::Electing { needed, .. } = self.state
                        && epoch == self.epoch
                    {
                        self.votes.insert(id);
                        self.state = State::Electing {
                            votes: self.votes.len(),
                            needed,
                        };
                        if self.votes.len() >= view.needed {
                            self.become_leader(now, local, &mut step);
                        }
                    }
                    return step;
                }
                if id != target {
                    // Someone else's ballot for a third node: nothing to do.
                    return step;
                }
                let already_voted = self
                    .voted
                    .is_some_and(|(voted_epoch, _)| voted_epoch >= epoch);
                let live_leader = self.is_leader()
                    || self
                        .last_leader_ping
                        .is_some_and(|at| now.duration_since(at) < self.timing.leader_quiet);
                let pre_voted = self.granted == Some((epoch, target));
                let eligible = pre_voted || (epoch > self.epoch && !live_leader);
                if epoch >= self.epoch && !already_voted && eligible && !self.is_leader() {
                    self.epoch = epoch;
                    self.voted = Some((epoch, target));
                    self.state = State::Voted { peer: target };
                    self.leader = None;
                    self.deadline = self.random_timeout(now);
                    step.send.push((
                        Target::All,
                        Message::Vote {
                            id: self.id,
                            epoch,
                            target,
                            schedule: local.schedule.clone(),
                        },
                    ));
                }
            }
        }
        step
    }

    fn pong(&self, local: &Local) -> Message {
        Message::Pong {
            id: self.id,
            epoch: self.epoch,
            schedule: local.schedule.clone(),
            errors: local.errors,
            failed_roles: local.failed_roles.clone(),
            actions: Some(local.actions.clone()),
            leader: self.leader,
        }
    }
}

/// Rule 6's order of two leaders: more followers, then the higher epoch, then the lower id.
fn rank(followers: usize, epoch: u64, id: MachineId) -> (usize, u64, std::cmp::Reverse<MachineId>) {
    (followers, epoch, std::cmp::Reverse(id))
}
