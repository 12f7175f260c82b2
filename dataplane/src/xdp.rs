//! The XDP first stage: the embedded program and its loader.
//!
//! [`XdpStage`] loads the object built by `build.rs`, keeps every map pinned under
//! `/sys/fs/bpf/sluice/<instance>/` and pins the XDP link there too, so a dataplane restart (or
//! crash) leaves the program attached and the shield and relays working; the next
//! [`XdpStage::open`] re-uses the pinned maps as they are and swaps its freshly verified program
//! into the pinned link atomically (`BPF_LINK_UPDATE`). [`XdpStage::unpin`] is the only way the
//! stage goes away.
//!
//! The tables mirror the dataplane's legs: [`XdpStage::add_leg`] (local port + remote address),
//! [`XdpStage::allow_ssrc`] (SSRCs the leg publishes), [`XdpStage::add_relay`] (in-kernel relay
//! legs), [`XdpStage::set_port_range`]. Types and map names come from `sluice-common`, the crate the
//! program itself is built against.

use std::{
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray, ProgramArray, XskMap},
    programs::{
        TestRun as _, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use sluice_common::{
    ChannelKey, ChannelTarget, FlowKey, LegValue, PortRange, RELAY_SAME_INTERFACE, RelayTarget, SilenceGate, SsrcKey, SsrcValue, TurnPorts, XdpVerdict,
};
use sluice_core::ids::{LegId, Ssrc};

pub use sluice_common::XdpVerdict as Verdict;

/// The XDP object file (BPF ELF with BTF), aligned so aya can parse it in place.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-xdp"));

/// Where instances pin their maps and links: `PIN_ROOT/<instance>/`.
pub const PIN_ROOT: &str = "/sys/fs/bpf/sluice";

/// Everything that can go wrong on the XDP cold path, with what was being done to what.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// Parsing the object, creating or re-opening its maps.
    #[error("{op} (pin dir {path:?}): {source}")]
    Load {
        /// What was being done.
        op: &'static str,
        /// The pin directory, if any.
        path: Option<PathBuf>,
        /// The cause.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// Loading, attaching or running the program.
    #[error("{op} ({target}): {source}")]
    Program {
        /// What was being done.
        op: &'static str,
        /// The program or interface concerned.
        target: String,
        /// The cause.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map operation.
    #[error("{op} on map {map}: {source}")]
    Map {
        /// What was being done.
        op: &'static str,
        /// The map concerned.
        map: &'static str,
        /// The cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// A devmap insert.
    #[error("{op} on map {map}: {source}")]
    DevMap {
        /// What was being done.
        op: &'static str,
        /// The map concerned.
        map: &'static str,
        /// The cause.
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    /// The object has no map of that name (object and `sluice-common` out of sync).
    #[error("map {map} missing from the XDP object")]
    MissingMap {
        /// The map concerned.
        map: &'static str,
    },
    /// A filesystem operation on the pin directory.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Pinning or re-opening a link.
    #[error("{op} {path:?}: {source}")]
    Link {
        /// What was being done.
        op: &'static str,
        /// The pin path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A relay target mixing IPv4 and IPv6.
    #[error("relay for port {local_port} from {remote}: {reason}")]
    InvalidRelay {
        /// The relay leg's local port.
        local_port: u16,
        /// The relay leg's remote address.
        remote: SocketAddr,
        /// What is wrong.
        reason: &'static str,
    },
}

type Result<T, E = XdpError> = std::result::Result<T, E>;

/// How [`XdpStage::attach`] ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP.
    Driver,
    /// Generic (SKB) XDP: the driver has no XDP support; slower, still before the UDP stack.
    Generic,
    /// A pinned link from a previous run was found and now runs this program.
    ReusedPinnedLink,
}

/// Where a relay leg sends its rewritten packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    /// Back out of the interface it came in on (XDP_TX).
    SameInterface,
    /// Out of another interface (XDP_REDIRECT through the devmap); the index must be non-zero
    /// and is resolved by the kernel in the network namespace of the thread calling
    /// [`XdpStage::add_relay`].
    Interface(u32),
}

/// The rewrite for one relay leg: the new 5-tuple and Ethernet addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayRoute {
    /// Our address and port on the egress side (the new source).
    pub src: SocketAddr,
    /// The other party (the new destination). Same family as `src` and the ingress packets.
    pub dst: SocketAddr,
    /// Egress interface MAC.
    pub src_mac: [u8; 6],
    /// Next-hop MAC.
    pub dst_mac: [u8; 6],
    /// Which interface to send on.
    pub egress: Egress,
}

/// The per-verdict packet counts, summed over CPUs; and the TURN stage's (ChannelData datagrams
/// and payload bytes unwrapped), which the shield publishes with them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounts(pub [u64; XdpVerdict::COUNT as usize], pub (u64, u64));

impl VerdictCounts {
    /// The count for one verdict.
    pub fn get(&self, verdict: XdpVerdict) -> u64 {
        self.0[verdict as usize]
    }

    /// `(name, count)` for every verdict, in index order (Prometheus labels).
    pub fn iter(&self) -> impl Iterator<Item = (XdpVerdict, u64)> + '_ {
        XdpVerdict::ALL.iter().map(|v| (*v, self.get(*v)))
    }

    /// All packets counted.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// One `BPF_PROG_TEST_RUN` result.
#[derive(Clone, Copy, Debug)]
pub struct TestRunOutcome {
    /// The XDP action the program returned.
    pub action: u32,
    /// Bytes written to the output buffer (the frame after the program ran).
    pub len: usize,
    /// Average time per run, as the kernel measured it.
    pub duration: Duration,
}

/// An attachment this process holds.
#[derive(Debug)]
enum Attachment {
    /// Pinned: closing the fd leaves the program attached.
    Pinned(PinnedLink),
    /// Unpinned: closing the fd detaches.
    Owned { _link: FdLink },
    /// Re-opened from a pin (the pin file stays).
    Reopened { _link: FdLink, path: PathBuf },
}

/// The loaded XDP stage: program, maps, and the links this process attached or re-opened.
#[derive(Debug)]
pub struct XdpStage {
    // Field order matters on drop: links first (closing fds), then the object.
    links: Vec<(String, Attachment)>,
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
}

fn map_err(op: &'static str, map: &'static str) -> impl FnOnce(aya::maps::MapError) -> XdpError {
    move |source| XdpError::Map { op, map, source }
}

/// A delete of an absent key (`ENOENT`) is not an error for the callers that diff.
fn absent_ok(e: aya::maps::MapError) -> Result<(), aya::maps::MapError> {
    match &e {
        aya::maps::MapError::KeyNotFound => Ok(()),
        aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        _ => Err(e),
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> XdpError {
    let path = path.to_owned();
    move |source| XdpError::Io { op, path, source }
}

fn v6_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The leg/relay map key of a transport (IPv4 stored v4-mapped).
pub fn flow_key(local_port: u16, remote: SocketAddr) -> FlowKey {
    FlowKey::new(local_port, v6_bytes(remote.ip()), remote.port())
}

impl XdpStage {
    /// Loads the embedded object with every map pinned under `PIN_ROOT/<instance>/`: maps already
    /// pinned there (a previous run) are re-used with their contents. Loads the program (verifier).
    pub fn open(instance: &str) -> Result<Self> {
        Self::open_at(Path::new(PIN_ROOT).join(instance))
    }

    /// [`XdpStage::open`] with an explicit pin directory (on a bpffs).
    pub fn open_at(pin_dir: impl Into<PathBuf>) -> Result<Self> {
        let pin_dir = pin_dir.into();
        std::fs::create_dir_all(&pin_dir).map_err(io_err("create pin directory", &pin_dir))?;
        let ebpf = Self::load_object(&pin_dir)?;
        let mut stage = Self { links: Vec::new(), ebpf, pin_dir: Some(pin_dir) };
        stage.load_program()?;
        Ok(stage)
    }

    /// Loads a private copy: maps live only as long as this object (tests, measurements). The
    /// object declares its maps pinned by name, so they are created in a scratch directory whose
    /// pins are removed at once.
    pub fn load_unpinned() -> Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let scratch = Path::new(PIN_ROOT).join(format!("scratch-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&scratch).map_err(io_err("create scratch pin directory", &scratch))?;
        let loaded = Self::load_object(&scratch);
        let cleaned = remove_map_pins(&scratch);
        let ebpf = loaded?;
        cleaned?;
        let mut stage = Self { links: Vec::new(), ebpf, pin_dir: None };
        stage.load_program()?;
        Ok(stage)
    }

    fn load_object(pin_dir: &Path) -> Result<Ebpf> {
        // A pinned map is re-used as it is (aya does not compare its shape with the object's):
        // the verdict counters grew with the TURN stage, so a previous version's array is
        // dropped and made afresh (counters start over; nothing else depends on them).
        let verdicts = pin_dir.join(sluice_common::VERDICTS_MAP);
        if let Ok(info) = aya::maps::MapInfo::from_pin(&verdicts)
            && info.max_entries() != XdpVerdict::COUNT
        {
            tracing::info!(path = %verdicts.display(), was = info.max_entries(), now = XdpVerdict::COUNT, "re-creating the XDP verdict counters (a new verdict)");
            std::fs::remove_file(&verdicts).map_err(io_err("remove an old verdict counter pin", &verdicts))?;
        }
        EbpfLoader::new().default_map_pin_directory(pin_dir).load(XDP_OBJECT).map_err(|source| XdpError::Load {
            op: "load XDP object",
            path: Some(pin_dir.to_owned()),
            source: Box::new(source),
        })
    }

    /// Loads (verifies) the main program and the TURN stage, and registers both in the program
    /// array they tail-call each other through.
    fn load_program(&mut self) -> Result<()> {
        self.program_mut()?.load().map_err(|source| XdpError::Program { op: "load (verify) program", target: sluice_common::XDP_PROGRAM.into(), source })?;
        let turn_err = |op| move |source| XdpError::Program { op, target: sluice_common::TURN_PROGRAM.into(), source };
        let turn: &mut Xdp = self
            .ebpf
            .program_mut(sluice_common::TURN_PROGRAM)
            .ok_or(XdpError::MissingMap { map: sluice_common::TURN_PROGRAM })?
            .try_into()
            .map_err(turn_err("find program"))?;
        turn.load().map_err(turn_err("load (verify) program"))?;
        let turn_fd = turn.fd().map_err(turn_err("program fd"))?.try_clone().map_err(|e| turn_err("dup program fd")(e.into()))?;
        let main_fd = self.program_mut()?.fd().map_err(|source| XdpError::Program { op: "program fd", target: sluice_common::XDP_PROGRAM.into(), source })?;
        let main_fd =
            main_fd.try_clone().map_err(|e| XdpError::Program { op: "dup program fd", target: sluice_common::XDP_PROGRAM.into(), source: e.into() })?;
        const M: &str = sluice_common::PROGS_MAP;
        let mut progs: ProgramArray<&mut MapData> = self.map_mut(M)?;
        progs.set(sluice_common::PROG_TURN, &turn_fd, 0).map_err(map_err("register the TURN stage", M))?;
        progs.set(sluice_common::PROG_MAIN, &main_fd, 0).map_err(map_err("register the main program", M))
    }

    fn program_mut(&mut self) -> Result<&mut Xdp> {
        let prog = self.ebpf.program_mut(sluice_common::XDP_PROGRAM).ok_or(XdpError::MissingMap { map: sluice_common::XDP_PROGRAM })?;
        prog.try_into().map_err(|source| XdpError::Program { op: "find program", target: sluice_common::XDP_PROGRAM.into(), source })
    }

    /// The pin directory, if this stage is pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    fn link_pin_path(&self, interface: &str) -> Option<PathBuf> {
        self.pin_dir.as_ref().map(|d| d.join(format!("link-{interface}")))
    }

    /// Attaches to `interface` (in the calling thread's network namespace). A pinned link left by a
    /// previous run is re-used and switched to this program atomically; otherwise attaches in
    /// driver mode, falling back to generic (SKB) mode with a warning. Pinned stages pin the link,
    /// so the program stays attached when this object is dropped.
    pub fn attach(&mut self, interface: &str) -> Result<AttachMode> {
        let pin_path = self.link_pin_path(interface);
        if let Some(path) = pin_path.as_ref().filter(|p| p.exists()) {
            match self.reuse_pinned_link(path) {
                Ok(link) => {
                    tracing::info!(interface, path = %path.display(), "re-using pinned XDP link");
                    self.links.push((interface.to_owned(), Attachment::Reopened { _link: link, path: path.clone() }));
                    return Ok(AttachMode::ReusedPinnedLink);
                }
                Err(e) => {
                    tracing::warn!(interface, error = %e, "pinned XDP link unusable; re-attaching");
                    std::fs::remove_file(path).map_err(io_err("remove stale link pin", path))?;
                }
            }
        }

        let prog = self.program_mut()?;
        let (link_id, mode) = match prog.attach(interface, XdpMode::Driver) {
            Ok(id) => (id, AttachMode::Driver),
            Err(driver_err) => {
                tracing::warn!(
                    interface,
                    error = %driver_err,
                    "native XDP unavailable; falling back to generic (SKB) mode"
                );
                let id = prog.attach(interface, XdpMode::Skb).map_err(|source| XdpError::Program {
                    op: "attach (generic mode)",
                    target: interface.into(),
                    source,
                })?;
                (id, AttachMode::Generic)
            }
        };
        let link = prog.take_link(link_id).map_err(|source| XdpError::Program { op: "take link", target: interface.into(), source })?;
        let link = FdLink::try_from(link).map_err(|source| XdpError::Link {
            op: "convert to an fd link (netlink attachments cannot be pinned)",
            path: pin_path.clone().unwrap_or_default(),
            source: Box::new(source),
        })?;
        let attachment = match pin_path {
            Some(path) => Attachment::Pinned(link.pin(&path).map_err(|source| XdpError::Link { op: "pin link", path, source: Box::new(source) })?),
            None => Attachment::Owned { _link: link },
        };
        self.links.push((interface.to_owned(), attachment));
        tracing::info!(interface, ?mode, "XDP stage attached");
        Ok(mode)
    }

    fn reuse_pinned_link(&mut self, path: &Path) -> Result<FdLink> {
        let link_err = |op, source: Box<dyn std::error::Error + Send + Sync>| XdpError::Link { op, path: path.to_owned(), source };
        let pinned = PinnedLink::from_pin(path).map_err(|e| link_err("open pinned link", Box::new(e)))?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| link_err("open pinned link as XDP", Box::new(e)))?;
        let prog = self.program_mut()?;
        let id = prog.attach_to_link(link).map_err(|e| link_err("switch pinned link to this program", Box::new(e)))?;
        let link = prog.take_link(id).map_err(|e| link_err("take link", Box::new(e)))?;
        FdLink::try_from(link).map_err(|e| link_err("convert to an fd link", Box::new(e)))
    }

    fn config(&self) -> Result<PortRange> {
        const M: &str = sluice_common::CONFIG_MAP;
        let map = self.ebpf.map(M).ok_or(XdpError::MissingMap { map: M })?;
        let map: Array<&MapData, PortRange> = Array::try_from(map).map_err(map_err("open", M))?;
        map.get(&0, 0).map_err(map_err("read config", M))
    }

    fn set_config(&mut self, config: PortRange, op: &'static str) -> Result<()> {
        const M: &str = sluice_common::CONFIG_MAP;
        let mut map: Array<&mut MapData, PortRange> = self.map_mut(M)?;
        map.set(0, config, 0).map_err(map_err(op, M))
    }

    /// Sets the media port range (inclusive); UDP to other ports is never looked at. The mode
    /// ([`XdpStage::set_af_xdp`]) is kept.
    pub fn set_port_range(&mut self, range: RangeInclusive<u16>) -> Result<()> {
        let flags = self.config()?.flags;
        self.set_config(PortRange { lo: *range.start(), hi: *range.end(), flags }, "set port range")
    }

    /// Turns the stage off without detaching it: every packet passes untouched
    /// (`pass_outside_range`), relays included. The mode is kept.
    pub fn clear_port_range(&mut self) -> Result<()> {
        let flags = self.config()?.flags;
        self.set_config(PortRange { lo: 1, hi: 0, flags }, "clear port range")
    }

    /// AF_XDP mode on or off: when on, known media is redirected to the AF_XDP socket bound on
    /// the receiving queue ([`XdpStage::set_xsk`]), or passes if that queue has none.
    pub fn set_af_xdp(&mut self, on: bool) -> Result<()> {
        let mut config = self.config()?;
        if on {
            config.flags |= sluice_common::CONFIG_AF_XDP;
        } else {
            config.flags &= !sluice_common::CONFIG_AF_XDP;
        }
        self.set_config(config, "set AF_XDP mode")
    }

    /// Registers the AF_XDP socket `xsk` (bound to `queue` of the interface the program is
    /// attached to) as the redirect target for media arriving on that queue.
    pub fn set_xsk(&mut self, queue: u32, xsk: std::os::fd::BorrowedFd<'_>) -> Result<()> {
        const M: &str = sluice_common::XSKS_MAP;
        let mut map: XskMap<&mut MapData> = self.map_mut(M)?;
        map.set(queue, xsk.as_raw_fd(), 0).map_err(map_err("set xsk", M))
    }

    /// Withdraws the AF_XDP socket of `queue` (its media passes to the kernel again).
    pub fn unset_xsk(&mut self, queue: u32) -> Result<()> {
        const M: &str = sluice_common::XSKS_MAP;
        let mut map: XskMap<&mut MapData> = self.map_mut(M)?;
        map.unset(queue).map_err(map_err("unset xsk", M))
    }

    /// Lets RTP/RTCP from `remote` to `local_port` through the shield as leg `leg` owned by
    /// `worker`. RTP additionally needs [`XdpStage::allow_ssrc`].
    pub fn add_leg(&mut self, local_port: u16, remote: SocketAddr, leg: LegId, worker: u32) -> Result<()> {
        const M: &str = sluice_common::LEGS_MAP;
        let mut map: HashMap<&mut MapData, FlowKey, LegValue> = self.map_mut(M)?;
        map.insert(flow_key(local_port, remote), LegValue { leg: leg.0, worker }, 0).map_err(map_err("add leg", M))
    }

    /// Forgets a leg's transport (its SSRCs are separate entries: revoke them too).
    pub fn remove_leg(&mut self, local_port: u16, remote: SocketAddr) -> Result<()> {
        const M: &str = sluice_common::LEGS_MAP;
        let mut map: HashMap<&mut MapData, FlowKey, LegValue> = self.map_mut(M)?;
        map.remove(&flow_key(local_port, remote)).map_err(map_err("remove leg", M))
    }

    /// Announces that `leg` publishes `ssrc` on `local_port`.
    pub fn allow_ssrc(&mut self, local_port: u16, ssrc: Ssrc, leg: LegId) -> Result<()> {
        self.insert_ssrc_key(SsrcKey::one(local_port, ssrc.0), leg)
    }

    /// Withdraws an SSRC announcement.
    pub fn revoke_ssrc(&mut self, local_port: u16, ssrc: Ssrc) -> Result<()> {
        self.remove_ssrc_key(SsrcKey::one(local_port, ssrc.0))
    }

    /// Lets every SSRC from `leg` on `local_port` through (a layer whose SSRC is not signalled
    /// announces itself with its RID; the worker authenticates it and learns it).
    pub fn allow_any_ssrc(&mut self, local_port: u16, leg: LegId) -> Result<()> {
        self.insert_ssrc_key(SsrcKey::any(local_port), leg)
    }

    /// Withdraws the any-SSRC wildcard of a port.
    pub fn revoke_any_ssrc(&mut self, local_port: u16) -> Result<()> {
        self.remove_ssrc_key(SsrcKey::any(local_port))
    }

    /// Inserts a raw SSRC-map entry (exact or wildcard).
    pub fn insert_ssrc_key(&mut self, key: SsrcKey, leg: LegId) -> Result<()> {
        const M: &str = sluice_common::SSRCS_MAP;
        let mut map: HashMap<&mut MapData, SsrcKey, SsrcValue> = self.map_mut(M)?;
        map.insert(key, SsrcValue { leg: leg.0 }, 0).map_err(map_err("allow ssrc", M))
    }

    /// Removes a raw SSRC-map entry; an absent entry is not an error.
    pub fn remove_ssrc_key(&mut self, key: SsrcKey) -> Result<()> {
        self.hash_remove::<SsrcKey, SsrcValue>(sluice_common::SSRCS_MAP, &key, "revoke ssrc")
    }

    /// Gates the silence of audio stream `ssrc` on `local_port` (top-N audio: its packets whose
    /// level in one-byte extension `ext` is not speech are dropped, each
    /// [`sluice_common::SILENT_KEEPALIVE`]-th of a run passed); `vad`: the sender runs a VAD.
    pub fn gate_silence(&mut self, local_port: u16, ssrc: Ssrc, ext: u8, vad: bool) -> Result<()> {
        const M: &str = sluice_common::SILENCE_MAP;
        let mut map: HashMap<&mut MapData, SsrcKey, SilenceGate> = self.map_mut(M)?;
        let gate = SilenceGate { ext, vad: u8::from(vad), pad: 0, run: 0 };
        map.insert(SsrcKey::one(local_port, ssrc.0), gate, 0).map_err(map_err("gate silence", M))
    }

    /// Lifts a silence gate; an absent one is not an error.
    pub fn ungate_silence(&mut self, local_port: u16, ssrc: Ssrc) -> Result<()> {
        self.hash_remove::<SsrcKey, SilenceGate>(sluice_common::SILENCE_MAP, &SsrcKey::one(local_port, ssrc.0), "ungate silence")
    }

    /// Every silence gate.
    pub fn silence_gates(&self) -> Result<Vec<(SsrcKey, SilenceGate)>> {
        self.hash_entries(sluice_common::SILENCE_MAP)
    }

    /// Lets RTP/RTCP from any remote to `local_port` through as leg `leg` (the leg's remote is
    /// not latched yet); [`XdpStage::add_leg`] with the latched remote replaces it.
    pub fn add_leg_any_remote(&mut self, local_port: u16, leg: LegId, worker: u32) -> Result<()> {
        self.insert_flow_key(FlowKey::any_remote(local_port), LegValue { leg: leg.0, worker })
    }

    /// Withdraws the any-remote wildcard of a port.
    pub fn remove_leg_any_remote(&mut self, local_port: u16) -> Result<()> {
        self.remove_flow_key(FlowKey::any_remote(local_port))
    }

    /// Inserts a raw leg-map entry (exact or wildcard).
    pub fn insert_flow_key(&mut self, key: FlowKey, value: LegValue) -> Result<()> {
        const M: &str = sluice_common::LEGS_MAP;
        let mut map: HashMap<&mut MapData, FlowKey, LegValue> = self.map_mut(M)?;
        map.insert(key, value, 0).map_err(map_err("add leg", M))
    }

    /// Removes a raw leg-map entry; an absent entry is not an error.
    pub fn remove_flow_key(&mut self, key: FlowKey) -> Result<()> {
        self.hash_remove::<FlowKey, LegValue>(sluice_common::LEGS_MAP, &key, "remove leg")
    }

    /// Every entry of the leg map (what a previous run left, when re-opened from pins).
    pub fn flow_keys(&self) -> Result<Vec<(FlowKey, LegValue)>> {
        self.hash_entries(sluice_common::LEGS_MAP)
    }

    /// Every entry of the SSRC map.
    pub fn ssrc_keys(&self) -> Result<Vec<(SsrcKey, SsrcValue)>> {
        self.hash_entries(sluice_common::SSRCS_MAP)
    }

    /// Every relay entry.
    pub fn relay_keys(&self) -> Result<Vec<(FlowKey, RelayTarget)>> {
        self.hash_entries(sluice_common::RELAYS_MAP)
    }

    /// Removes `key` from the hash map `name`; an absent key is not an error (callers diff).
    fn hash_remove<K: aya::Pod, V: aya::Pod>(&mut self, name: &'static str, key: &K, op: &'static str) -> Result<()> {
        let mut map: HashMap<&mut MapData, K, V> = self.map_mut(name)?;
        map.remove(key).or_else(absent_ok).map_err(map_err(op, name))
    }

    fn hash_entries<K: aya::Pod, V: aya::Pod>(&self, name: &'static str) -> Result<Vec<(K, V)>> {
        let map = self.ebpf.map(name).ok_or(XdpError::MissingMap { map: name })?;
        let map: HashMap<&MapData, K, V> = HashMap::try_from(map).map_err(map_err("open", name))?;
        map.iter().collect::<Result<_, _>>().map_err(map_err("iterate", name))
    }

    /// Removes a raw relay entry; an absent entry is not an error.
    pub fn remove_relay_key(&mut self, key: FlowKey) -> Result<()> {
        self.hash_remove::<FlowKey, RelayTarget>(sluice_common::RELAYS_MAP, &key, "remove relay")
    }

    /// Installs (or replaces) a relay leg: datagrams from `remote` to `local_port` are rewritten
    /// to `route` and forwarded in the kernel.
    pub fn add_relay(&mut self, local_port: u16, remote: SocketAddr, route: &RelayRoute) -> Result<()> {
        let invalid = |reason| XdpError::InvalidRelay { local_port, remote, reason };
        if route.src.is_ipv4() != remote.is_ipv4() || route.dst.is_ipv4() != remote.is_ipv4() {
            return Err(invalid("relay addresses must be of the ingress address family"));
        }
        let ifindex = match route.egress {
            Egress::SameInterface => RELAY_SAME_INTERFACE,
            Egress::Interface(0) => return Err(invalid("egress interface index 0")),
            Egress::Interface(i) => {
                const D: &str = sluice_common::TX_PORTS_MAP;
                let mut ports: DevMapHash<&mut MapData> = self.map_mut(D)?;
                ports.insert(i, i, None, 0).map_err(|source| XdpError::DevMap { op: "add egress interface", map: D, source })?;
                i
            }
        };
        let target = RelayTarget {
            src_addr: v6_bytes(route.src.ip()),
            dst_addr: v6_bytes(route.dst.ip()),
            src_port: route.src.port(),
            dst_port: route.dst.port(),
            dst_mac: route.dst_mac,
            src_mac: route.src_mac,
            ifindex,
        };
        const M: &str = sluice_common::RELAYS_MAP;
        let mut map: HashMap<&mut MapData, FlowKey, RelayTarget> = self.map_mut(M)?;
        map.insert(flow_key(local_port, remote), target, 0).map_err(map_err("add relay", M))
    }

    /// Removes a relay leg (its egress interface stays in the devmap: harmless and shared).
    pub fn remove_relay(&mut self, local_port: u16, remote: SocketAddr) -> Result<()> {
        const M: &str = sluice_common::RELAYS_MAP;
        let mut map: HashMap<&mut MapData, FlowKey, RelayTarget> = self.map_mut(M)?;
        map.remove(&flow_key(local_port, remote)).map_err(map_err("remove relay", M))
    }

    /// Sets the TURN server's UDP listening port (0: none): ChannelData to it on a channel route
    /// ([`XdpStage::add_channel`]) is unwrapped in the stage.
    pub fn set_turn_port(&mut self, port: u16) -> Result<()> {
        const M: &str = sluice_common::TURN_MAP;
        let mut map: Array<&mut MapData, TurnPorts> = self.map_mut(M)?;
        map.set(0, TurnPorts { udp: port, pad: 0 }, 0).map_err(map_err("set TURN port", M))
    }

    /// The key of a channel route: the client's transport on the listener port, the channel.
    pub fn channel_key(client: SocketAddr, server_port: u16, channel: u16) -> ChannelKey {
        ChannelKey { client_addr: v6_bytes(client.ip()), client_port: client.port(), server_port, channel, pad: 0 }
    }

    /// Installs a channel route: ChannelData from `client` to `server_port` on `channel` is
    /// unwrapped into a datagram from `relayed` to `peer` (one of the node's legs).
    pub fn add_channel(&mut self, client: SocketAddr, server_port: u16, channel: u16, relayed: SocketAddr, peer: SocketAddr) -> Result<()> {
        const M: &str = sluice_common::CHANNELS_MAP;
        let target =
            ChannelTarget { relayed_addr: v6_bytes(relayed.ip()), peer_addr: v6_bytes(peer.ip()), relayed_port: relayed.port(), peer_port: peer.port() };
        let mut map: HashMap<&mut MapData, ChannelKey, ChannelTarget> = self.map_mut(M)?;
        map.insert(Self::channel_key(client, server_port, channel), target, 0).map_err(map_err("add channel route", M))
    }

    /// Removes a channel route (an absent one is not an error).
    pub fn remove_channel_key(&mut self, key: ChannelKey) -> Result<()> {
        self.hash_remove::<ChannelKey, ChannelTarget>(sluice_common::CHANNELS_MAP, &key, "remove channel route")
    }

    /// Every channel route installed.
    pub fn channel_keys(&self) -> Result<Vec<(ChannelKey, ChannelTarget)>> {
        self.hash_entries(sluice_common::CHANNELS_MAP)
    }

    /// ChannelData datagrams and payload bytes the TURN stage unwrapped (summed over CPUs).
    pub fn turn_stats(&self) -> Result<(u64, u64)> {
        const M: &str = sluice_common::TURN_STATS_MAP;
        let map = self.ebpf.map(M).ok_or(XdpError::MissingMap { map: M })?;
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(map_err("open", M))?;
        let sum = |i: u32| map.get(&i, 0).map(|v| v.iter().sum::<u64>()).map_err(map_err("read counter", M));
        Ok((sum(sluice_common::TURN_STAT_PACKETS)?, sum(sluice_common::TURN_STAT_BYTES)?))
    }

    /// The relay entry installed for a leg, if any (to check what survived a restart).
    pub fn relay(&self, local_port: u16, remote: SocketAddr) -> Result<Option<RelayTarget>> {
        const M: &str = sluice_common::RELAYS_MAP;
        let map = self.ebpf.map(M).ok_or(XdpError::MissingMap { map: M })?;
        let map: HashMap<&MapData, FlowKey, RelayTarget> = HashMap::try_from(map).map_err(map_err("open", M))?;
        match map.get(&flow_key(local_port, remote), 0) {
            Ok(t) => Ok(Some(t)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("read relay", M)(e)),
        }
    }

    /// The verdict counters summed over CPUs (monotonic; they survive restarts when pinned).
    pub fn verdict_counts(&self) -> Result<VerdictCounts> {
        const M: &str = sluice_common::VERDICTS_MAP;
        let map = self.ebpf.map(M).ok_or(XdpError::MissingMap { map: M })?;
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(map_err("open", M))?;
        let mut counts = VerdictCounts([0; XdpVerdict::COUNT as usize], self.turn_stats()?);
        for (i, slot) in counts.0.iter_mut().enumerate() {
            let per_cpu = map.get(&(i as u32), 0).map_err(map_err("read counter", M))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(counts)
    }

    /// Runs the program on `input` with `BPF_PROG_TEST_RUN`, `repeat` times, writing the resulting
    /// frame to `output` (which must be at least as long as `input`).
    pub fn test_run(&mut self, input: &[u8], output: &mut [u8], repeat: u32) -> Result<TestRunOutcome> {
        let prog = self.program_mut()?;
        let opts = TestRunOptions { data_in: Some(input), data_out: Some(output), repeat, ..TestRunOptions::default() };
        let r = prog.test_run(opts).map_err(|source| XdpError::Program { op: "BPF_PROG_TEST_RUN", target: sluice_common::XDP_PROGRAM.into(), source })?;
        Ok(TestRunOutcome { action: r.return_value, len: r.data_size_out as usize, duration: r.duration })
    }

    /// Runs the program `count` times on copies of `frame` as if each had arrived on interface
    /// `ingress_ifindex` (RX queue 0, in the calling thread's network namespace), and lets the
    /// verdicts take effect: XDP_TX transmits out of that interface, XDP_REDIRECT redirects
    /// (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`, Linux 5.18+, `batch` frames per
    /// kernel batch). With a relay entry matching `frame` this is a line-rate packet generator
    /// (benchmarks); nothing is written back.
    pub fn transmit_live(&mut self, frame: &[u8], ingress_ifindex: u32, count: u32, batch: u32) -> Result<Duration> {
        // struct xdp_md (uapi/linux/bpf.h): data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex; the kernel wants data = 0 and data_end = frame length.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let prog = self.program_mut()?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: count,
            attrs: aya::programs::TestRunAttrs::new().xdp_live_frames(batch),
            ..TestRunOptions::default()
        };
        let r = prog.test_run(opts).map_err(|source| XdpError::Program {
            op: "BPF_PROG_TEST_RUN (live frames)",
            target: sluice_common::XDP_PROGRAM.into(),
            source,
        })?;
        Ok(r.duration)
    }

    /// The program's file descriptor owner, for callers that need to chain it (devmap programs).
    pub fn program_fd(&mut self) -> Result<std::os::fd::OwnedFd> {
        let prog = self.program_mut()?;
        let fd = prog.fd().map_err(|source| XdpError::Program { op: "program fd", target: sluice_common::XDP_PROGRAM.into(), source })?;
        fd.as_fd().try_clone_to_owned().map_err(io_err("dup program fd", Path::new("")))
    }

    /// Detaches from every interface this stage attached to or re-opened, removes every pin and
    /// the pin directory: the stage is gone once this object is dropped.
    pub fn unpin(mut self) -> Result<()> {
        for (_, attachment) in self.links.drain(..) {
            match attachment {
                Attachment::Pinned(p) => {
                    drop(p.unpin().map_err(|source| XdpError::Link { op: "unpin link", path: PathBuf::new(), source: Box::new(source) })?);
                }
                Attachment::Reopened { path, .. } => {
                    std::fs::remove_file(&path).map_err(io_err("remove link pin", &path))?;
                }
                Attachment::Owned { .. } => {}
            }
        }
        if let Some(dir) = self.pin_dir.take() {
            remove_map_pins(&dir)?;
            // Links pinned by other interfaces' stages may remain; only remove an empty directory.
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove pin directory", &dir)(e)),
            }
        }
        Ok(())
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(XdpError::MissingMap { map: name })?;
        T::try_from(map).map_err(map_err("open", name))
    }
}

fn remove_map_pins(dir: &Path) -> Result<()> {
    for name in sluice_common::ALL_MAPS {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove map pin", &path)(e)),
        }
    }
    if dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with("scratch-")) {
        std::fs::remove_dir(dir).map_err(io_err("remove scratch pin directory", dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Loads the embedded object into the kernel: the maps are created and the program passes the
    /// verifier. Needs root (CI and the dev machines run as root).
    #[test]
    fn embedded_program_passes_the_verifier() {
        let stage = super::XdpStage::load_unpinned().expect("load, verify");
        assert_eq!(stage.verdict_counts().expect("counters").total(), 0);
    }
}
