//! Validated Rust types for the messages the tools act on.
//!
//! Protobuf gives every field a default and every enum an open set of values, so a message
//! from another version (or a bug) can carry a 3-byte id or a state nobody knows. Converting
//! at the edge with `TryFrom` rejects those once, naming the field, and the rest of each tool
//! works with types that cannot hold them. `From<domain> for pb` is the way back.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::pb::{cantal, lithos, verwalter};

/// A message field that does not convert to its domain type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error("{field}: machine id must be 16 bytes, got {len}")]
    MachineIdLength { field: &'static str, len: usize },
    #[error("{field}: invalid enum value {value}")]
    InvalidEnum { field: &'static str, value: i32 },
    #[error("{field}: missing")]
    Missing { field: &'static str },
}

/// A machine id string that is not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("machine id {value:?} is not 32 hex digits")]
pub struct ParseMachineIdError {
    pub value: String,
}

/// A host's identity: the 16 bytes `/etc/machine-id` spells as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MachineId([u8; 16]);

impl MachineId {
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Converts a `bytes` field, naming it in the error.
    fn from_field(field: &'static str, bytes: &[u8]) -> Result<Self, ConversionError> {
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| ConversionError::MachineIdLength {
                field,
                len: bytes.len(),
            })
    }
}

impl FromStr for MachineId {
    type Err = ParseMachineIdError;

    /// Accepts either case, as `/etc/machine-id` and `--override-machine-id` may differ.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMachineIdError {
            value: s.to_owned(),
        };
        // Checked up front so the slicing below stays on ASCII boundaries; from_str_radix
        // alone would also take a leading '+'.
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        let mut bytes = [0; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(Self(bytes))
    }
}

/// Lowercase hex, the spelling of `/all_peers.json` and `/v1/status`.
impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MachineId({self})")
    }
}

impl From<MachineId> for Vec<u8> {
    fn from(id: MachineId) -> Self {
        id.0.to_vec()
    }
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Milliseconds since the epoch; times before it (a broken clock) become 0.
fn to_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, duration_ms)
}

/// Saturates instead of wrapping: u64 milliseconds last 584 million years.
fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// cantal's failure-detection state of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerState {
    Alive,
    Suspect,
    Dead,
}

impl PeerState {
    fn from_field(field: &'static str, value: i32) -> Result<Self, ConversionError> {
        match cantal::PeerState::try_from(value) {
            Ok(cantal::PeerState::Alive) => Ok(Self::Alive),
            Ok(cantal::PeerState::Suspect) => Ok(Self::Suspect),
            Ok(cantal::PeerState::Dead) => Ok(Self::Dead),
            Ok(cantal::PeerState::Unspecified) | Err(_) => {
                Err(ConversionError::InvalidEnum { field, value })
            }
        }
    }
}

impl From<PeerState> for cantal::PeerState {
    fn from(state: PeerState) -> Self {
        match state {
            PeerState::Alive => Self::Alive,
            PeerState::Suspect => Self::Suspect,
            PeerState::Dead => Self::Dead,
        }
    }
}

/// What a peer last reported about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub timestamp: SystemTime,
    pub peers: u32,
    pub has_remote: bool,
}

impl From<cantal::Report> for Report {
    fn from(report: cantal::Report) -> Self {
        Self {
            timestamp: from_ms(report.timestamp_ms),
            peers: report.peers,
            has_remote: report.has_remote,
        }
    }
}

impl From<Report> for cantal::Report {
    fn from(report: Report) -> Self {
        Self {
            timestamp_ms: to_ms(report.timestamp),
            peers: report.peers,
            has_remote: report.has_remote,
        }
    }
}

/// One entry of cantal's peer table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: MachineId,
    pub name: String,
    pub hostname: String,
    pub primary_addr: String,
    pub addresses: Vec<String>,
    pub state: PeerState,
    pub state_since: SystemTime,
    pub known_since: SystemTime,
    pub last_report_direct: Option<SystemTime>,
    pub rtt: Option<Duration>,
    pub report: Option<Report>,
}

impl TryFrom<cantal::Peer> for Peer {
    type Error = ConversionError;

    fn try_from(peer: cantal::Peer) -> Result<Self, Self::Error> {
        Ok(Self {
            id: MachineId::from_field("peer.id", &peer.id)?,
            state: PeerState::from_field("peer.state", peer.state)?,
            name: peer.name,
            hostname: peer.hostname,
            primary_addr: peer.primary_addr,
            addresses: peer.addresses,
            state_since: from_ms(peer.state_since_ms),
            known_since: from_ms(peer.known_since_ms),
            last_report_direct: peer.last_report_direct_ms.map(from_ms),
            rtt: peer.rtt_us.map(Duration::from_micros),
            report: peer.report.map(Report::from),
        })
    }
}

impl From<Peer> for cantal::Peer {
    fn from(peer: Peer) -> Self {
        Self {
            id: peer.id.into(),
            name: peer.name,
            hostname: peer.hostname,
            primary_addr: peer.primary_addr,
            addresses: peer.addresses,
            state: cantal::PeerState::from(peer.state).into(),
            state_since_ms: to_ms(peer.state_since),
            known_since_ms: to_ms(peer.known_since),
            last_report_direct_ms: peer.last_report_direct.map(to_ms),
            rtt_us: peer
                .rtt
                .map(|rtt| u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX)),
            report: peer.report.map(cantal::Report::from),
        }
    }
}

/// One message of cantal's `WatchPeers` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    Snapshot(Vec<Peer>),
    Joined(Peer),
    Updated(Peer),
    StateChanged {
        id: MachineId,
        state: PeerState,
        since: SystemTime,
    },
    Removed(MachineId),
}

impl TryFrom<cantal::PeerEvent> for PeerEvent {
    type Error = ConversionError;

    fn try_from(event: cantal::PeerEvent) -> Result<Self, Self::Error> {
        use cantal::peer_event::Event;
        let missing = |field| ConversionError::Missing { field };
        match event.event.ok_or(missing("peer_event.event"))? {
            Event::Snapshot(snapshot) => snapshot
                .peers
                .into_iter()
                .map(Peer::try_from)
                .collect::<Result<_, _>>()
                .map(Self::Snapshot),
            Event::Joined(joined) => {
                Peer::try_from(joined.peer.ok_or(missing("joined.peer"))?).map(Self::Joined)
            }
            Event::Updated(updated) => {
                Peer::try_from(updated.peer.ok_or(missing("updated.peer"))?).map(Self::Updated)
            }
            Event::StateChanged(changed) => Ok(Self::StateChanged {
                id: MachineId::from_field("state_changed.id", &changed.id)?,
                state: PeerState::from_field("state_changed.state", changed.state)?,
                since: from_ms(changed.since_ms),
            }),
            Event::Removed(removed) => {
                MachineId::from_field("removed.id", &removed.id).map(Self::Removed)
            }
        }
    }
}

impl From<PeerEvent> for cantal::PeerEvent {
    fn from(event: PeerEvent) -> Self {
        use cantal::peer_event::Event;
        let event = match event {
            PeerEvent::Snapshot(peers) => Event::Snapshot(cantal::Snapshot {
                peers: peers.into_iter().map(cantal::Peer::from).collect(),
            }),
            PeerEvent::Joined(peer) => Event::Joined(cantal::Joined {
                peer: Some(peer.into()),
            }),
            PeerEvent::Updated(peer) => Event::Updated(cantal::Updated {
                peer: Some(peer.into()),
            }),
            PeerEvent::StateChanged { id, state, since } => {
                Event::StateChanged(cantal::StateChanged {
                    id: id.into(),
                    state: cantal::PeerState::from(state).into(),
                    since_ms: to_ms(since),
                })
            }
            PeerEvent::Removed(id) => Event::Removed(cantal::Removed { id: id.into() }),
        };
        Self { event: Some(event) }
    }
}

/// Where a lithos instance is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    Running,
    Starting,
    Backoff,
    FailedSetup,
    GaveUp,
}

impl InstanceState {
    fn from_field(field: &'static str, value: i32) -> Result<Self, ConversionError> {
        match lithos::InstanceState::try_from(value) {
            Ok(lithos::InstanceState::Running) => Ok(Self::Running),
            Ok(lithos::InstanceState::Starting) => Ok(Self::Starting),
            Ok(lithos::InstanceState::Backoff) => Ok(Self::Backoff),
            Ok(lithos::InstanceState::FailedSetup) => Ok(Self::FailedSetup),
            Ok(lithos::InstanceState::GaveUp) => Ok(Self::GaveUp),
            Ok(lithos::InstanceState::Unspecified) | Err(_) => {
                Err(ConversionError::InvalidEnum { field, value })
            }
        }
    }
}

impl From<InstanceState> for lithos::InstanceState {
    fn from(state: InstanceState) -> Self {
        match state {
            InstanceState::Running => Self::Running,
            InstanceState::Starting => Self::Starting,
            InstanceState::Backoff => Self::Backoff,
            InstanceState::FailedSetup => Self::FailedSetup,
            InstanceState::GaveUp => Self::GaveUp,
        }
    }
}

/// Why a container process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitReason {
    Code(i32),
    Signal(i32),
}

/// How a container process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Exit {
    pub reason: ExitReason,
    /// The cgroup's OOM killer fired while it ran.
    pub oom: bool,
}

impl TryFrom<lithos::Exit> for Exit {
    type Error = ConversionError;

    fn try_from(exit: lithos::Exit) -> Result<Self, Self::Error> {
        let reason = match exit.reason.ok_or(ConversionError::Missing {
            field: "exit.reason",
        })? {
            lithos::exit::Reason::Code(code) => ExitReason::Code(code),
            lithos::exit::Reason::Signal(signal) => ExitReason::Signal(signal),
        };
        Ok(Self {
            reason,
            oom: exit.oom,
        })
    }
}

impl From<Exit> for lithos::Exit {
    fn from(exit: Exit) -> Self {
        let reason = match exit.reason {
            ExitReason::Code(code) => lithos::exit::Reason::Code(code),
            ExitReason::Signal(signal) => lithos::exit::Reason::Signal(signal),
        };
        Self {
            reason: Some(reason),
            oom: exit.oom,
        }
    }
}

/// One instance in lithos' `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `sandbox/process.N`.
    pub name: String,
    pub knot_pid: Option<u32>,
    pub pid: Option<u32>,
    pub state: InstanceState,
    pub uptime: Option<Duration>,
    pub restarts: u64,
    pub failures: u32,
    pub next_start: Option<SystemTime>,
    pub last_exit: Option<Exit>,
}

impl TryFrom<lithos::Instance> for Instance {
    type Error = ConversionError;

    fn try_from(instance: lithos::Instance) -> Result<Self, Self::Error> {
        Ok(Self {
            state: InstanceState::from_field("instance.state", instance.state)?,
            last_exit: instance.last_exit.map(Exit::try_from).transpose()?,
            name: instance.name,
            knot_pid: instance.knot_pid,
            pid: instance.pid,
            uptime: instance.uptime_ms.map(Duration::from_millis),
            restarts: instance.restarts,
            failures: instance.failures,
            next_start: instance.next_start_ms.map(from_ms),
        })
    }
}

impl From<Instance> for lithos::Instance {
    fn from(instance: Instance) -> Self {
        Self {
            name: instance.name,
            knot_pid: instance.knot_pid,
            pid: instance.pid,
            state: lithos::InstanceState::from(instance.state).into(),
            uptime_ms: instance.uptime.map(duration_ms),
            restarts: instance.restarts,
            failures: instance.failures,
            next_start_ms: instance.next_start.map(to_ms),
            last_exit: instance.last_exit.map(lithos::Exit::from),
        }
    }
}

/// A schedule published by a verwalter leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// SHA-1 (hex) of the canonical JSON of `data`.
    pub hash: String,
    pub timestamp: SystemTime,
    /// The leader that made it.
    pub origin: MachineId,
    /// The scheduler's output as canonical JSON.
    pub data: String,
}

impl TryFrom<verwalter::Schedule> for Schedule {
    type Error = ConversionError;

    fn try_from(schedule: verwalter::Schedule) -> Result<Self, Self::Error> {
        Ok(Self {
            origin: MachineId::from_field("schedule.origin", &schedule.origin)?,
            hash: schedule.hash,
            timestamp: from_ms(schedule.timestamp_ms),
            data: schedule.data_json,
        })
    }
}

impl From<Schedule> for verwalter::Schedule {
    fn from(schedule: Schedule) -> Self {
        Self {
            hash: schedule.hash,
            timestamp_ms: to_ms(schedule.timestamp),
            origin: schedule.origin.into(),
            data_json: schedule.data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID_HEX: &str = "3f1c0a9b8e7d6c5b4a39281706f5e4d3";

    fn id() -> MachineId {
        ID_HEX.parse().unwrap()
    }

    fn peer() -> Peer {
        Peer {
            id: id(),
            name: "b".into(),
            hostname: "b.example".into(),
            primary_addr: "10.7.0.2:22682".into(),
            addresses: vec!["10.7.0.2:22682".into()],
            state: PeerState::Suspect,
            state_since: from_ms(1_700_000_000_300),
            known_since: from_ms(1_700_000_000_000),
            last_report_direct: Some(from_ms(1_700_000_041_000)),
            rtt: Some(Duration::from_micros(250)),
            report: Some(Report {
                timestamp: from_ms(1_700_000_041_000),
                peers: 2,
                has_remote: true,
            }),
        }
    }

    fn instance() -> Instance {
        Instance {
            name: "demo/w.0".into(),
            knot_pid: Some(10),
            pid: Some(11),
            state: InstanceState::Backoff,
            uptime: None,
            restarts: 3,
            failures: 2,
            next_start: Some(from_ms(1_700_000_050_000)),
            last_exit: Some(Exit {
                reason: ExitReason::Signal(9),
                oom: true,
            }),
        }
    }

    #[test]
    fn machine_id_hex_round_trip() {
        assert_eq!(id().to_string(), ID_HEX);
        assert_eq!(id().as_bytes()[0], 0x3f);
        let upper: MachineId = ID_HEX.to_uppercase().parse().unwrap();
        assert_eq!(upper, id());
        assert_eq!(format!("{:?}", id()), format!("MachineId({ID_HEX})"));
    }

    #[test]
    fn machine_id_rejects_bad_hex() {
        for bad in [
            "",
            "3f1c",
            "3f1c0a9b8e7d6c5b4a39281706f5e4d3aa",
            "3f1c0a9b8e7d6c5b4a39281706f5e4dz",
            "+f1c0a9b8e7d6c5b4a39281706f5e4d3",
            "3f1c0a9b8e7d6c5b4a39281706f5e4\u{e9}",
        ] {
            assert_eq!(
                bad.parse::<MachineId>(),
                Err(ParseMachineIdError {
                    value: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn peer_event_round_trips() {
        let events = [
            PeerEvent::Snapshot(vec![peer()]),
            PeerEvent::Joined(peer()),
            PeerEvent::Updated(peer()),
            PeerEvent::StateChanged {
                id: id(),
                state: PeerState::Dead,
                since: from_ms(5),
            },
            PeerEvent::Removed(id()),
        ];
        for event in events {
            let pb = cantal::PeerEvent::from(event.clone());
            assert_eq!(PeerEvent::try_from(pb), Ok(event));
        }
    }

    #[test]
    fn peer_rejects_short_id() {
        let mut pb = cantal::Peer::from(peer());
        pb.id.truncate(3);
        assert_eq!(
            Peer::try_from(pb),
            Err(ConversionError::MachineIdLength {
                field: "peer.id",
                len: 3
            })
        );
    }

    #[test]
    fn peer_rejects_unknown_and_unspecified_state() {
        for value in [0, 42] {
            let mut pb = cantal::Peer::from(peer());
            pb.state = value;
            let err = Peer::try_from(pb).unwrap_err();
            assert_eq!(
                err,
                ConversionError::InvalidEnum {
                    field: "peer.state",
                    value
                }
            );
            assert_eq!(
                err.to_string(),
                format!("peer.state: invalid enum value {value}")
            );
        }
    }

    #[test]
    fn peer_event_rejects_missing_parts() {
        let empty = cantal::PeerEvent { event: None };
        assert_eq!(
            PeerEvent::try_from(empty),
            Err(ConversionError::Missing {
                field: "peer_event.event"
            })
        );
        use cantal::peer_event::Event;
        let joined = cantal::PeerEvent {
            event: Some(Event::Joined(cantal::Joined { peer: None })),
        };
        assert_eq!(
            PeerEvent::try_from(joined),
            Err(ConversionError::Missing {
                field: "joined.peer"
            })
        );
        let updated = cantal::PeerEvent {
            event: Some(Event::Updated(cantal::Updated { peer: None })),
        };
        assert_eq!(
            PeerEvent::try_from(updated),
            Err(ConversionError::Missing {
                field: "updated.peer"
            })
        );
    }

    #[test]
    fn peer_event_rejects_bad_ids_and_states() {
        use cantal::peer_event::Event;
        let changed = |id: Vec<u8>, state| cantal::PeerEvent {
            event: Some(Event::StateChanged(cantal::StateChanged {
                id,
                state,
                since_ms: 0,
            })),
        };
        assert_eq!(
            PeerEvent::try_from(changed(vec![1; 17], 1)),
            Err(ConversionError::MachineIdLength {
                field: "state_changed.id",
                len: 17
            })
        );
        assert_eq!(
            PeerEvent::try_from(changed(id().into(), 9)),
            Err(ConversionError::InvalidEnum {
                field: "state_changed.state",
                value: 9
            })
        );
        let removed = cantal::PeerEvent {
            event: Some(Event::Removed(cantal::Removed { id: Vec::new() })),
        };
        assert_eq!(
            PeerEvent::try_from(removed),
            Err(ConversionError::MachineIdLength {
                field: "removed.id",
                len: 0
            })
        );
        let mut bad_peer = cantal::Peer::from(peer());
        bad_peer.id = vec![0; 4];
        let snapshot = cantal::PeerEvent {
            event: Some(Event::Snapshot(cantal::Snapshot {
                peers: vec![peer().into(), bad_peer],
            })),
        };
        assert_eq!(
            PeerEvent::try_from(snapshot),
            Err(ConversionError::MachineIdLength {
                field: "peer.id",
                len: 4
            })
        );
    }

    #[test]
    fn instance_round_trips() {
        let pb = lithos::Instance::from(instance());
        assert_eq!(Instance::try_from(pb), Ok(instance()));
        let exit = Exit {
            reason: ExitReason::Code(1),
            oom: false,
        };
        assert_eq!(Exit::try_from(lithos::Exit::from(exit)), Ok(exit));
    }

    #[test]
    fn instance_rejects_invalid_state() {
        for value in [0, 6] {
            let mut pb = lithos::Instance::from(instance());
            pb.state = value;
            assert_eq!(
                Instance::try_from(pb),
                Err(ConversionError::InvalidEnum {
                    field: "instance.state",
                    value
                })
            );
        }
    }

    #[test]
    fn exit_requires_a_reason() {
        let mut pb = lithos::Instance::from(instance());
        pb.last_exit = Some(lithos::Exit {
            reason: None,
            oom: true,
        });
        assert_eq!(
            Instance::try_from(pb),
            Err(ConversionError::Missing {
                field: "exit.reason"
            })
        );
    }

    #[test]
    fn schedule_round_trips_and_checks_origin() {
        let schedule = Schedule {
            hash: "da39a3ee5e6b4b0d3255bfef95601890afd80709".into(),
            timestamp: from_ms(1_700_000_000_000),
            origin: id(),
            data: "{}".into(),
        };
        let pb = verwalter::Schedule::from(schedule.clone());
        assert_eq!(Schedule::try_from(pb.clone()), Ok(schedule));
        let bad = verwalter::Schedule {
            origin: vec![0; 15],
            ..pb
        };
        assert_eq!(
            Schedule::try_from(bad),
            Err(ConversionError::MachineIdLength {
                field: "schedule.origin",
                len: 15
            })
        );
    }

    #[test]
    fn times_before_the_epoch_become_zero() {
        assert_eq!(to_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(duration_ms(Duration::MAX), u64::MAX);
    }
}
