//! The capacity report: the figures of every step (JSON, every number), a table a person can read,
//! and an SVG plot of forwarded rate and p99 latency against offered load, with the adaptive
//! publishers' ramps below it (see [`super::ramp`]).
//!
//! The SVG is written as text here rather than with `plotters`: the plot is two polylines per
//! backend on two linear axes, about a hundred lines of code, while `plotters` with its SVG
//! backend adds a dozen crates to the build of a bench that must build in CI on two cores.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::load::{Impair, StepTotals};
use super::ramp::{self, Ramps};
use super::scenario::{MixStats, Scenario};
use super::{Mode, Options, StepInputs};

/// One-way added latency, microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Copies timed.
    pub samples: u64,
}

impl Latency {
    /// From a histogram of nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Self {
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            samples: h.len(),
        }
    }
}

/// CPU of one dataplane worker thread over a step.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerCpu {
    /// Thread name (`worker-N`).
    pub thread: String,
    /// Thread id.
    pub tid: u32,
    /// The core it last ran on (it is pinned).
    pub core: i64,
    /// CPU seconds (user + system) during the step.
    pub cpu_s: f64,
    /// `cpu_s` per wall second (1.0: the core was busy all the time).
    pub busy: f64,
    /// Seconds spent runnable but waiting for a CPU, per wall second (from `schedstat`): how
    /// much other load on the machine held the thread back.
    pub runqueue_wait: f64,
}

/// Packets one dataplane worker transmitted over a step (`sluice_tx_packets_total{worker}` from
/// its /metrics, read at the step's start and end): where the copies were made.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerTx {
    /// The worker's index (its metrics label).
    pub worker: String,
    /// Packets per second.
    pub packets_per_s: f64,
    /// Its share of all the workers' packets.
    pub share: f64,
}

/// Resident memory of the daemons (`VmRSS` of `/proc/<pid>/status`), kB.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Rss {
    /// sluice-dataplane.
    pub dataplane_kb: u64,
    /// sluice-controlplane.
    pub controlplane_kb: u64,
}

impl Rss {
    /// Of the two PIDs now (0 where unreadable).
    pub fn of(dataplane: u32, controlplane: u32) -> Self {
        Self { dataplane_kb: vm_rss_kb(dataplane).unwrap_or(0), controlplane_kb: vm_rss_kb(controlplane).unwrap_or(0) }
    }
}

/// `VmRSS` of `pid`, kB.
pub fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Programming viewers over gRPC (their legs and subscriptions, `webinar.apply_batch` per Apply).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Programming {
    /// Viewers programmed.
    pub viewers: usize,
    /// Routes.Apply calls.
    pub applies: usize,
    /// Seconds from the first Apply to the last one's answer.
    pub seconds: f64,
    /// The slowest Apply, ms.
    pub max_apply_ms: f64,
}

/// From the Apply that created a viewer's subscriptions returning to the viewer's sink verifying
/// its first copy (of any of its streams), over the viewers programmed in a step.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct FirstPacket {
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// Viewers with a first copy.
    pub samples: usize,
    /// Viewers with none by the step's end.
    pub missing: usize,
    /// Viewers whose first copy came before the bench had the Apply's answer (counted as 0 ms:
    /// the SFU forwards once the dataplane has the change, before the answer is back).
    pub before_answer: usize,
    /// From the Apply's request leaving the bench to the first copy instead: median, ms.
    pub from_request_p50_ms: f64,
    /// See `from_request_p50_ms`: 99th percentile.
    pub from_request_p99_ms: f64,
    /// See `from_request_p50_ms`: largest.
    pub from_request_max_ms: f64,
}

/// A viewer promoted to speaker halfway through a fixed webinar step, then demoted.
#[derive(Clone, Debug, Serialize)]
pub struct PromotionResult {
    /// The promoted viewer (participant index; the presenter is 0).
    pub speaker: usize,
    /// Subscribers of its audio: the presenter and every other viewer.
    pub subscribers: usize,
    /// Seconds into the step's measured window it was promoted.
    pub at_s: f64,
    /// Seconds it spoke.
    pub spoke_s: f64,
    /// The Apply that promoted it (its track and the subscriptions to it), ms.
    pub promote_apply_ms: f64,
    /// The Apply that demoted it (the track removed, and its subscriptions with it), ms.
    pub demote_apply_ms: f64,
    /// Its audio's counters: packets sent, copies owed (each packet times the subscribers),
    /// verified, and every fault (final counts).
    pub totals: StepTotals,
    /// Subscribers that verified at least one copy of it.
    pub listeners: u64,
    /// One-way latency of its copies.
    pub latency: Latency,
    /// Whether the presenter's streams to every viewer (the step's own counters, which span the
    /// promotion and the demotion) saw no loss, gap, reordering, duplicate, timestamp error,
    /// authentication failure or misrouted copy, and the promoted audio reached every
    /// subscriber without loss.
    pub clean: bool,
}

/// What a webinar step adds.
#[derive(Clone, Debug, Serialize)]
pub struct WebinarStep {
    /// Viewers subscribed.
    pub viewers: usize,
    /// Programming the viewers this step added.
    pub programming: Programming,
    /// Apply → first packet of the viewers this step added.
    pub first_packet: FirstPacket,
    /// (Dataplane RSS at the step's end − before any viewer) / viewers, bytes.
    pub dataplane_bytes_per_viewer: f64,
    /// The same for the control plane.
    pub controlplane_bytes_per_viewer: f64,
    /// The promotion, if the step had one.
    pub promotion: Option<PromotionResult>,
}

/// What a webinar run adds.
#[derive(Clone, Debug, Serialize)]
pub struct WebinarRun {
    /// How the viewers are addressed (their own 127.x.y.z on loopback).
    pub addresses: String,
    /// The daemons' RSS with the presenter programmed and sending, before any viewer.
    pub baseline_rss: Rss,
    /// Camera layers the presenter sent when the first viewer was programmed.
    pub presenter_layers: u8,
    /// Seconds the presenter sent alone first (an adaptive presenter ramps to its three layers).
    pub warmup_s: f64,
    /// Programming every viewer, all steps.
    pub programming: Programming,
}

/// The harness's own ceiling, with no forwarder in the path.
#[derive(Clone, Debug, Serialize)]
pub struct Ceiling {
    /// Seconds measured.
    pub seconds: f64,
    /// Lanes.
    pub lanes: usize,
    /// Packets/s the generators built, protected and sent.
    pub generator_pps: f64,
    /// Packets/s the sinks received and verified.
    pub sink_pps: f64,
    /// Copies that failed to verify in the ceiling run (must be 0).
    pub sink_auth_failures: u64,
    /// Busy fraction of the busiest generator thread.
    pub generator_busy: f64,
    /// Busy fraction of the busiest sink thread.
    pub sink_busy: f64,
    /// Meetings of the paced run that measured `baseline_latency`.
    pub baseline_meetings: usize,
    /// One-way latency with no forwarder, paced: the harness's own floor (generator batching,
    /// loopback, sink scheduling) under the latency the steps report.
    pub baseline_latency: Latency,
}

/// One step of a run.
#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    /// Backend.
    pub backend: String,
    /// Step number (1-based).
    pub step: usize,
    /// Meetings carried.
    pub meetings: usize,
    /// Participants carried.
    pub participants: usize,
    /// Seconds measured.
    pub seconds: f64,
    /// Packets/s the publishers sent into the SFU.
    pub offered_pps: f64,
    /// Their bits/s (RTP payload).
    pub offered_bps: f64,
    /// Copies/s the SFU should have sent for what the publishers sent: each packet times the
    /// subscribers of its layer (what a perfect forwarder would deliver).
    pub expected_out_pps: f64,
    /// The same with every layer of every publisher flowing (the schedules' nominal load; with
    /// adaptive publishers, more than they send while they ramp).
    pub nominal_out_pps: f64,
    /// Camera packets/s the publishers sent per simulcast layer.
    pub layer_sent_pps: [f64; 3],
    /// Probe packets/s (padding only) the publishers sent.
    pub probe_pps: f64,
    /// Camera publishers of the step's meetings sending 1, 2 and 3 layers at its end.
    pub publisher_layers: [usize; 3],
    /// Copies/s received and verified by their subscribers.
    pub forwarded_pps: f64,
    /// Their bits/s (RTP payload).
    pub forwarded_bps: f64,
    /// Packets/s the dataplane counted out (its /metrics).
    pub dataplane_tx_pps: f64,
    /// Packets/s the dataplane counted in (its /metrics).
    pub dataplane_rx_pps: f64,
    /// Lost copies as a fraction of the expected.
    pub loss: f64,
    /// Lost copies.
    pub lost: u64,
    /// Every counter of the step.
    pub totals: StepTotals,
    /// One-way added latency (publisher send → subscriber verified).
    pub latency: Latency,
    /// Dataplane CPU per worker thread.
    pub dataplane_workers: Vec<WorkerCpu>,
    /// Dataplane worker CPU seconds, all workers.
    pub dataplane_cpu_s: f64,
    /// The harness's threads (generators, sinks): CPU and run-queue wait.
    pub harness_threads: Vec<WorkerCpu>,
    /// Datagrams the kernel dropped at the SFU's leg sockets (the forwarder did not read in
    /// time): loss that is the forwarder's.
    pub socket_drops_sfu: u64,
    /// Datagrams the kernel dropped at the harness's sockets (the sinks did not read in time):
    /// loss that is the harness's (not measured with --netns).
    pub socket_drops_harness: Option<u64>,
    /// Copies forwarded per worker CPU-second.
    pub packets_per_cpu_s: f64,
    /// Busy fraction of the busiest generator thread.
    pub generator_busy: f64,
    /// Busy fraction of the busiest sink thread.
    pub sink_busy: f64,
    /// PLI/FIR the publishers received (the SFU's translation of the subscribers' PLIs).
    pub keyframe_requests: u64,
    /// PLIs the subscribers sent on gaps in video streams.
    pub plis_sent: u64,
    /// Whether the harness, not the forwarder, may have been the limit (a thread over 90% busy,
    /// generator and sink together over 90% of their shared core, or over 80% of the measured
    /// ceiling).
    pub generator_limited: bool,
    /// Whether other load on the machine held the dataplane workers or the harness back: a
    /// thread spent over 10% of the step runnable but waiting for a CPU, beyond what the bench's
    /// own threads on its core were busy. The step then measured the machine's contention as
    /// much as Sluice.
    pub contended: bool,
    /// Loss under `ramp.max_loss` and p99 under `ramp.p99_target_ms`, with something delivered
    /// (final counts).
    pub sustained: bool,
    /// The verdict the ramp acted on, 250 ms after the step (late copies not yet in).
    pub sustained_at_step_end: bool,
    /// Copies that arrived after the step's 250 ms grace (counted in the final figures).
    pub late_copies: u64,
    /// The dataplane's own drops during the step, by reason (its metrics; `send_errors`: sends
    /// the kernel refused), without the normal `rtcp_consumed` and `layer_filtered`.
    pub dataplane_drops: std::collections::BTreeMap<String, f64>,
    /// Dataplane worker CPU per verified copy, µs (`dataplane_cpu_s` / copies).
    pub cpu_us_per_copy: f64,
    /// Packets each dataplane worker transmitted, and its share.
    pub dataplane_worker_tx: Vec<WorkerTx>,
    /// The daemons' memory at the step's end.
    pub rss: Rss,
    /// Webinar steps: viewers, programming, Apply → first packet, memory per viewer, promotion.
    pub webinar: Option<WebinarStep>,
}

impl StepResult {
    pub(crate) fn new(i: StepInputs<'_>) -> Self {
        let t = i.totals;
        let secs = i.seconds.max(1e-9);
        let forwarded_pps = t.received as f64 / secs;
        let offered_pps = t.sent as f64 / secs;
        let mut limited = i.gen_busy > 0.9 || i.sink_busy > 0.9 || (i.shared_core && i.gen_busy + i.sink_busy > 0.9);
        // Copies the kernel dropped because the sinks fell behind are the harness's loss.
        limited |= i.socket_drops_harness.is_some_and(|d| d > 0);
        if let Some(c) = i.ceiling {
            limited |= offered_pps > 0.8 * c.generator_pps || forwarded_pps > 0.8 * c.sink_pps;
            if i.shared_core {
                limited |= offered_pps / c.generator_pps + forwarded_pps / c.sink_pps > 0.8;
            }
        }
        let loss = t.loss();
        // A thread sharing its core with the bench's own threads (generator and sink on one
        // core) waits for them as a matter of course: only the wait beyond their busy time is
        // other load on the machine.
        let ours: Vec<&WorkerCpu> = i.workers.iter().chain(&i.harness).collect();
        let contended = ours.iter().any(|w| {
            let neighbours: f64 = ours.iter().filter(|o| o.tid != w.tid && o.core == w.core).map(|o| o.busy).sum();
            w.runqueue_wait > 0.1 + neighbours
        });
        let sustained = t.received > 0 && loss < i.scenario.ramp.max_loss && i.latency.p99_us < i.scenario.ramp.p99_target_ms * 1e3;
        Self {
            backend: i.backend.to_string(),
            step: i.step,
            meetings: i.meetings,
            participants: i.participants,
            seconds: i.seconds,
            offered_pps,
            offered_bps: t.sent_bytes as f64 * 8.0 / secs,
            expected_out_pps: t.expected as f64 / secs,
            nominal_out_pps: i.nominal_out_pps,
            layer_sent_pps: t.layer_sent.map(|n| n as f64 / secs),
            probe_pps: t.padding_sent as f64 / secs,
            publisher_layers: i.publisher_layers,
            forwarded_pps,
            forwarded_bps: t.received_bytes as f64 * 8.0 / secs,
            dataplane_tx_pps: i.dataplane_tx_pps,
            dataplane_rx_pps: i.dataplane_rx_pps,
            loss,
            lost: t.lost(),
            totals: t,
            latency: i.latency,
            packets_per_cpu_s: if i.dp_cpu_s > 0.0 { t.received as f64 / i.dp_cpu_s } else { 0.0 },
            dataplane_workers: i.workers,
            dataplane_cpu_s: i.dp_cpu_s,
            harness_threads: i.harness,
            socket_drops_sfu: i.socket_drops_sfu,
            socket_drops_harness: i.socket_drops_harness,
            generator_busy: i.gen_busy,
            sink_busy: i.sink_busy,
            keyframe_requests: i.keyframe_requests,
            plis_sent: i.plis_sent,
            generator_limited: limited,
            contended,
            sustained,
            sustained_at_step_end: sustained,
            late_copies: 0,
            dataplane_drops: i.dataplane_drops,
            cpu_us_per_copy: if t.received > 0 { i.dp_cpu_s * 1e6 / t.received as f64 } else { 0.0 },
            dataplane_worker_tx: i.worker_tx,
            rss: i.rss,
            webinar: i.webinar,
        }
    }

    /// Recomputes the figures that depend on arrivals from the final counts.
    pub(crate) fn finalize(&mut self, t: StepTotals, latency: Latency, s: &Scenario) {
        let secs = self.seconds.max(1e-9);
        self.late_copies = t.received.saturating_sub(self.totals.received);
        self.expected_out_pps = t.expected as f64 / secs;
        self.forwarded_pps = t.received as f64 / secs;
        self.forwarded_bps = t.received_bytes as f64 * 8.0 / secs;
        self.loss = t.loss();
        self.lost = t.lost();
        self.packets_per_cpu_s = if self.dataplane_cpu_s > 0.0 { t.received as f64 / self.dataplane_cpu_s } else { 0.0 };
        self.cpu_us_per_copy = if t.received > 0 { self.dataplane_cpu_s * 1e6 / t.received as f64 } else { 0.0 };
        self.totals = t;
        self.latency = latency;
        self.sustained = t.received > 0 && self.loss < s.ramp.max_loss && latency.p99_us < s.ramp.p99_target_ms * 1e3;
    }

    /// The step's row of the table.
    pub fn one_line(&self) -> String {
        let cpu: Vec<String> =
            self.dataplane_workers.iter().map(|w| format!("c{}:{:.0}% (waited {:.0}%)", w.core, w.busy * 100.0, w.runqueue_wait * 100.0)).collect();
        format!(
            "step {:>2}: {}  in {:>8.0}/s  fwd {:>9.0}/s {:>7.1} Mb/s  loss {:>7.4}%  p50/p99/p99.9/max {:>6.0}/{:>6.0}/{:>6.0}/{:>6.0} us  dp {} ({:.0} pkt/cpu-s)  harness {:.0}%/{:.0}%  dup {} reord {} gaps {} ts! {} auth! {} misroute {}  socket drops sfu {} harness {}  dataplane drops {:?}{}{}",
            self.step,
            match &self.webinar {
                Some(w) => format!("{:>5} viewers", w.viewers),
                None => format!("{:>4} meetings {:>5} parts", self.meetings, self.participants),
            },
            self.offered_pps,
            self.forwarded_pps,
            self.forwarded_bps / 1e6,
            self.loss * 100.0,
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.p999_us,
            self.latency.max_us,
            cpu.join(" "),
            self.packets_per_cpu_s,
            self.generator_busy * 100.0,
            self.sink_busy * 100.0,
            self.totals.duplicates,
            self.totals.reordered,
            self.totals.seq_gaps,
            self.totals.ts_errors,
            self.totals.auth_failures,
            self.totals.misrouted,
            self.socket_drops_sfu,
            self.socket_drops_harness.map_or("-".to_string(), |d| d.to_string()),
            self.dataplane_drops,
            if self.sustained { "  ok" } else { "  NOT SUSTAINED" },
            if self.generator_limited { "  [GENERATOR-LIMITED]" } else { "" },
        ) + if self.contended { "  [CPU-CONTENDED]" } else { "" }
    }
}

/// The best sustained step of a backend.
#[derive(Clone, Debug, Serialize)]
pub struct Sustained {
    /// Step.
    pub step: usize,
    /// Meetings carried.
    pub meetings: usize,
    /// Participants carried.
    pub participants: usize,
    /// Copies/s delivered.
    pub forwarded_pps: f64,
    /// Bits/s delivered.
    pub forwarded_bps: f64,
    /// Dataplane worker CPU per wall second (cores' worth).
    pub dataplane_cpu: f64,
    /// Whether that step may have been limited by the harness.
    pub generator_limited: bool,
    /// Webinar: viewers carried.
    pub viewers: Option<usize>,
}

/// One backend's run.
#[derive(Clone, Debug, Serialize)]
pub struct BackendRun {
    /// Backend.
    pub backend: String,
    /// Dataplane workers.
    pub workers: u32,
    /// Seconds to program every meeting over gRPC.
    pub programming_s: f64,
    /// Meetings programmed.
    pub meetings_programmed: usize,
    /// Legs the node reported.
    pub legs: usize,
    /// Subscriptions programmed.
    pub subscriptions: usize,
    /// Steps measured.
    pub steps: Vec<StepResult>,
    /// The best sustained step.
    pub max_sustained: Option<Sustained>,
    /// The adaptive publishers' ramps (`None` with fixed publishers).
    pub publishers: Option<Ramps>,
    /// The control plane's journal as the bench's daemons run it.
    pub journal: String,
    /// Webinar runs: baseline memory, addressing, programming.
    pub webinar: Option<WebinarRun>,
}

/// Host facts, to read numbers in context.
#[derive(Clone, Debug, Serialize)]
pub struct Host {
    /// Online CPUs.
    pub cpus: usize,
    /// /proc/loadavg at the end.
    pub loadavg: String,
    /// Kernel release.
    pub kernel: String,
}

/// Everything.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// Its meeting-size statistics.
    pub mix: MixStats,
    /// Mode.
    pub mode: Mode,
    /// Meetings, participants and subscriptions planned.
    pub planned: (usize, usize, usize),
    /// Participants across a veth pair in a namespace (else loopback).
    pub netns: bool,
    /// Faults injected.
    pub impair: Impair,
    /// Host.
    pub host: Host,
    /// The harness's own ceiling.
    pub ceiling: Option<Ceiling>,
    /// Per backend.
    pub runs: Vec<BackendRun>,
}

impl Report {
    pub(crate) fn new(o: &Options, planned: (usize, usize, usize), ceiling: Option<Ceiling>, runs: Vec<BackendRun>) -> Self {
        Self {
            scenario: o.scenario.clone(),
            mix: o.scenario.mix_stats(),
            mode: o.mode,
            planned,
            netns: o.netns,
            impair: o.impair,
            host: Host {
                cpus: std::thread::available_parallelism().map_or(0, usize::from),
                loadavg: std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string(),
                kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
            },
            ceiling,
            runs,
        }
    }

    /// The readable summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let m = &self.mix;
        let shape = match &self.scenario.webinar {
            Some(w) => format!(
                "webinar: one presenter (audio, camera {:?} kbit/s, screen {} kbit/s at {} fps) to receive-only viewers, camera layers {:?} low/mid/high",
                self.scenario.video.layers_kbps, self.scenario.screen.kbps, self.scenario.screen.fps, w.camera_mix
            ),
            None => format!("sizes: median {}, mean {:.1}, p95 {}", m.median, m.mean, m.p95),
        };
        let _ = writeln!(
            s,
            "\ncapacity report — scenario {:?} ({shape}), {:?}, {}, load average {}",
            self.scenario.name,
            self.mode,
            if self.netns { "netns/veth" } else { "loopback" },
            self.host.loadavg
        );
        if let Some(c) = &self.ceiling {
            let _ = writeln!(
                s,
                "harness ceiling (no forwarder): generator {:.0} pkt/s, sink {:.0} pkt/s verified ({} lane(s)); its own latency floor: p50 {:.0} us, p99 {:.0} us",
                c.generator_pps, c.sink_pps, c.lanes, c.baseline_latency.p50_us, c.baseline_latency.p99_us
            );
        }
        if self.scenario.webinar.is_some() {
            self.webinar_table(&mut s);
        } else {
            let _ = writeln!(
                s,
                "{:<6} {:>4} {:>5} {:>6} {:>10} {:>11} {:>10} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>14} {:>10} {:>11}  verdict",
                "backend",
                "step",
                "meet",
                "parts",
                "in pkt/s",
                "expect/s",
                "fwd pkt/s",
                "fwd Mb/s",
                "loss %",
                "p50 us",
                "p99 us",
                "p99.9 us",
                "max us",
                "dp cpu+wait",
                "pkt/cpu-s",
                "cams 1/2/3L"
            );
            for r in &self.runs {
                for st in &r.steps {
                    let cpu: Vec<String> = st.dataplane_workers.iter().map(|w| format!("{:.0}%+{:.0}%w", w.busy * 100.0, w.runqueue_wait * 100.0)).collect();
                    let _ = writeln!(
                        s,
                        "{:<6} {:>4} {:>5} {:>6} {:>10.0} {:>11.0} {:>10.0} {:>8.1} {:>9.4} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>14} {:>10.0} {:>11}  {}{}{}",
                        r.backend,
                        st.step,
                        st.meetings,
                        st.participants,
                        st.offered_pps,
                        st.expected_out_pps,
                        st.forwarded_pps,
                        st.forwarded_bps / 1e6,
                        st.loss * 100.0,
                        st.latency.p50_us,
                        st.latency.p99_us,
                        st.latency.p999_us,
                        st.latency.max_us,
                        cpu.join("/"),
                        st.packets_per_cpu_s,
                        if r.publishers.is_some() {
                            format!("{}/{}/{}", st.publisher_layers[0], st.publisher_layers[1], st.publisher_layers[2])
                        } else {
                            "all".to_string()
                        },
                        if st.sustained { "ok" } else { "NOT sustained" },
                        if st.generator_limited { " (generator-limited)" } else { "" },
                        if st.contended { " (cpu-contended)" } else { "" }
                    );
                }
            }
            let _ = writeln!(
                s,
                "(expect/s: copies/s the SFU owed for what the publishers actually sent; dp cpu+wait: each dataplane worker's CPU and its time runnable but waiting for a CPU, per wall second; cpu-contended: a dataplane or harness thread waited over 10% beyond its own neighbours' busy time — other load on the machine, not Sluice, shaped that step; cams 1/2/3L: camera publishers sending 1, 2 and 3 simulcast layers at the step's end, \"all\" with fixed publishers)"
            );
        }
        if self.runs.iter().any(|r| r.publishers.is_some()) {
            let _ = writeln!(s, "adaptive publishers (transport-cc from Sluice into the core's GCC estimator; start at 300 kbit/s on the lowest layer):");
            for r in &self.runs {
                if let Some(p) = &r.publishers {
                    s.push_str(&p.table(&r.backend));
                }
            }
        }
        let _ = writeln!(s, "path faults seen by the sinks (all steps):");
        for r in &self.runs {
            let sum = |f: fn(&StepTotals) -> u64| r.steps.iter().map(|st| f(&st.totals)).sum::<u64>();
            let _ = writeln!(
                s,
                "  {:<6} lost {}  duplicates {}  reordered {}  sequence gaps {}  timestamp errors {}  failed to authenticate {}  misrouted {}  fallback copies {}  probe copies {}  PLIs sent {}  keyframe requests at publishers {}  kernel socket drops: at the SFU {}, at the harness {}",
                r.backend,
                r.steps.iter().map(|st| st.lost).sum::<u64>(),
                sum(|t| t.duplicates),
                sum(|t| t.reordered),
                sum(|t| t.seq_gaps),
                sum(|t| t.ts_errors),
                sum(|t| t.auth_failures),
                sum(|t| t.misrouted),
                sum(|t| t.fallback),
                sum(|t| t.padding_received),
                r.steps.iter().map(|st| st.plis_sent).sum::<u64>(),
                r.steps.iter().map(|st| st.keyframe_requests).sum::<u64>(),
                r.steps.iter().map(|st| st.socket_drops_sfu).sum::<u64>(),
                r.steps.iter().map(|st| st.socket_drops_harness.unwrap_or(0)).sum::<u64>(),
            );
            let mut dp = std::collections::BTreeMap::<&str, f64>::new();
            for st in &r.steps {
                for (k, v) in &st.dataplane_drops {
                    *dp.entry(k.as_str()).or_default() += v;
                }
            }
            let dp: Vec<String> = dp.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
            let _ = writeln!(
                s,
                "         the dataplane's own drops (its metrics): {}   copies that arrived after their step's grace: {}",
                if dp.is_empty() { "none".to_string() } else { dp.join(", ") },
                r.steps.iter().map(|st| st.late_copies).sum::<u64>()
            );
        }
        let _ = writeln!(s, "maximum sustained (loss < {}%, p99 < {} ms):", self.scenario.ramp.max_loss * 100.0, self.scenario.ramp.p99_target_ms);
        for r in &self.runs {
            match &r.max_sustained {
                Some(m) => {
                    let _ = writeln!(
                        s,
                        "  {:<6} {:.0} pkt/s ({:.1} Mbit/s) forwarded, {}, dataplane {:.2} cores{}{}",
                        r.backend,
                        m.forwarded_pps,
                        m.forwarded_bps / 1e6,
                        match m.viewers {
                            Some(v) => format!("{v} viewers"),
                            None => format!("{} meetings, {} participants", m.meetings, m.participants),
                        },
                        m.dataplane_cpu,
                        if m.generator_limited { " — GENERATOR-LIMITED: the forwarder may carry more" } else { "" },
                        if r.steps.iter().any(|st| st.contended) { " — some steps were CPU-contended (see the table): treat as a lower bound" } else { "" }
                    );
                }
                None => {
                    let _ = writeln!(s, "  {:<6} no step was sustained", r.backend);
                }
            }
        }
        if self.runs.len() == 2
            && let (Some(a), Some(b)) = (&self.runs[0].max_sustained, &self.runs[1].max_sustained)
        {
            let per_cpu = |r: &BackendRun| r.steps.iter().filter(|s| s.sustained).map(|s| s.packets_per_cpu_s).fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "  {} / {}: {:.2}x the sustained rate, {:.2}x the packets per CPU-second{}",
                self.runs[1].backend,
                self.runs[0].backend,
                b.forwarded_pps / a.forwarded_pps.max(1.0),
                per_cpu(&self.runs[1]) / per_cpu(&self.runs[0]).max(1.0),
                if self.runs.iter().flat_map(|r| &r.steps).any(|s| s.contended) {
                    " (cpu-contended steps: the ratio is dominated by other load on the machine)"
                } else {
                    ""
                }
            );
        }
        s
    }

    /// The webinar's rows: per step its viewers, copies and bits out, loss, latency, the
    /// dataplane's CPU per worker and per copy, where the copies were made, memory, programming
    /// and Apply → first packet; then the promotion, addressing and journal.
    fn webinar_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "{:<6} {:>4} {:>6} {:>10} {:>8} {:>8} {:>7} {:>7} {:>13} {:>7} {:>15} {:>13} {:>15} {:>17} {:>23}  verdict",
            "backend",
            "step",
            "views",
            "copies/s",
            "Mbit/s",
            "loss %",
            "p50 us",
            "p99 us",
            "dp cpu/wkr",
            "us/copy",
            "copies/wkr",
            "RSS dp/cp MB",
            "B/viewer dp/cp",
            "programmed",
            "apply→1st ms"
        );
        for r in &self.runs {
            for st in &r.steps {
                let Some(w) = &st.webinar else { continue };
                let cpu: Vec<String> = st.dataplane_workers.iter().map(|c| format!("{:.0}%", c.busy * 100.0)).collect();
                let tx: Vec<String> = st.dataplane_worker_tx.iter().map(|t| format!("{:.0}%", t.share * 100.0)).collect();
                let programmed =
                    if w.programming.viewers > 0 { format!("+{} in {:.3}s", w.programming.viewers, w.programming.seconds) } else { "-".to_string() };
                let f = &w.first_packet;
                let first = if f.samples > 0 {
                    format!(
                        "{:.1}/{:.1} ({:.1}/{:.1}){}",
                        f.p50_ms,
                        f.p99_ms,
                        f.from_request_p50_ms,
                        f.from_request_p99_ms,
                        if f.missing > 0 { format!(" {} none", f.missing) } else { String::new() }
                    )
                } else {
                    "-".to_string()
                };
                let _ = writeln!(
                    s,
                    "{:<6} {:>4} {:>6} {:>10.0} {:>8.1} {:>8.4} {:>7.0} {:>7.0} {:>13} {:>7.2} {:>15} {:>13} {:>15} {:>17} {:>23}  {}{}{}",
                    r.backend,
                    st.step,
                    w.viewers,
                    st.forwarded_pps,
                    st.forwarded_bps / 1e6,
                    st.loss * 100.0,
                    st.latency.p50_us,
                    st.latency.p99_us,
                    cpu.join("/"),
                    st.cpu_us_per_copy,
                    tx.join("/"),
                    format!("{:.0}/{:.0}", st.rss.dataplane_kb as f64 / 1024.0, st.rss.controlplane_kb as f64 / 1024.0),
                    format!("{:.0}/{:.0}", w.dataplane_bytes_per_viewer, w.controlplane_bytes_per_viewer),
                    programmed,
                    first,
                    if st.sustained { "ok" } else { "NOT sustained" },
                    if st.generator_limited { " (generator-limited)" } else { "" },
                    if st.contended { " (cpu-contended)" } else { "" }
                );
            }
        }
        let _ = writeln!(
            s,
            "(copies/s, Mbit/s: copies verified at the viewers (and the presenter) per second, RTP payload bits; loss: owed copies that did not arrive; p50/p99: one-way added latency; dp cpu/wkr: each dataplane worker's CPU per wall second; us/copy: dataplane CPU-seconds per verified copy; copies/wkr: each worker's share of the packets the dataplane sent (its sluice_tx_packets_total per worker); RSS: VmRSS of sluice-dataplane/sluice-controlplane at the step's end; B/viewer: (RSS − RSS before any viewer) / viewers; programmed: viewers this step added over gRPC and the time it took; apply→1st: p50/p99 from the Apply that subscribed a viewer answering to the viewer's first verified copy (0 when the copy came first), and in parentheses from the Apply's request; the next packet of a stream is up to 20 ms away (audio))"
        );
        for r in &self.runs {
            if let Some(w) = &r.webinar {
                let _ = writeln!(
                    s,
                    "  {:<6} viewers: {}; presenter alone first for {:.1} s ({} camera layer(s)); before any viewer: dataplane {:.1} MB, control plane {:.1} MB; {} viewers programmed in {} Applies, {:.2} s in all (slowest Apply {:.0} ms)",
                    r.backend,
                    w.addresses,
                    w.warmup_s,
                    w.presenter_layers,
                    w.baseline_rss.dataplane_kb as f64 / 1024.0,
                    w.baseline_rss.controlplane_kb as f64 / 1024.0,
                    w.programming.viewers,
                    w.programming.applies,
                    w.programming.seconds,
                    w.programming.max_apply_ms
                );
            }
            let _ = writeln!(s, "  {:<6} control plane journal: {}", r.backend, r.journal);
            for st in &r.steps {
                let Some(p) = st.webinar.as_ref().and_then(|w| w.promotion.as_ref()) else { continue };
                let t = &p.totals;
                let o = &st.totals;
                let _ = writeln!(
                    s,
                    "  {:<6} promotion (step {}): viewer {} promoted {:.1} s into the step (Apply {:.0} ms: its audio track, {} subscriptions), spoke {:.1} s, demoted (Apply {:.0} ms). Its audio: {} packets sent, {} copies owed, {} verified ({} of {} subscribers heard it), lost {}, gaps {}, auth failures {}, p50/p99 {:.0}/{:.0} us. The presenter's streams across promotion and demotion: lost {}, gaps {}, reordered {}, duplicates {}, timestamp errors {}, auth failures {}, misrouted {} — {}",
                    r.backend,
                    st.step,
                    p.speaker,
                    p.at_s,
                    p.promote_apply_ms,
                    p.subscribers,
                    p.spoke_s,
                    p.demote_apply_ms,
                    t.sent,
                    t.expected,
                    t.received,
                    p.listeners,
                    p.subscribers,
                    t.lost(),
                    t.seq_gaps,
                    t.auth_failures,
                    p.latency.p50_us,
                    p.latency.p99_us,
                    o.lost(),
                    o.seq_gaps,
                    o.reordered,
                    o.duplicates,
                    o.ts_errors,
                    o.auth_failures,
                    o.misrouted,
                    if p.clean { "clean" } else { "NOT CLEAN" }
                );
            }
        }
    }

    /// Forwarded rate and p99 latency against offered load (the copies/s the subscriptions ask
    /// for), one colour per backend.
    pub fn svg(&self) -> String {
        const W: f64 = 820.0;
        const H: f64 = 460.0;
        let (l, r, t, b) = (80.0, 80.0, 40.0, 60.0);
        let steps: Vec<&StepResult> = self.runs.iter().flat_map(|r| &r.steps).collect();
        let xmax = nice(steps.iter().map(|s| s.expected_out_pps).fold(1.0, f64::max));
        let ymax = nice(steps.iter().map(|s| s.forwarded_pps.max(s.expected_out_pps)).fold(1.0, f64::max));
        // Latency on a log axis (ms), 0.1 ms to the decade above the worst p99 (or the target).
        let decades = (steps.iter().map(|s| s.latency.p99_us / 1e3).fold(self.scenario.ramp.p99_target_ms, f64::max).log10().ceil() as i32 + 1).clamp(2, 6);
        let pl = |ms: f64| H - b - ((ms.max(0.1) / 0.1).log10() / f64::from(decades)).min(1.0) * (H - t - b);
        let px = |x: f64| l + x / xmax * (W - l - r);
        let py = |y: f64, max: f64| H - b - y / max * (H - t - b);
        const RAMP_H: f64 = 320.0;
        let ramps: Vec<(&str, &Ramps)> = self.runs.iter().filter_map(|r| Some((r.backend.as_str(), r.publishers.as_ref()?))).collect();
        let all_h = if ramps.is_empty() { H } else { H + RAMP_H };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{all_h}" viewBox="0 0 {W} {all_h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{all_h}" fill="white"/>"#);
        if !ramps.is_empty() {
            s.push_str(&ramp::svg_panel(&ramps, H, W, RAMP_H, &self.scenario.video.layers_kbps));
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="14">Sluice capacity: {} ({})</text>"#,
            W / 2.0,
            xml(&self.scenario.name),
            if self.netns { "netns/veth" } else { "loopback" }
        );
        for i in 0..=5 {
            let f = f64::from(i) / 5.0;
            let (x, y) = (px(f * xmax), py(f * ymax, ymax));
            let _ = writeln!(
                s,
                r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
                t,
                H - b,
                H - b + 16.0,
                si(f * xmax)
            );
            let _ = writeln!(
                s,
                r##"<line x1="{l}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                W - r,
                l - 6.0,
                y + 4.0,
                si(f * ymax)
            );
        }
        for d in 0..=decades {
            let ms = 0.1 * 10f64.powi(d);
            let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, W - r + 6.0, pl(ms) + 4.0, if ms < 1.0 { format!("{ms:.1}") } else { format!("{ms:.0}") });
        }
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="#999" stroke-dasharray="4 4"/>"##,
            py(0.0, ymax),
            px(xmax.min(ymax)),
            py(xmax.min(ymax), ymax)
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">offered load: copies/s the subscriptions ask for</text>"#, (l + W - r) / 2.0, H - 20.0);
        let _ = writeln!(
            s,
            r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">forwarded and verified, packets/s (solid)</text>"#,
            (t + H - b) / 2.0
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate({} {}) rotate(90)" text-anchor="middle">p99 one-way added latency, ms, log scale (dashed)</text>"#,
            W - 24.0,
            (t + H - b) / 2.0
        );
        let target = pl(self.scenario.ramp.p99_target_ms);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{target}" x2="{}" y2="{target}" stroke="#e69500" stroke-dasharray="2 4"/><text x="{}" y="{}" text-anchor="end" fill="#e69500">p99 target</text>"##,
            W - r,
            W - r - 4.0,
            target - 4.0
        );
        let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
        for (k, run) in self.runs.iter().enumerate() {
            let c = colours[k % colours.len()];
            // Lines through the steps in order of load (a ramp may step back to bisect or confirm).
            let mut by_load: Vec<&StepResult> = run.steps.iter().collect();
            by_load.sort_by(|a, b| a.expected_out_pps.total_cmp(&b.expected_out_pps));
            let fwd: Vec<String> = by_load.iter().map(|s| format!("{:.1},{:.1}", px(s.expected_out_pps), py(s.forwarded_pps, ymax))).collect();
            let lat: Vec<String> = by_load.iter().map(|s| format!("{:.1},{:.1}", px(s.expected_out_pps), pl(s.latency.p99_us / 1e3))).collect();
            let _ = writeln!(s, r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#, fwd.join(" "));
            let _ = writeln!(s, r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" stroke-dasharray="6 3" points="{}"/>"#, lat.join(" "));
            for st in &run.steps {
                let fill = if st.sustained { c } else { "white" };
                let _ = writeln!(
                    s,
                    r#"<rect x="{:.1}" y="{:.1}" width="6" height="6" fill="{fill}" stroke="{c}"/>"#,
                    px(st.expected_out_pps) - 3.0,
                    pl(st.latency.p99_us / 1e3) - 3.0
                );
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{fill}" stroke="{c}"><title>{} step {}: {} meetings, {:.0} pkt/s, loss {:.3}%, p99 {:.0} us</title></circle>"#,
                    px(st.expected_out_pps),
                    py(st.forwarded_pps, ymax),
                    xml(&run.backend),
                    st.step,
                    st.meetings,
                    st.forwarded_pps,
                    st.loss * 100.0,
                    st.latency.p99_us
                );
            }
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="14" height="4" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
                l + 10.0,
                t + 10.0 + 18.0 * k as f64,
                l + 30.0,
                t + 15.0 + 18.0 * k as f64,
                xml(&run.backend)
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" fill="#555">circles: forwarded; squares: p99; hollow: not sustained; dotted grey: forwarded = offered</text>"##,
            l + 10.0,
            t + 15.0 + 18.0 * self.runs.len() as f64
        );
        s.push_str("</svg>\n");
        s
    }
}

/// A round axis maximum at or above `x`.
fn nice(x: f64) -> f64 {
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * p).find(|&v| v >= x).unwrap_or(10.0 * p)
}

fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.0}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_round_up() {
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(120.0), 200.0);
        assert_eq!(nice(0.3), 0.5);
        assert_eq!(si(250_000.0), "250k");
    }
}
