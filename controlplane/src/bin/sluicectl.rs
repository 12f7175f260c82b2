//! `sluicectl`: operator CLI for a Sluice control plane (the `sluice.v1` Node and Routes gRPC
//! services), and dev certificates for its TLS.
//!
//! Everything it prints that came from the server (ids, addresses, events, error messages) goes
//! through [`text::escape`] (or [`text::json_escape`] for JSON): an id with a newline, an ANSI
//! escape sequence or a bidi override cannot forge lines or recolour the operator's terminal.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use sluice_controlplane::pb;
use sluice_controlplane::pb::node_client::NodeClient;
use sluice_controlplane::pb::routes_client::RoutesClient;
use sluice_controlplane::text;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Operator CLI for a Sluice control plane.
#[derive(Debug, Parser)]
#[command(name = "sluicectl", version)]
struct Args {
    /// The control plane's gRPC address: `host:port` or a URL (`http://…`, `https://…`).
    #[arg(long, global = true, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// CA certificate (PEM) to verify the server with; turns TLS on.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS (with --key).
    #[arg(long, global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (PEM) for mTLS (with --cert).
    #[arg(long, global = true, requires = "cert")]
    key: Option<PathBuf>,
    /// Server name to verify in its certificate.
    #[arg(long, global = true, default_value = "localhost")]
    server_name: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The node's status: load, capacity, drain state, dataplane link.
    Status,
    /// Every session with its legs and their local ports.
    Sessions,
    /// One session: legs, tracks, subscriptions.
    Session {
        /// The session id.
        id: String,
    },
    /// Follow events as they happen (changes, legs active/idle, streams started/stopped,
    /// layer switches, keyframe requests, receiver-report stats), one line each, until Ctrl-C.
    Watch {
        /// Only this session's events (and node-wide ones).
        session: Option<String>,
    },
    /// A live full-screen view of the node, refreshed every --interval: health, drain state, each
    /// worker's packets/s, bits/s and drops, drops by reason, the sessions (legs active, worst
    /// loss and RTT) and the legs of the one selected (Enter; Esc back; q quits). Over SSH too.
    Top {
        /// Only this session, with its legs shown.
        #[arg(long)]
        session: Option<String>,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Print one plain-text snapshot (rates over --interval) and exit: for scripts, and
        /// where stdout is not a terminal.
        #[arg(long)]
        once: bool,
    },
    /// Refuse new sessions (existing ones keep working).
    Drain,
    /// Take new sessions again.
    Undrain,
    /// Choose the node for a session's next participant (least loaded; a node the meeting
    /// already has while it is below the threshold) and record it in Redis, through the node at
    /// --addr (`Node.Place`) or straight in Redis with --redis.
    Place {
        /// The session (meeting) id.
        #[arg(long)]
        session: String,
        /// Add a node to the session rather than answer one it has.
        #[arg(long)]
        new_node: bool,
        /// With --new-node: a node of the session the caller already knows (repeat it); a node
        /// outside these that the session has came from an earlier attempt and is answered.
        #[arg(long = "known-node")]
        known_nodes: Vec<String>,
        /// Preference threshold in (0, 1] (default: the node's placement_threshold, or 0.8
        /// with --redis).
        #[arg(long)]
        threshold: Option<f64>,
        /// Place straight in this Redis (`redis://host:port/`) instead of asking the node at
        /// --addr.
        #[arg(long)]
        redis: Option<String>,
    },
    /// Apply a change set (`Routes.Apply`) read from FILE (`-`: stdin) in the protobuf JSON
    /// mapping of `sluice.v1.ChangeSet` (what grpcurl takes), and print the answer: the
    /// generation, the legs' local ports. A change set the node refuses changes nothing.
    Apply {
        /// The change set, as JSON.
        file: PathBuf,
    },
    /// TURN credentials for one participant (`Routes.TurnCredentials`): username, password,
    /// lifetime and the TURN URLs for the browser's iceServers.
    TurnCredentials {
        /// Who they are for (allocation quotas are per user).
        #[arg(long)]
        user: String,
        /// Lifetime in seconds (default: the node's).
        #[arg(long, default_value_t = 0)]
        ttl: u32,
    },
    /// Write a dev CA, a server certificate (localhost, 127.0.0.1, ::1) and a client
    /// certificate into DIR.
    Certs {
        /// Where to write them.
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    if sluice_api::logs::man_page_requested(<Args as clap::CommandFactory>::command(), "1")? {
        return Ok(());
    }
    let args = Args::parse();
    if let Cmd::Certs { dir } = &args.cmd {
        let written = sluice_controlplane::certs::write_dev_certs(dir)?;
        if args.json {
            println!("{}", json!({ "written": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>() }));
        } else {
            for p in written {
                println!("wrote {}", p.display());
            }
        }
        return Ok(());
    }
    if let Cmd::Place { session, new_node, known_nodes, threshold, redis: Some(url) } = &args.cmd {
        let placer = sluice_controlplane::placement::Placer::new(url, sluice_controlplane::placement::DEFAULT_THRESHOLD).context("--redis")?;
        let req = place_request(session, *new_node, known_nodes, *threshold);
        let placed = placer.place(&sluice_controlplane::placement::Request::from_pb(req, placer.threshold()));
        let placed = placed.map_err(|e| grpc_err(sluice_controlplane::api::place_status(&e)))?;
        print_placement(&placed.into(), args.json);
        return Ok(());
    }
    if let Cmd::Top { once, .. } = &args.cmd {
        if args.json {
            anyhow::bail!("top prints text; for JSON use `sluicectl --json status` and `sluicectl --json sessions`");
        }
        if !once && !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            anyhow::bail!("top draws a full-screen view and needs a terminal on stdout; use `sluicectl top --once` for a plain snapshot");
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run(args))
}

/// A `sluice.v1.ChangeSet` from its protobuf JSON mapping, through the descriptors the server
/// also serves by reflection (so the names and rules are exactly grpcurl's).
fn read_change_set(file: &std::path::Path) -> anyhow::Result<pb::ChangeSet> {
    use prost::Message as _;
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the change set from stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let pool = prost_reflect::DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).context("the built-in descriptors")?;
    let desc = pool.get_message_by_name("sluice.v1.ChangeSet").context("sluice.v1.ChangeSet in the descriptors")?;
    let mut de = serde_json::Deserializer::from_str(&text);
    let msg = prost_reflect::DynamicMessage::deserialize(desc, &mut de).with_context(|| format!("{}: not a sluice.v1.ChangeSet", file.display()))?;
    de.end().with_context(|| format!("{}: trailing characters", file.display()))?;
    pb::ChangeSet::decode(msg.encode_to_vec().as_slice()).context("re-encoding the change set")
}

/// A message in the protobuf JSON mapping.
fn to_json<M: prost::Message>(m: &M) -> anyhow::Result<String> {
    let pool = prost_reflect::DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).context("the built-in descriptors")?;
    let name = std::any::type_name::<M>().rsplit("::").next().unwrap_or_default();
    let desc = pool.get_message_by_name(&format!("sluice.v1.{name}")).with_context(|| format!("sluice.v1.{name} in the descriptors"))?;
    let msg = prost_reflect::DynamicMessage::decode(desc, m.encode_to_vec().as_slice()).context("decoding the answer")?;
    serde_json::to_string(&msg).context("the answer as JSON")
}

fn place_request(session: &str, new_node: bool, known_nodes: &[String], threshold: Option<f64>) -> pb::PlaceRequest {
    pb::PlaceRequest { session: session.to_owned(), new_node, known_nodes: known_nodes.to_vec(), threshold }
}

fn print_placement(p: &pb::PlaceResponse, as_json: bool) {
    if as_json {
        let v = json!({
            "node_id": p.node_id, "grpc": p.grpc, "score": p.score, "already_placed": p.already_placed,
            "reason": p.reason, "nodes": p.nodes,
        });
        println!("{}", text::json_escape(&v.to_string()));
        return;
    }
    print_table(&[
        vec!["node".to_owned(), p.node_id.clone()],
        vec!["grpc".into(), p.grpc.clone()],
        vec!["score".into(), format!("{:.3}", p.score)],
        vec!["already placed".into(), if p.already_placed { "yes" } else { "no" }.into()],
        vec!["session's nodes".into(), p.nodes.join(", ")],
        vec!["reason".into(), p.reason.clone()],
    ]);
}

async fn connect(args: &Args) -> anyhow::Result<Channel> {
    let tls = args.ca.is_some() || args.cert.is_some();
    let url = if args.addr.contains("://") { args.addr.clone() } else { format!("{}://{}", if tls { "https" } else { "http" }, args.addr) };
    let mut ep = Endpoint::from_shared(url.clone()).with_context(|| format!("--addr {url}"))?.connect_timeout(Duration::from_secs(5));
    if tls || url.starts_with("https://") {
        let mut cfg = ClientTlsConfig::new().domain_name(args.server_name.clone());
        if let Some(ca) = &args.ca {
            cfg = cfg.ca_certificate(Certificate::from_pem(std::fs::read(ca).with_context(|| format!("--ca {}", ca.display()))?));
        }
        if let (Some(c), Some(k)) = (&args.cert, &args.key) {
            let cert = std::fs::read(c).with_context(|| format!("--cert {}", c.display()))?;
            let key = std::fs::read(k).with_context(|| format!("--key {}", k.display()))?;
            cfg = cfg.identity(Identity::from_pem(cert, key));
        }
        ep = ep.tls_config(cfg).context("TLS settings")?;
    }
    ep.connect().await.with_context(|| format!("connecting to {url}"))
}

/// The status with its cause chain (a refused TLS handshake only shows there).
fn grpc_err(s: tonic::Status) -> anyhow::Error {
    let mut msg = format!("{:?}: {}", s.code(), text::escape(s.message()));
    let mut cause = std::error::Error::source(&s);
    while let Some(c) = cause {
        msg.push_str(&format!(": {}", text::escape(&c.to_string())));
        cause = c.source();
    }
    anyhow::anyhow!(msg)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let channel = connect(&args).await?;
    let mut node = NodeClient::new(channel.clone());
    let mut routes = RoutesClient::new(channel);
    match &args.cmd {
        Cmd::Top { session, interval, once } => {
            let interval = Duration::try_from_secs_f64(*interval)
                .ok()
                .filter(|d| (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(d))
                .ok_or_else(|| anyhow::anyhow!("--interval {interval}: seconds between 0.1 and 3600"))?;
            if *once {
                print!("{}", sluice_controlplane::top::once(&mut node, &mut routes, &args.addr, interval, session.as_deref()).await?);
            } else {
                sluice_controlplane::top::interactive(node, routes, &args.addr, interval, session.clone()).await?;
            }
        }
        Cmd::Status => {
            let s = node.get_status(pb::GetStatusRequest {}).await.map_err(grpc_err)?.into_inner();
            print_status(&s, args.json);
        }
        Cmd::Drain => {
            let s = node.drain(pb::DrainRequest {}).await.map_err(grpc_err)?.into_inner();
            print_status(&s, args.json);
        }
        Cmd::Undrain => {
            let s = node.undrain(pb::UndrainRequest {}).await.map_err(grpc_err)?.into_inner();
            print_status(&s, args.json);
        }
        Cmd::Place { session, new_node, known_nodes, threshold, .. } => {
            let p = node.place(place_request(session, *new_node, known_nodes, *threshold)).await.map_err(grpc_err)?.into_inner();
            print_placement(&p, args.json);
        }
        Cmd::TurnCredentials { user, ttl } => {
            let r = routes.turn_credentials(pb::TurnCredentialsRequest { user: user.clone(), ttl_seconds: *ttl }).await.map_err(grpc_err)?.into_inner();
            if args.json {
                println!("{}", to_json(&r)?);
            } else {
                print_table(&[
                    vec!["username".to_owned(), text::escape(&r.username)],
                    vec!["password".into(), r.password.clone()],
                    vec!["ttl".into(), format!("{} s", r.ttl_seconds)],
                    vec!["urls".into(), text::escape(&r.urls.join(" "))],
                ]);
            }
        }
        Cmd::Apply { file } => {
            let change = read_change_set(file)?;
            let r = routes.apply(change).await.map_err(grpc_err)?.into_inner();
            println!("{}", to_json(&r)?);
        }
        Cmd::Sessions => {
            let list = routes.list_sessions(pb::ListSessionsRequest {}).await.map_err(grpc_err)?.into_inner();
            let mut sessions = Vec::new();
            for summary in list.sessions {
                match routes.get_session(pb::GetSessionRequest { session: summary.id.clone() }).await {
                    Ok(s) => sessions.push((summary, Some(s.into_inner()))),
                    // Deleted between the list and the get.
                    Err(e) if e.code() == tonic::Code::NotFound => {}
                    Err(e) => return Err(grpc_err(e)),
                }
            }
            if args.json {
                let v: Vec<Value> = sessions
                    .iter()
                    .map(|(sum, s)| {
                        json!({
                            "id": sum.id, "revision": sum.revision, "tracks": sum.tracks, "subscriptions": sum.subscriptions,
                            "legs": s.as_ref().map(|s| s.legs.iter().map(leg_json).collect::<Vec<_>>()).unwrap_or_default(),
                        })
                    })
                    .collect();
                println!("{}", text::json_escape(&serde_json::to_string_pretty(&json!({ "sessions": v }))?));
            } else {
                let mut rows =
                    vec![vec!["SESSION".to_owned(), "REVISION".into(), "TRACKS".into(), "SUBSCRIPTIONS".into(), "LEG".into(), "PORT".into(), "REMOTE".into()]];
                for (sum, s) in &sessions {
                    let legs = s.as_ref().map(|s| s.legs.as_slice()).unwrap_or_default();
                    if legs.is_empty() {
                        rows.push(vec![
                            sum.id.clone(),
                            sum.revision.to_string(),
                            sum.tracks.to_string(),
                            sum.subscriptions.to_string(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                        ]);
                    }
                    for (i, l) in legs.iter().enumerate() {
                        let first = i == 0;
                        rows.push(vec![
                            if first { sum.id.clone() } else { String::new() },
                            if first { sum.revision.to_string() } else { String::new() },
                            if first { sum.tracks.to_string() } else { String::new() },
                            if first { sum.subscriptions.to_string() } else { String::new() },
                            l.id.clone(),
                            port(l),
                            remote(l),
                        ]);
                    }
                }
                print_table(&rows);
                println!("{} session(s)", sessions.len());
            }
        }
        Cmd::Session { id } => {
            let s = routes.get_session(pb::GetSessionRequest { session: id.clone() }).await.map_err(grpc_err)?.into_inner();
            if args.json {
                println!("{}", text::json_escape(&serde_json::to_string_pretty(&session_json(&s))?));
            } else {
                println!("session {}  revision {}", text::escape(&s.id), s.revision);
                if let Some(st) = s.settings.filter(|st| st.top_n_audio) {
                    println!("top-N audio: {} slots", if st.audio_top_n == 0 { 3 } else { st.audio_top_n });
                }
                if let Some(a) = &s.active_speakers {
                    println!("speaking: {}", speaking(a));
                }
                println!();
                let mut rows = vec![vec!["LEG".to_owned(), "PORT".into(), "REMOTE".into(), "FEEDBACK_SSRC".into()]];
                rows.extend(s.legs.iter().map(|l| vec![l.id.clone(), port(l), remote(l), l.feedback_ssrc.to_string()]));
                print_table(&rows);
                println!();
                let mut rows = vec![vec!["TRACK".to_owned(), "PUBLISHER".into(), "KIND".into(), "LAYERS".into()]];
                rows.extend(s.tracks.iter().map(|t| vec![t.id.clone(), t.publisher_leg.clone(), kind(t.kind).into(), t.layers.len().to_string()]));
                print_table(&rows);
                println!();
                let mut rows = vec![vec![
                    "SUBSCRIBER".to_owned(),
                    "TRACK".into(),
                    "OUT_SSRC".into(),
                    "LAYER".into(),
                    "SPATIAL".into(),
                    "TEMPORAL".into(),
                    "PAUSED".into(),
                ]];
                let ceiling = |c: Option<u32>| c.map_or_else(|| "all".to_owned(), |c| c.to_string());
                rows.extend(s.subscriptions.iter().map(|x| {
                    vec![
                        x.subscriber_leg.clone(),
                        x.track.clone(),
                        x.out_ssrc.to_string(),
                        x.target_layer.to_string(),
                        ceiling(x.max_spatial_layer),
                        ceiling(x.max_temporal_layer),
                        x.paused.to_string(),
                    ]
                }));
                print_table(&rows);
            }
        }
        Cmd::Watch { session } => {
            let mut stream = routes.watch(pb::WatchRequest { session: session.clone().unwrap_or_default() }).await.map_err(grpc_err)?.into_inner();
            if !args.json {
                println!("# watching {}", text::escape(session.as_deref().unwrap_or("every session")));
            }
            while let Some(ev) = stream.message().await.map_err(grpc_err)? {
                let what = ev.event.map(|e| format!("{e:?}")).unwrap_or_default();
                if args.json {
                    println!("{}", text::json_escape(&json!({ "session": ev.session, "revision": ev.revision, "event": what }).to_string()));
                } else {
                    let session = if ev.session.is_empty() { "(node)".to_owned() } else { text::escape(&ev.session) };
                    println!("{session:<16} r{:<5} {}", ev.revision, text::escape(&what));
                }
            }
        }
        Cmd::Certs { .. } => unreachable!("handled before connecting"),
    }
    Ok(())
}

/// The active speakers as one line: the dominant speaker (or `nobody`), then the other recent
/// speakers, each with its level in dBov.
fn speaking(a: &pb::ActiveSpeakers) -> String {
    let each = |sp: &pb::SpeakerLevel| format!("{} (-{} dBov)", text::escape(&sp.track), sp.level);
    let mut line = match (a.dominant, a.speakers.first()) {
        (true, Some(d)) => each(d),
        _ => "nobody".to_owned(),
    };
    let rest: Vec<String> = a.speakers.iter().skip(usize::from(a.dominant)).map(each).collect();
    if !rest.is_empty() {
        line.push_str(&format!("; recent: {}", rest.join(", ")));
    }
    line
}

/// A leg's port, marked when it is a shared port.
fn port(l: &pb::Leg) -> String {
    if l.shared_port { format!("{} (shared)", l.local_port) } else { l.local_port.to_string() }
}

fn remote(l: &pb::Leg) -> String {
    if l.remote.is_empty() { "(learned)".into() } else { l.remote.clone() }
}

fn kind(k: i32) -> &'static str {
    match pb::MediaKind::try_from(k) {
        Ok(pb::MediaKind::Audio) => "audio",
        Ok(pb::MediaKind::Video) => "video",
        _ => "?",
    }
}

fn leg_json(l: &pb::Leg) -> Value {
    json!({ "id": l.id, "local_port": l.local_port, "shared_port": l.shared_port, "remote": l.remote, "feedback_ssrc": l.feedback_ssrc })
}

fn session_json(s: &pb::Session) -> Value {
    json!({
        "id": s.id,
        "revision": s.revision,
        "legs": s.legs.iter().map(leg_json).collect::<Vec<_>>(),
        "tracks": s.tracks.iter().map(|t| json!({
            "id": t.id, "publisher_leg": t.publisher_leg, "kind": kind(t.kind), "clock_rate": t.clock_rate,
            "layers": t.layers.iter().map(|l| json!({ "ssrc": l.ssrc, "rtx_ssrc": l.rtx_ssrc, "rid": l.rid })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "settings": s.settings.map(|st| json!({ "top_n_audio": st.top_n_audio, "audio_top_n": st.audio_top_n })),
        "active_speakers": s.active_speakers.as_ref().map(|a| json!({
            "dominant": a.dominant,
            "speakers": a.speakers.iter().map(|sp| json!({ "track": sp.track, "level": sp.level })).collect::<Vec<_>>(),
        })),
        "subscriptions": s.subscriptions.iter().map(|x| json!({
            "subscriber_leg": x.subscriber_leg, "track": x.track, "out_ssrc": x.out_ssrc,
            "target_layer": x.target_layer, "paused": x.paused,
            "max_spatial_layer": x.max_spatial_layer, "max_temporal_layer": x.max_temporal_layer,
        })).collect::<Vec<_>>(),
    })
}

fn print_status(s: &pb::NodeStatus, as_json: bool) {
    let pps_total: u64 = s.workers.iter().map(|w| w.rx_packets).sum();
    if as_json {
        let v = json!({
            "draining": s.draining,
            "sessions": s.sessions,
            "legs": s.legs,
            "tracks": s.tracks,
            "subscriptions": s.subscriptions,
            "port_range": [s.port_range_start, s.port_range_end],
            "ports_free": s.ports_free,
            "unbound_ports": s.unbound_ports,
            "dataplane_connected": s.dataplane_connected,
            "dataplane_generation": s.dataplane_generation,
            "workers": s.workers.iter().map(|w| json!({
                "worker": w.worker, "rx_packets": w.rx_packets, "tx_packets": w.tx_packets,
                "rx_bytes": w.rx_bytes, "tx_bytes": w.tx_bytes, "drops": w.drops,
                "rx_packets_per_second": w.rx_packets_per_second, "tx_packets_per_second": w.tx_packets_per_second,
            })).collect::<Vec<_>>(),
        });
        println!("{}", text::json_escape(&serde_json::to_string_pretty(&v).unwrap_or_default()));
        return;
    }
    let rows = vec![
        vec!["draining".to_owned(), if s.draining { "yes" } else { "no" }.into()],
        vec!["sessions".into(), s.sessions.to_string()],
        vec!["legs".into(), s.legs.to_string()],
        vec!["tracks".into(), s.tracks.to_string()],
        vec!["subscriptions".into(), s.subscriptions.to_string()],
        vec!["ports".into(), format!("{}-{} ({} free)", s.port_range_start, s.port_range_end, s.ports_free)],
        vec!["ports not opened".into(), s.unbound_ports.to_string()],
        vec!["dataplane".into(), if s.dataplane_connected { format!("connected (generation {})", s.dataplane_generation) } else { "not connected".into() }],
        vec!["rx packets".into(), pps_total.to_string()],
    ];
    print_table(&rows);
    if !s.workers.is_empty() {
        println!();
        let mut rows = vec![vec![
            "WORKER".to_owned(),
            "RX_PPS".into(),
            "TX_PPS".into(),
            "RX_PACKETS".into(),
            "TX_PACKETS".into(),
            "RX_BYTES".into(),
            "TX_BYTES".into(),
            "DROPS".into(),
        ]];
        rows.extend(s.workers.iter().map(|w| {
            vec![
                w.worker.to_string(),
                format!("{:.0}", w.rx_packets_per_second),
                format!("{:.0}", w.tx_packets_per_second),
                w.rx_packets.to_string(),
                w.tx_packets.to_string(),
                w.rx_bytes.to_string(),
                w.tx_bytes.to_string(),
                w.drops.to_string(),
            ]
        }));
        print_table(&rows);
    }
}

/// Left-aligned columns, two spaces apart; every cell escaped (they hold what the server sent).
fn print_table(rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| text::escape(c)).collect()).collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    for r in &rows {
        let line: Vec<String> = r.iter().enumerate().map(|(c, s)| format!("{s:<w$}", w = widths[c])).collect();
        println!("{}", line.join("  ").trim_end());
    }
}
