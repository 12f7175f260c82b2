//! `sluicectl top`: a live view of one node, refreshed from its `Node.GetStatus` and
//! `Routes.ListSessions`/`GetSession`.
//!
//! ```text
//!   gRPC polls ──► Snapshot ──► View (counter history → rates) ──► render() ──► lines
//!                                                                    │
//!                         --once: printed as plain text ◄────────────┤
//!                         terminal: drawn on the alternate screen ◄──┘ (selection in reverse)
//! ```
//!
//! The view is plain lines (no layout engine): the same text `--once` prints for scripts, so the
//! full-screen view and the snapshot cannot disagree. Rates (packets/s, bits/s, drops/s) come from
//! the difference of two counter snapshots: the dataplane streams its counters to the control
//! plane once a second, so a snapshot whose counters did not move since the last one is a repeat
//! of the same report and is not taken as a new point (it would read as 0 packets/s, then double).
//! Traffic is per worker and node (`NodeStatus.workers`) and per leg (the counters of
//! `Session.live`, summed over workers by the control plane), a session's being the sum of its
//! legs'; the legs' counters have a history of their own, as they come in another call. A leg's
//! other figures are what the dataplane reports of it on Watch (activity, receiver-report loss,
//! jitter and RTT, bandwidth estimate, rate-limit drops), and the worker it is on (its port
//! modulo the worker count).
//!
//! Everything that came from the server goes through [`text::escape`] before it reaches the
//! terminal.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::style::{Attribute, Print, SetAttribute};
use crossterm::terminal::{self, ClearType};
use crossterm::{cursor, execute, queue};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

use crate::pb;
use crate::pb::node_client::NodeClient;
use crate::pb::routes_client::RoutesClient;
use crate::text;

/// How far back rates look: long enough to span a few of the dataplane's one-second reports.
pub const RATE_WINDOW: Duration = Duration::from_secs(3);
/// Sessions fetched with their legs per refresh at most (one `GetSession` each).
pub const MAX_SESSIONS: usize = 500;
/// How long one refresh may take before it counts as failed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One refresh: the node's status and its sessions (or the one asked for).
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// When it was taken.
    pub at: Instant,
    /// `Node.GetStatus`.
    pub status: pb::NodeStatus,
    /// The sessions, sorted by id.
    pub sessions: Vec<pb::Session>,
    /// Sessions that exist but were not fetched (over [`MAX_SESSIONS`]).
    pub more: usize,
    /// With `--session`: it does not exist (now).
    pub missing: Option<String>,
}

/// Takes a snapshot: the status, then every session (or only `only`).
pub async fn fetch(node: &mut NodeClient<Channel>, routes: &mut RoutesClient<Channel>, only: Option<&str>) -> Result<Snapshot, tonic::Status> {
    let status = node.get_status(pb::GetStatusRequest {}).await?.into_inner();
    let ids: Vec<String> = match only {
        Some(id) => vec![id.to_owned()],
        None => routes.list_sessions(pb::ListSessionsRequest {}).await?.into_inner().sessions.into_iter().map(|s| s.id).collect(),
    };
    let more = ids.len().saturating_sub(MAX_SESSIONS);
    let (mut sessions, mut missing) = (Vec::new(), None);
    for id in ids.into_iter().take(MAX_SESSIONS) {
        match routes.get_session(pb::GetSessionRequest { session: id.clone() }).await {
            Ok(s) => sessions.push(s.into_inner()),
            // Deleted between the list and the get, or (--session) not there.
            Err(e) if e.code() == tonic::Code::NotFound => {
                if only.is_some() {
                    missing = Some(id);
                }
            }
            Err(e) => return Err(e),
        }
    }
    sessions.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Snapshot { at: Instant::now(), status, sessions, more, missing })
}

/// One worker's counters, as the rates need them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Counters {
    rx_packets: u64,
    tx_packets: u64,
    rx_bytes: u64,
    tx_bytes: u64,
    drops: u64,
    by_reason: BTreeMap<String, u64>,
}

impl Counters {
    fn of_leg(l: &pb::LegLive) -> Self {
        Self { rx_packets: l.rx_packets, tx_packets: l.tx_packets, rx_bytes: l.rx_bytes, tx_bytes: l.tx_bytes, ..Default::default() }
    }

    fn of(w: &pb::WorkerLoad) -> Self {
        Self {
            rx_packets: w.rx_packets,
            tx_packets: w.tx_packets,
            rx_bytes: w.rx_bytes,
            tx_bytes: w.tx_bytes,
            drops: w.drops,
            by_reason: w.drops_by_reason.iter().map(|d| (d.reason.clone(), d.count)).collect(),
        }
    }
}

/// Per-second rates of one worker (or the node).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    /// Datagrams received per second.
    pub rx_pps: f64,
    /// Packets sent per second.
    pub tx_pps: f64,
    /// Bits received per second.
    pub rx_bps: f64,
    /// Bits sent per second.
    pub tx_bps: f64,
    /// Drops per second.
    pub drops: f64,
    /// Drops per second by reason.
    pub by_reason: BTreeMap<String, f64>,
}

impl Rates {
    fn between(new: &Counters, old: &Counters, secs: f64) -> Self {
        let r = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        Self {
            rx_pps: r(new.rx_packets, old.rx_packets),
            tx_pps: r(new.tx_packets, old.tx_packets),
            rx_bps: 8.0 * r(new.rx_bytes, old.rx_bytes),
            tx_bps: 8.0 * r(new.tx_bytes, old.tx_bytes),
            drops: r(new.drops, old.drops),
            by_reason: new.by_reason.iter().map(|(k, &v)| (k.clone(), r(v, old.by_reason.get(k).copied().unwrap_or(0)))).collect(),
        }
    }

    fn add(&mut self, o: &Self) {
        self.rx_pps += o.rx_pps;
        self.tx_pps += o.tx_pps;
        self.rx_bps += o.rx_bps;
        self.tx_bps += o.tx_bps;
        self.drops += o.drops;
        for (k, v) in &o.by_reason {
            *self.by_reason.entry(k.clone()).or_default() += v;
        }
    }
}

/// One point's counters, by worker or leg.
type Readings<K> = BTreeMap<K, Counters>;

/// Counter snapshots of the last [`RATE_WINDOW`] and more, from which rates come: of the
/// workers (by index), or of the legs (by session and leg).
#[derive(Clone, Debug)]
pub struct History<K = usize> {
    points: VecDeque<(Instant, Readings<K>)>,
    /// The front point is the first one ever taken: its report may be up to a report period
    /// older than the time it was taken at (later points are taken when the counters move, so
    /// within a refresh of their report), so a later base is preferred.
    stale_front: bool,
}

impl<K> Default for History<K> {
    fn default() -> Self {
        Self { points: VecDeque::new(), stale_front: false }
    }
}

/// A leg in [`View::legs`]: its session's id and its own.
pub type LegKey = (String, String);

impl History<usize> {
    /// Takes the workers' counters at `at` (see [`History::push_counters`]).
    pub fn push(&mut self, at: Instant, workers: &[pb::WorkerLoad]) {
        self.push_counters(at, workers.iter().map(Counters::of).enumerate().collect());
    }

    /// Per-worker rates between the newest point and the oldest kept (the second one while the
    /// oldest is the first ever taken and there are three); `None` until there are two points
    /// (or when the worker count changed in between).
    pub fn rates(&self) -> Option<Vec<Rates>> {
        let (old, new, secs) = self.span()?;
        if old.len() != new.len() {
            return None;
        }
        Some(new.values().zip(old.values()).map(|(n, o)| Rates::between(n, o, secs)).collect())
    }
}

impl History<LegKey> {
    /// Takes the legs' counters (`Session.live`) of `sessions` at `at` (see
    /// [`History::push_counters`]).
    pub fn push_legs(&mut self, at: Instant, sessions: &[pb::Session]) {
        let legs = sessions.iter().flat_map(|s| s.live.iter().map(move |l| ((s.id.clone(), l.leg.clone()), Counters::of_leg(l)))).collect();
        self.push_counters(at, legs);
    }

    /// Per-leg rates over the same span as [`History::rates`], of the legs in both points (a
    /// leg first reported since has none yet); `None` until there are two points.
    pub fn leg_rates(&self) -> Option<BTreeMap<LegKey, Rates>> {
        let (old, new, secs) = self.span()?;
        Some(new.iter().filter_map(|(k, n)| Some((k.clone(), Rates::between(n, old.get(k)?, secs)))).collect())
    }
}

impl<K: Ord> History<K> {
    /// Takes counters at `at`. A repeat of the last point's counters (the same dataplane report
    /// seen again) is not a new point unless the counters have stood still for longer than the
    /// window (then the node is idle and its rates are 0).
    fn push_counters(&mut self, at: Instant, counters: Readings<K>) {
        if let Some((last_at, last)) = self.points.back()
            && *last == counters
            && at.saturating_duration_since(*last_at) < RATE_WINDOW
        {
            return;
        }
        if self.points.is_empty() {
            self.stale_front = true;
        }
        self.points.push_back((at, counters));
        // Keep the newest point at least RATE_WINDOW old, as the rates' base.
        while self.points.len() > 2 && self.points.get(1).is_some_and(|(t, _)| at.saturating_duration_since(*t) >= RATE_WINDOW) {
            self.points.pop_front();
            self.stale_front = false;
        }
    }

    /// The counters of the oldest point kept (the second one while the oldest is the first ever
    /// taken and there are three) and of the newest, and the seconds between them; `None` until
    /// there are two points at least 0.2 s apart.
    fn span(&self) -> Option<(&Readings<K>, &Readings<K>, f64)> {
        let base = if self.stale_front && self.points.len() >= 3 { self.points.get(1)? } else { self.points.front()? };
        let ((t0, old), (t1, new)) = (base, self.points.back()?);
        let secs = t1.saturating_duration_since(*t0).as_secs_f64();
        (secs >= 0.2).then_some((old, new, secs))
    }

    /// How many distinct points it holds.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// What the view shows and where the operator is in it.
#[derive(Debug)]
pub struct View {
    /// The control plane's address, for the title.
    pub addr: String,
    /// Seconds between refreshes, for the title.
    pub interval: Duration,
    /// The last snapshot.
    pub snapshot: Option<Snapshot>,
    /// The workers' counters behind their rates.
    pub history: History,
    /// The legs' counters behind their rates.
    pub legs: History<LegKey>,
    /// Why the last refresh failed (the view keeps the snapshot before it).
    pub error: Option<String>,
    /// The selected row of the session table.
    pub selected: usize,
    /// The session whose legs are shown (Enter), by id.
    pub open: Option<String>,
    /// Only one session is fetched (`--session`): the per-worker leg counts would miss the rest.
    pub filtered: bool,
}

/// What a key asks of the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Redraw.
    Redraw,
    /// Nothing changed.
    None,
    /// Leave.
    Quit,
}

impl View {
    /// An empty view of the node at `addr`; with `only`, that session is open from the start.
    pub fn new(addr: &str, interval: Duration, only: Option<&str>) -> Self {
        Self {
            addr: addr.to_owned(),
            interval,
            snapshot: None,
            history: History::default(),
            legs: History::default(),
            error: None,
            selected: 0,
            open: only.map(str::to_owned),
            filtered: only.is_some(),
        }
    }

    /// Takes a refresh.
    pub fn update(&mut self, r: Result<Snapshot, String>) {
        match r {
            Ok(s) => {
                self.history.push(s.at, &s.status.workers);
                self.legs.push_legs(s.at, &s.sessions);
                self.selected = self.selected.min(s.sessions.len().saturating_sub(1));
                self.snapshot = Some(s);
                self.error = None;
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// Handles a key: q (or Ctrl-C) quits, ↑/↓ (k/j) select, Enter opens, Esc closes.
    pub fn key(&mut self, k: KeyEvent) -> Action {
        if k.kind == KeyEventKind::Release {
            return Action::None;
        }
        let sessions = self.snapshot.as_ref().map_or(0, |s| s.sessions.len());
        match k.code {
            KeyCode::Char('q') | KeyCode::Char('Q') => Action::Quit,
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected = self.selected.saturating_sub(1);
                Action::Redraw
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(sessions.saturating_sub(1));
                Action::Redraw
            }
            KeyCode::Home | KeyCode::Char('g') => {
                self.selected = 0;
                Action::Redraw
            }
            KeyCode::End | KeyCode::Char('G') => {
                self.selected = sessions.saturating_sub(1);
                Action::Redraw
            }
            KeyCode::Enter => {
                self.open = self.snapshot.as_ref().and_then(|s| s.sessions.get(self.selected)).map(|s| s.id.clone());
                Action::Redraw
            }
            KeyCode::Esc | KeyCode::Backspace => {
                self.open = None;
                Action::Redraw
            }
            _ => Action::None,
        }
    }
}

/// How a line is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// As it is.
    Plain,
    /// A title or a table's header: bold.
    Heading,
    /// The selected row: reversed.
    Selected,
}

/// One line of the view (already escaped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The text.
    pub text: String,
    /// How it is drawn.
    pub style: Style,
}

fn line(text: impl Into<String>, style: Style) -> Line {
    Line { text: text.into(), style }
}

/// Packets (or anything) per second: `0`, `840`, `12.5k`, `3.20M`.
pub fn fmt_count(x: f64) -> String {
    match x {
        x if x < 1000.0 => format!("{x:.0}"),
        x if x < 1e6 => format!("{:.1}k", x / 1e3),
        x => format!("{:.2}M", x / 1e6),
    }
}

/// Bits per second: `0 bit/s`, `640 kbit/s`, `2.41 Mbit/s`, `1.20 Gbit/s`.
pub fn fmt_bits(x: f64) -> String {
    match x {
        x if x < 1e3 => format!("{x:.0} bit/s"),
        x if x < 1e6 => format!("{:.0} kbit/s", x / 1e3),
        x if x < 1e9 => format!("{:.2} Mbit/s", x / 1e6),
        x => format!("{:.2} Gbit/s", x / 1e9),
    }
}

fn fmt_loss(fraction_lost: u32) -> String {
    format!("{:.1}%", f64::from(fraction_lost) * 100.0 / 256.0)
}

fn fmt_rtt(us: u32) -> String {
    format!("{:.1} ms", f64::from(us) / 1000.0)
}

/// What kind of leg: `webrtc`, `tap`, `plain-rtp tap`, `cascade` or `srtp` (static keys), with
/// `shared` for a leg on a shared port.
fn leg_kind(l: &pb::Leg) -> String {
    let base = match () {
        _ if l.webrtc.is_some() || l.webrtc_local.is_some() => "webrtc",
        _ if l.tap.is_some() && l.plain_rtp => "plain-rtp tap",
        _ if l.tap.is_some() => "tap",
        _ if l.cascade => "cascade",
        _ => "srtp",
    };
    if l.shared_port { format!("{base} shared") } else { base.to_owned() }
}

/// The worker a leg's port belongs to (the dataplane's `port % workers`).
fn worker_of(port: u32, workers: usize) -> Option<usize> {
    (workers > 0 && port > 0).then(|| port as usize % workers)
}

fn state_of(live: Option<&pb::LegLive>) -> String {
    let Some(l) = live else { return "-".into() };
    if let Some(w) = l.webrtc.as_ref().filter(|w| w.state() == pb::web_rtc_state::State::Failed) {
        return format!("failed: {}", w.reason);
    }
    match l.activity() {
        pb::leg_live::Activity::Active => "active".into(),
        pb::leg_live::Activity::Idle => "idle".into(),
        pb::leg_live::Activity::Unspecified => "-".into(),
    }
}

/// A session's row figures: legs active, worst loss and RTT, the workers its legs are on.
struct SessionRow {
    active: usize,
    worst_loss: Option<u32>,
    worst_rtt: Option<u32>,
    bwe: u64,
    workers: String,
}

fn session_row(s: &pb::Session, workers: usize) -> SessionRow {
    let stats = || s.live.iter().filter_map(|l| l.stats.as_ref());
    let mut on: Vec<usize> = s.legs.iter().filter_map(|l| worker_of(l.local_port, workers)).collect();
    on.sort_unstable();
    on.dedup();
    SessionRow {
        active: s.live.iter().filter(|l| l.activity() == pb::leg_live::Activity::Active).count(),
        worst_loss: stats().map(|st| st.fraction_lost).max(),
        worst_rtt: stats().filter_map(|st| st.rtt_us).max(),
        bwe: s.live.iter().map(|l| l.bandwidth_estimate_bps).sum(),
        workers: if on.is_empty() { "-".into() } else { on.iter().map(usize::to_string).collect::<Vec<_>>().join(",") },
    }
}

/// Left-aligned columns two spaces apart, cells escaped; the header row first.
fn table(rows: &[Vec<String>]) -> Vec<String> {
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| text::escape(c)).collect()).collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r.iter().enumerate().map(|(c, s)| format!("{s:<w$}", w = widths[c])).collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect()
}

/// How much to draw: a terminal's rows, or everything (`--once`).
#[derive(Clone, Copy, Debug)]
pub enum Fit {
    /// At most this many lines; the session table scrolls to keep the selection in sight.
    Rows(usize),
    /// Every session, and with `legs` every session's legs.
    All {
        /// Show the legs of every session (not only the open one).
        legs: bool,
    },
}

/// The view as lines, at most `fit` of them.
pub fn render(v: &View, fit: Fit) -> Vec<Line> {
    let mut out = Vec::new();
    let refresh = format!("every {:.1}s", v.interval.as_secs_f64());
    out.push(line(format!("sluicectl top  {}  {refresh}", text::escape(&v.addr)), Style::Heading));
    if let Some(e) = &v.error {
        out.push(line(format!("refresh failed: {}", text::escape(e)), Style::Plain));
    }
    let Some(snap) = &v.snapshot else {
        out.push(line("waiting for the first refresh…", Style::Plain));
        return out;
    };
    let st = &snap.status;
    let health = match (st.dataplane_connected, st.unbound_ports) {
        (false, _) => "DEGRADED: dataplane not connected".to_owned(),
        (true, 0) => "ok".to_owned(),
        (true, n) => format!("DEGRADED: {n} leg port(s) not opened"),
    };
    out.push(line(
        format!(
            "node: {health}  {}  dataplane generation {}  sessions {}  legs {}  tracks {}  subscriptions {}  ports free {}/{}",
            if st.draining { "DRAINING" } else { "accepting" },
            st.dataplane_generation,
            st.sessions,
            st.legs,
            st.tracks,
            st.subscriptions,
            st.ports_free,
            (st.port_range_end + 1).saturating_sub(st.port_range_start),
        ),
        Style::Plain,
    ));
    let rates = v.history.rates();
    let mut node = Rates::default();
    for r in rates.iter().flatten() {
        node.add(r);
    }
    let total_drops: u64 = st.workers.iter().map(|w| w.drops).sum();
    match &rates {
        Some(_) => out.push(line(
            format!(
                "traffic: in {} pkt/s {}  out {} pkt/s {}  drops {}/s ({} so far)",
                fmt_count(node.rx_pps),
                fmt_bits(node.rx_bps),
                fmt_count(node.tx_pps),
                fmt_bits(node.tx_bps),
                fmt_count(node.drops),
                total_drops
            ),
            Style::Plain,
        )),
        None => out.push(line(format!("traffic: measuring…  drops {total_drops} so far"), Style::Plain)),
    }
    // Drops by reason: the ones dropping now first, then by count.
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for w in &st.workers {
        for d in &w.drops_by_reason {
            *reasons.entry(d.reason.clone()).or_default() += d.count;
        }
    }
    let mut reasons: Vec<(String, u64, f64)> = reasons
        .into_iter()
        .map(|(k, n)| {
            let r = node.by_reason.get(&k).copied().unwrap_or(0.0);
            (k, n, r)
        })
        .collect();
    reasons.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.1.cmp(&a.1)));
    let mut drops = String::from("drops by reason:");
    if reasons.is_empty() {
        drops.push_str(" none");
    }
    for (k, n, r) in &reasons {
        let _ = write!(drops, "  {} {}/s ({n})", text::escape(k), fmt_count(*r));
    }
    out.push(line(drops, Style::Plain));
    out.push(line("", Style::Plain));

    let nworkers = st.workers.len();
    let mut rows = vec![vec![
        "WORKER".to_owned(),
        "LEGS".into(),
        "IN PKT/S".into(),
        "OUT PKT/S".into(),
        "IN".into(),
        "OUT".into(),
        "DROPS/S".into(),
        "RX PACKETS".into(),
        "TX PACKETS".into(),
        "DROPS".into(),
    ]];
    for (i, w) in st.workers.iter().enumerate() {
        let r = rates.as_ref().and_then(|r| r.get(i));
        let legs = snap.sessions.iter().flat_map(|s| &s.legs).filter(|l| worker_of(l.local_port, nworkers) == Some(i)).count();
        let or = |f: &dyn Fn(&Rates) -> String| r.map_or_else(|| "…".to_owned(), f);
        rows.push(vec![
            w.worker.to_string(),
            if v.filtered { "-".into() } else { legs.to_string() },
            or(&|r| fmt_count(r.rx_pps)),
            or(&|r| fmt_count(r.tx_pps)),
            or(&|r| fmt_bits(r.rx_bps)),
            or(&|r| fmt_bits(r.tx_bps)),
            or(&|r| fmt_count(r.drops)),
            w.rx_packets.to_string(),
            w.tx_packets.to_string(),
            w.drops.to_string(),
        ]);
    }
    if nworkers == 0 {
        out.push(line("workers: none reported (dataplane not connected, or no stats yet)", Style::Plain));
    } else {
        push_table(&mut out, &rows, None);
    }
    out.push(line("", Style::Plain));

    // The session table.
    let mut rows = vec![vec![
        "SESSION".to_owned(),
        "REV".into(),
        "LEGS".into(),
        "ACTIVE".into(),
        "TRACKS".into(),
        "SUBS".into(),
        "IN PKT/S".into(),
        "OUT PKT/S".into(),
        "IN".into(),
        "OUT".into(),
        "WORKERS".into(),
        "WORST LOSS".into(),
        "WORST RTT".into(),
        "BW ESTIMATE".into(),
    ]];
    let leg_rates = v.legs.leg_rates();
    // The traffic columns of a session (the sum of its legs') or a leg: "…" while measuring.
    let traffic = |r: Option<&Rates>| -> [String; 4] {
        match (&leg_rates, r) {
            (None, _) => ["…".into(), "…".into(), "…".into(), "…".into()],
            (Some(_), None) => ["-".into(), "-".into(), "-".into(), "-".into()],
            (Some(_), Some(r)) => [fmt_count(r.rx_pps), fmt_count(r.tx_pps), fmt_bits(r.rx_bps), fmt_bits(r.tx_bps)],
        }
    };
    for s in &snap.sessions {
        let r = session_row(s, nworkers);
        let mut sum = Rates::default();
        for lr in leg_rates.iter().flat_map(|m| m.range((s.id.clone(), String::new())..)).take_while(|((sid, _), _)| *sid == s.id).map(|(_, r)| r) {
            sum.add(lr);
        }
        let [rx_pps, tx_pps, rx_bps, tx_bps] = traffic(Some(&sum));
        rows.push(vec![
            s.id.clone(),
            s.revision.to_string(),
            s.legs.len().to_string(),
            r.active.to_string(),
            s.tracks.len().to_string(),
            s.subscriptions.len().to_string(),
            rx_pps,
            tx_pps,
            rx_bps,
            tx_bps,
            r.workers,
            r.worst_loss.map_or_else(|| "-".into(), fmt_loss),
            r.worst_rtt.map_or_else(|| "-".into(), fmt_rtt),
            if r.bwe == 0 { "-".into() } else { fmt_bits(r.bwe as f64) },
        ]);
    }
    let footer = footer(v, fit);
    let legs_of: Vec<&pb::Session> = match fit {
        Fit::All { legs: true } => snap.sessions.iter().collect(),
        _ => v.open.as_ref().and_then(|id| snap.sessions.iter().find(|s| &s.id == id)).into_iter().collect(),
    };
    let legs_lines = legs_of.iter().map(|s| s.legs.len() + 3).sum::<usize>();
    match fit {
        Fit::Rows(h) => {
            // Room for the session table: what the legs and the footer leave, at least 3 rows.
            let room = h.saturating_sub(out.len() + legs_lines + footer.len()).max(4);
            push_window(&mut out, &rows, v.selected, room);
        }
        Fit::All { .. } => push_table(&mut out, &rows, None),
    }
    if let Some(m) = &snap.missing {
        out.push(line(format!("no session {} on this node", text::quote(m)), Style::Plain));
    } else if snap.sessions.is_empty() {
        out.push(line("no sessions", Style::Plain));
    }
    if snap.more > 0 {
        out.push(line(format!("… and {} more session(s) not fetched (over {MAX_SESSIONS})", snap.more), Style::Plain));
    }
    for s in legs_of {
        out.push(line("", Style::Plain));
        out.push(line(format!("legs of {}", text::escape(&s.id)), Style::Heading));
        let live: BTreeMap<&str, &pb::LegLive> = s.live.iter().map(|l| (l.leg.as_str(), l)).collect();
        let mut rows = vec![vec![
            "LEG".to_owned(),
            "KIND".into(),
            "PORT".into(),
            "WORKER".into(),
            "REMOTE".into(),
            "STATE".into(),
            "IN PKT/S".into(),
            "OUT PKT/S".into(),
            "IN".into(),
            "OUT".into(),
            "LOSS".into(),
            "LOST".into(),
            "JITTER".into(),
            "RTT".into(),
            "BW ESTIMATE".into(),
            "RATE-LIMITED".into(),
        ]];
        for l in &s.legs {
            let lv = live.get(l.id.as_str()).copied();
            let stats = lv.and_then(|x| x.stats.as_ref());
            let remote = match lv.map(|x| x.remote.as_str()).filter(|r| !r.is_empty()) {
                Some(r) => r.to_owned(),
                None if l.remote.is_empty() => "(not learned)".into(),
                None => l.remote.clone(),
            };
            let [rx_pps, tx_pps, rx_bps, tx_bps] = traffic(leg_rates.as_ref().and_then(|m| m.get(&(s.id.clone(), l.id.clone()))));
            rows.push(vec![
                l.id.clone(),
                leg_kind(l),
                l.local_port.to_string(),
                worker_of(l.local_port, nworkers).map_or_else(|| "-".into(), |w| w.to_string()),
                remote,
                state_of(lv),
                rx_pps,
                tx_pps,
                rx_bps,
                tx_bps,
                stats.map_or_else(|| "-".into(), |st| fmt_loss(st.fraction_lost)),
                stats.map_or_else(|| "-".into(), |st| st.cumulative_lost.to_string()),
                stats.map_or_else(|| "-".into(), |st| st.jitter.to_string()),
                stats.and_then(|st| st.rtt_us).map_or_else(|| "-".into(), fmt_rtt),
                lv.map(|x| x.bandwidth_estimate_bps).filter(|&b| b > 0).map_or_else(|| "-".into(), |b| fmt_bits(b as f64)),
                lv.map_or(0, |x| x.rate_limited).to_string(),
            ]);
        }
        push_table(&mut out, &rows, None);
    }
    if let Fit::Rows(h) = fit {
        // The footer sits on the last row.
        while out.len() + footer.len() < h {
            out.push(line("", Style::Plain));
        }
        out.truncate(h.saturating_sub(footer.len()));
    }
    out.extend(footer);
    out
}

fn footer(v: &View, fit: Fit) -> Vec<Line> {
    let mut f = vec![line(
        "a leg's traffic: authenticated packets from the participant (IN), every packet sent to it (OUT); loss, jitter and RTT are the participants' receiver reports",
        Style::Plain,
    )];
    if let Fit::Rows(_) = fit {
        let keys = if v.open.is_some() {
            "q quit  ↑/↓ j/k select  Enter legs of the selected session  Esc back"
        } else {
            "q quit  ↑/↓ j/k select  Enter legs"
        };
        f.push(line(keys, Style::Heading));
    }
    f
}

/// A table's lines: its header as a heading, the row `selected` (counting from the first row
/// under the header) reversed.
fn push_table(out: &mut Vec<Line>, rows: &[Vec<String>], selected: Option<usize>) {
    for (i, t) in table(rows).into_iter().enumerate() {
        let style = match i {
            0 => Style::Heading,
            i if Some(i - 1) == selected => Style::Selected,
            _ => Style::Plain,
        };
        out.push(line(t, style));
    }
}

/// The session table in `room` lines: the header, then a window of rows that holds the
/// selected one, with a line saying how many are above and below it.
fn push_window(out: &mut Vec<Line>, rows: &[Vec<String>], selected: usize, room: usize) {
    let body = rows.len().saturating_sub(1);
    let fit = room.saturating_sub(2).max(1);
    if body <= room.saturating_sub(1) {
        push_table(out, rows, Some(selected));
        return;
    }
    let start = selected.saturating_sub(fit - 1).min(body.saturating_sub(fit));
    let lines = table(rows);
    out.push(line(lines[0].clone(), Style::Heading));
    for (i, t) in lines.iter().enumerate().skip(1 + start).take(fit) {
        out.push(line(t.clone(), if i - 1 == selected { Style::Selected } else { Style::Plain }));
    }
    out.push(line(format!("… {} above, {} below", start, body - start - fit.min(body - start)), Style::Plain));
}

/// `--once`: takes snapshots until the counters moved over at least `interval` (two fresh
/// reports of the dataplane, so the rates span whole report periods), then prints the view as
/// plain text.
pub async fn once(
    node: &mut NodeClient<Channel>,
    routes: &mut RoutesClient<Channel>,
    addr: &str,
    interval: Duration,
    only: Option<&str>,
) -> anyhow::Result<String> {
    let mut view = View::new(addr, interval, only);
    let grpc = |e: tonic::Status| anyhow::anyhow!("{:?}: {}", e.code(), text::escape(e.message()));
    let start = Instant::now();
    let first = node.get_status(pb::GetStatusRequest {}).await.map_err(grpc)?.into_inner().workers;
    view.history.push(start, &first);
    // Wait for a fresh report (the counters change), the base; then for one at least `interval`
    // after it. Counters that never move (an idle node) read 0/s over the whole wait. The legs'
    // counters (of the same reports) are read at both points too.
    let deadline = start + interval + Duration::from_secs(4);
    let mut base: Option<Instant> = None;
    let mut last = first;
    let mut fresh = None;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let workers = node.get_status(pb::GetStatusRequest {}).await.map_err(grpc)?.into_inner().workers;
        let (moved, now) = (workers != last, Instant::now());
        match base {
            None if moved => {
                view.history.push(now, &workers);
                view.legs.push_legs(now, &fetch(node, routes, only).await.map_err(grpc)?.sessions);
                base = Some(now);
            }
            Some(b) if moved && now.duration_since(b) >= interval => {
                view.history.push(now, &workers);
                let snap = fetch(node, routes, only).await.map_err(grpc)?;
                view.legs.push_legs(now, &snap.sessions);
                fresh = Some(snap);
                break;
            }
            _ => {}
        }
        last = workers;
        if now >= deadline {
            break;
        }
    }
    // The snapshot of the last point (its counters again are no new point), or a new one.
    let snap = match fresh {
        Some(s) => s,
        None => fetch(node, routes, only).await.map_err(grpc)?,
    };
    view.update(Ok(snap));
    let mut s = String::new();
    for l in render(&view, Fit::All { legs: true }) {
        s.push_str(&l.text);
        s.push('\n');
    }
    Ok(s)
}

/// The terminal in raw mode on the alternate screen with the cursor hidden, until dropped
/// (also when the view fails or panics: the panic hook restores it first).
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Self> {
        terminal::enable_raw_mode()?;
        let s = Self;
        execute!(std::io::stdout(), terminal::EnterAlternateScreen, cursor::Hide, terminal::Clear(ClearType::All))?;
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            default(info);
        }));
        Ok(s)
    }
}

fn restore() {
    let _ = execute!(std::io::stdout(), SetAttribute(Attribute::Reset), cursor::Show, terminal::LeaveAlternateScreen);
    let _ = terminal::disable_raw_mode();
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

fn draw(v: &View) -> std::io::Result<()> {
    let (w, h) = terminal::size()?;
    let (w, h) = (usize::from(w), usize::from(h));
    let mut out = std::io::stdout().lock();
    for (y, l) in render(v, Fit::Rows(h)).iter().enumerate().take(h) {
        let text: String = l.text.chars().take(w).collect();
        queue!(out, cursor::MoveTo(0, y as u16))?;
        match l.style {
            Style::Plain => queue!(out, Print(text), terminal::Clear(ClearType::UntilNewLine))?,
            Style::Heading => {
                queue!(out, SetAttribute(Attribute::Bold), Print(text), SetAttribute(Attribute::Reset), terminal::Clear(ClearType::UntilNewLine))?
            }
            Style::Selected => {
                let pad = w.saturating_sub(text.chars().count());
                queue!(out, SetAttribute(Attribute::Reverse), Print(text), Print(" ".repeat(pad)), SetAttribute(Attribute::Reset))?;
            }
        }
    }
    queue!(out, cursor::MoveTo(0, h.saturating_sub(1) as u16))?;
    out.flush()
}

/// The full-screen view: refreshes every `interval` until q, Ctrl-C, SIGINT, SIGTERM or SIGHUP,
/// then gives the terminal back as it was.
pub async fn interactive(node: NodeClient<Channel>, routes: RoutesClient<Channel>, addr: &str, interval: Duration, only: Option<String>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut view = View::new(addr, interval, only.as_deref());
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let poller = tokio::spawn(async move {
        let (mut node, mut routes) = (node, routes);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let r = match tokio::time::timeout(FETCH_TIMEOUT, fetch(&mut node, &mut routes, only.as_deref())).await {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(format!("{:?}: {}", e.code(), e.message())),
                Err(_) => Err(format!("no answer within {} s", FETCH_TIMEOUT.as_secs())),
            };
            if tx.send(r).await.is_err() {
                return;
            }
        }
    });
    let (mut term, mut int, mut hup) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?, signal(SignalKind::hangup())?);
    let screen = Screen::enter()?;
    let mut events = EventStream::new();
    let result: anyhow::Result<()> = async {
        draw(&view)?;
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => { view.update(r); draw(&view)?; }
                    None => anyhow::bail!("the refresh task ended"),
                },
                ev = events.next() => match ev {
                    Some(Ok(Event::Key(k))) => match view.key(k) {
                        Action::Quit => return Ok(()),
                        Action::Redraw => draw(&view)?,
                        Action::None => {}
                    },
                    Some(Ok(Event::Resize(..))) => {
                        execute!(std::io::stdout(), terminal::Clear(ClearType::All))?;
                        draw(&view)?;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(anyhow::Error::new(e).context("reading the terminal")),
                    None => return Ok(()),
                },
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                _ = hup.recv() => return Ok(()),
            }
        }
    }
    .await;
    drop(screen);
    poller.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(i: u32, rx: u64, tx: u64, drops: &[(&str, u64)]) -> pb::WorkerLoad {
        pb::WorkerLoad {
            worker: i,
            rx_packets: rx,
            tx_packets: tx,
            rx_bytes: rx * 100,
            tx_bytes: tx * 100,
            drops: drops.iter().map(|d| d.1).sum(),
            drops_by_reason: drops.iter().map(|&(r, n)| pb::DropCount { reason: r.into(), count: n }).collect(),
            ..Default::default()
        }
    }

    /// A repeated report is not a point (it would read as 0/s); rates span the window.
    #[test]
    fn rates_come_from_distinct_counter_snapshots() {
        let t = Instant::now();
        let mut h = History::default();
        h.push(t, &[worker(0, 1000, 2000, &[("auth_failed", 5)])]);
        assert!(h.rates().is_none(), "one point: no rate yet");
        h.push(t + Duration::from_millis(500), &[worker(0, 1000, 2000, &[("auth_failed", 5)])]);
        assert_eq!(h.len(), 1, "the same report again is no new point");
        h.push(t + Duration::from_secs(1), &[worker(0, 1600, 3200, &[("auth_failed", 25)])]);
        assert_eq!(h.rates().unwrap()[0].rx_pps, 600.0, "two points: a first estimate");
        // From the third point on, the first point ever taken (of a report of unknown age) is
        // not the base.
        h.push(t + Duration::from_secs(3), &[worker(0, 2200, 4400, &[("auth_failed", 45)])]);
        let r = h.rates().unwrap();
        assert_eq!((r[0].rx_pps, r[0].tx_pps, r[0].rx_bps), (300.0, 600.0, 240_000.0));
        assert_eq!(r[0].by_reason["auth_failed"], 10.0);
        // Counters standing still longer than the window: the node is idle, 0/s.
        h.push(t + Duration::from_secs(7), &[worker(0, 2200, 4400, &[("auth_failed", 45)])]);
        h.push(t + Duration::from_secs(11), &[worker(0, 2200, 4400, &[("auth_failed", 45)])]);
        assert_eq!(h.rates().unwrap()[0].rx_pps, 0.0);
    }

    fn meeting() -> View {
        let mut v = View::new("127.0.0.1:1", Duration::from_secs(1), None);
        let leg = |id: &str, port| pb::Leg { id: id.into(), local_port: port, ..Default::default() };
        let stats = |loss, rtt| pb::LegStats { fraction_lost: loss, rtt_us: Some(rtt), ..Default::default() };
        // Alice sends 100 packets of 200 bytes a second and gets 50 of 100; bob only receives
        // (100 of 150 a second); carol is not reported yet.
        let s = |secs: u64| pb::Session {
            id: "standup".into(),
            revision: 3,
            legs: vec![leg("alice", 20000), leg("bob", 20001), leg("carol", 20002)],
            live: vec![
                pb::LegLive {
                    leg: "alice".into(),
                    activity: pb::leg_live::Activity::Active as i32,
                    remote: "10.0.0.1:5000".into(),
                    stats: Some(stats(0, 12_000)),
                    rx_packets: 100 * secs,
                    rx_bytes: 20_000 * secs,
                    tx_packets: 50 * secs,
                    tx_bytes: 5_000 * secs,
                    ..Default::default()
                },
                pb::LegLive {
                    leg: "bob".into(),
                    activity: pb::leg_live::Activity::Idle as i32,
                    stats: Some(stats(64, 80_500)),
                    tx_packets: 100 * secs,
                    tx_bytes: 15_000 * secs,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let other = pb::Session { id: "zeta\u{1b}[31m".into(), ..Default::default() };
        let status = |rx, tx| pb::NodeStatus {
            dataplane_connected: true,
            workers: vec![worker(0, rx, tx, &[]), worker(1, 0, 0, &[("rtcp_consumed", 7)])],
            ..Default::default()
        };
        let t = Instant::now();
        v.update(Ok(Snapshot { at: t, status: status(0, 0), sessions: vec![s(10), other.clone()], more: 0, missing: None }));
        v.update(Ok(Snapshot { at: t + Duration::from_secs(2), status: status(1000, 3000), sessions: vec![s(12), other], more: 0, missing: None }));
        v
    }

    #[test]
    fn the_view_shows_rates_sessions_worst_figures_and_the_open_sessions_legs() {
        let mut v = meeting();
        let text = |v: &View, fit| render(v, fit).into_iter().map(|l| l.text).collect::<Vec<_>>().join("\n");
        let all = text(&v, Fit::All { legs: true });
        assert!(all.contains("traffic: in 500 pkt/s 400 kbit/s  out 1.5k pkt/s 1.20 Mbit/s"), "{all}");
        assert!(all.contains("rtcp_consumed 0/s (7)"), "{all}");
        let row = all.lines().find(|l| l.starts_with("standup")).unwrap();
        assert!(row.contains("25.0%") && row.contains("80.5 ms") && row.contains("0,1"), "worst loss and RTT, workers: {row}");
        // The session's traffic is its legs': in 100 pkt/s 160 kbit/s, out 150 pkt/s 160 kbit/s.
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[6..12], ["100", "150", "160", "kbit/s", "160", "kbit/s"], "{row}");
        let alice = all.lines().find(|l| l.starts_with("alice")).unwrap();
        assert!(alice.contains("10.0.0.1:5000") && alice.contains("active") && alice.contains("12.0 ms"), "{alice}");
        let cells: Vec<&str> = alice.split_whitespace().collect();
        assert_eq!(cells[6..12], ["100", "50", "160", "kbit/s", "40", "kbit/s"], "alice's rates in and out: {alice}");
        // (Bob's and carol's remotes are "(not learned)": two words.)
        let bob: Vec<&str> = all.lines().find(|l| l.starts_with("bob")).unwrap().split_whitespace().collect();
        assert_eq!(bob[6..13], ["idle", "0", "100", "0", "bit/s", "120", "kbit/s"], "bob only receives");
        let carol: Vec<&str> = all.lines().find(|l| l.starts_with("carol")).unwrap().split_whitespace().collect();
        assert_eq!(carol[6..11], ["-", "-", "-", "-", "-"], "carol has no state nor counters yet");
        assert!(all.contains("zeta\\u{1b}[31m") && !all.contains('\u{1b}'), "ids are escaped");
        // The terminal view: 24 rows, no legs until Enter, then the selected session's.
        let lines = render(&v, Fit::Rows(24));
        assert_eq!(lines.len(), 24);
        assert!(!lines.iter().any(|l| l.text.starts_with("alice")));
        assert_eq!(lines.iter().find(|l| l.style == Style::Selected).map(|l| l.text.starts_with("standup")), Some(true));
        assert_eq!(v.key(KeyEvent::from(KeyCode::Enter)), Action::Redraw);
        let lines = render(&v, Fit::Rows(24));
        assert!(lines.iter().any(|l| l.text.starts_with("bob") && l.text.contains("idle")), "{lines:#?}");
        v.key(KeyEvent::from(KeyCode::Esc));
        v.key(KeyEvent::from(KeyCode::Char('j')));
        assert_eq!(v.selected, 1);
        v.key(KeyEvent::from(KeyCode::Down));
        assert_eq!(v.selected, 1, "stays on the last row");
        assert_eq!(v.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Action::Quit);
        assert_eq!(v.key(KeyEvent::from(KeyCode::Char('q'))), Action::Quit);
        // A short terminal still fits, with the selection in sight.
        let lines = render(&v, Fit::Rows(12));
        assert_eq!(lines.len(), 12);
    }

    #[test]
    fn formats() {
        assert_eq!((fmt_count(0.0), fmt_count(840.2), fmt_count(12_500.0), fmt_count(3_200_000.0)), ("0".into(), "840".into(), "12.5k".into(), "3.20M".into()));
        assert_eq!((fmt_bits(640_000.0), fmt_bits(2_410_000.0)), ("640 kbit/s".into(), "2.41 Mbit/s".into()));
        assert_eq!(fmt_loss(64), "25.0%");
    }
}
