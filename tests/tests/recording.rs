//! A recording tap judged by a real recorder: the real dataplane and control plane, a meeting
//! of two GStreamer publishers (Opus audio; a two-layer VP8 simulcast camera, one `vp8enc`
//! pipeline per layer, both SRTP through `srtpenc` with the keys programmed), and a GStreamer
//! recorder behind the tap (`udpsrc` → `srtpdec` per SSRC, or plain for a plain-RTP tap →
//! `rtpjitterbuffer` → depayloaders → `matroskamux` → one .mkv). ffprobe and ffmpeg then decode
//! the file from start to end.
//!
//! - SRTP tap, 20 s: mid-meeting the camera's top layer stops (its sender is killed by PID),
//!   so the tap's video falls back to the lower layer at its next keyframe. The file must decode
//!   without an error, both tracks must span the meeting, and the video must hold frames of
//!   both resolutions (640x360 before the switch, 320x180 after).
//! - Plain-RTP tap on 127.0.0.1, 8 s: the same recorder without `srtpdec` decodes both tracks.
//!
//! Matroska and a resolution change (measured with GStreamer 1.22 and ffmpeg 5.1):
//! `rtpvp8depay` puts the new size in its caps at the switch's keyframe, and `matroskamux`
//! accepts a width/height change of a VP8 track mid-file (other caps changes it refuses:
//! "Caps changes are not supported by Matroska"). The track header keeps the first size
//! (ffprobe reports the stream as 640x360); each VP8 keyframe carries its own, and ffmpeg's
//! decoder follows it without an error: the frame sizes asserted below are what it decoded.
//! Measured over six runs: 279-282 frames at 640x360, 229-231 at 320x180 (508-513 in all, over
//! 19.3 s), the longest video gap 2.3-2.4 s after the kill (the 2 s a layer needs to count as
//! stopped, then the lower layer's next keyframe), 996-999 Opus packets over 19.9 s.
//!
//! Ports: legs 34000-34019 (SRTP run) and 34020-34039 (plain run); publishers send from
//! 34050-34069; recorders listen on 34080-34081. The two runs take a lock so they never overlap
//! (the machine has two cores and the encoders are real).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use sluice_controlplane::pb;
use sluice_controlplane::pb::change::Change as C;
use sluice_core::srtp::Profile;
use sluice_core::table::KeyMaterial;
use sluice_tests::{Daemon, TempDir};

mod cp;
use cp::{Grpc, session_req_with, start_controlplane_with, start_dataplane_in};

const GST: &str = "/usr/bin/gst-launch-1.0";
const FFPROBE: &str = "/usr/bin/ffprobe";
const FFMPEG: &str = "/usr/bin/ffmpeg";
const AUDIO_SSRC: u32 = 0x0A0D_0001;
const LOW_SSRC: u32 = 0x0C0A_0001;
const HIGH_SSRC: u32 = 0x0C0A_0002;
/// AES_CM_128_HMAC_SHA1_80: what `srtpenc`/`srtpdec` use by default.
const PROFILE: Profile = Profile::AesCm128HmacSha1_80;

/// One run at a time (see the module docs).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Where one run's processes listen.
#[derive(Clone, Copy)]
struct Ports {
    legs: (u16, u16),
    mic_src: u16,
    cam_src: u16,
    recorder: u16,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The `srtpenc key=` / `srtp-key=` value of key material: master key then salt, in hex.
fn gst_key(m: &KeyMaterial) -> String {
    hex(&[m.key.as_slice(), m.salt.as_slice()].concat())
}

fn pb_keys(m: &KeyMaterial) -> pb::KeyMaterial {
    pb::KeyMaterial { profile: pb::SrtpProfile::Aes128CmHmacSha180 as i32, key: m.key.clone(), salt: m.salt.clone() }
}

/// A gst-launch process; stopped by PID when dropped (SIGTERM, then SIGKILL). gst-launch takes
/// the pipeline as one argument per token (an argument with a space in it is one token), so
/// the description is split at its spaces: no value in it holds one.
fn gst(pipeline: &str, log: &Path) -> Daemon {
    let args: Vec<&str> = std::iter::once("-e").chain(pipeline.split_whitespace()).collect();
    let mut d = Daemon::start_path(Path::new(GST), &args, log);
    assert!(d.wait_exit(Duration::from_millis(300)).is_none(), "gst-launch-1.0 {pipeline}\nexited at once: {}", d.log_text());
    d
}

/// The Opus publisher: a 440 Hz tone, 20 ms frames, SRTP with the mic leg's keys. Publishers
/// send in real time (`udpsink` syncs to the clock, as a participant's stack paces): unsynced,
/// `opusenc` emits two frames at once every so often and the burst reaches the recorder.
fn mic_pipeline(key: &str, to: u16, from: u16) -> String {
    format!(
        "audiotestsrc is-live=true wave=sine freq=440 samplesperbuffer=960 ! audio/x-raw,rate=48000,channels=2 ! opusenc frame-size=20 ! \
         rtpopuspay pt=111 ssrc={AUDIO_SSRC} ! srtpenc key={key} ! udpsink host=127.0.0.1 port={to} bind-address=127.0.0.1 bind-port={from} sync=true"
    )
}

/// One simulcast layer of the camera: its own encoder at its own size, a keyframe a second,
/// SRTP with the cam leg's keys, sent from the port both layers share (the leg's remote).
fn cam_pipeline(key: &str, to: u16, from: u16, (w, h): (u32, u32), ssrc: u32, bitrate: u32) -> String {
    format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},framerate=30/1 ! \
         vp8enc deadline=1 cpu-used=8 keyframe-max-dist=30 target-bitrate={bitrate} ! \
         rtpvp8pay pt=96 ssrc={ssrc} picture-id-mode=15-bit ! srtpenc key={key} ! udpsink host=127.0.0.1 port={to} bind-address=127.0.0.1 bind-port={from} sync=true"
    )
}

/// The recorder: one branch per tap stream (by SSRC) into one Matroska file. SRTP: the
/// datagrams are teed to one `srtpdec` per SSRC, each given that SSRC and the tap's key in its
/// caps (srtpdec takes keys per SSRC); plain: `rtpssrcdemux`.
fn recorder_pipeline(port: u16, srtp_key: Option<&str>, audio: u32, video: u32, out: &Path) -> String {
    let audio_caps = "media=(string)audio,clock-rate=(int)48000,encoding-name=(string)OPUS,payload=(int)111";
    let video_caps = "media=(string)video,clock-rate=(int)90000,encoding-name=(string)VP8,payload=(int)96";
    let audio_tail = "rtpjitterbuffer latency=300 ! rtpopusdepay ! opusparse ! queue ! mux.audio_0";
    let video_tail = "rtpjitterbuffer latency=300 ! rtpvp8depay ! queue ! mux.video_0";
    let mux = format!("matroskamux name=mux ! filesink location={}", out.display());
    match srtp_key {
        Some(key) => {
            let srtp = format!(
                "srtp-key=(buffer){key},srtp-cipher=(string)aes-128-icm,srtp-auth=(string)hmac-sha1-80,srtcp-cipher=(string)aes-128-icm,srtcp-auth=(string)hmac-sha1-80"
            );
            format!(
                "udpsrc port={port} address=127.0.0.1 caps=application/x-srtp ! tee name=t \
                 t. ! queue ! capssetter replace=true caps=application/x-srtp,ssrc=(uint){audio},{srtp},{audio_caps} ! srtpdec ! {audio_tail} \
                 t. ! queue ! capssetter replace=true caps=application/x-srtp,ssrc=(uint){video},{srtp},{video_caps} ! srtpdec ! {video_tail} {mux}"
            )
        }
        None => format!(
            "udpsrc port={port} address=127.0.0.1 caps=application/x-rtp ! rtpssrcdemux name=d \
             d.src_{audio} ! capssetter replace=true caps=application/x-rtp,{audio_caps} ! {audio_tail} \
             d.src_{video} ! capssetter replace=true caps=application/x-rtp,{video_caps} ! {video_tail} {mux}"
        ),
    }
}

/// What ffprobe and ffmpeg say of a recording.
#[derive(Debug)]
struct Probe {
    /// `ffmpeg -v error -i f -f null -`: everything it printed (empty: decoded without error).
    decode_errors: String,
    /// Audio packets and their first and last timestamp (s).
    audio_packets: usize,
    audio_span: (f64, f64),
    /// Decoded video frames: count per (width, height), first and last timestamp, longest gap.
    video_frames: usize,
    video_sizes: BTreeMap<(u64, u64), usize>,
    video_span: (f64, f64),
    video_longest_gap: f64,
    /// The first frame of the last size, by time (the switch).
    switched_at: Option<f64>,
}

fn run_json(program: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn times(v: &serde_json::Value, list: &str, field: &str) -> Vec<f64> {
    v[list].as_array().unwrap().iter().filter_map(|e| e[field].as_str()?.parse::<f64>().ok()).collect()
}

fn probe(file: &Path) -> Probe {
    let f = file.to_str().unwrap();
    let decode = Command::new(FFMPEG).args(["-hide_banner", "-v", "error", "-i", f, "-f", "null", "-"]).output().unwrap();
    let decode_errors = format!("{}{}", String::from_utf8_lossy(&decode.stderr), if decode.status.success() { "" } else { "(ffmpeg failed)" });
    let audio = run_json(FFPROBE, &["-v", "error", "-select_streams", "a:0", "-show_entries", "packet=pts_time", "-of", "json", f]);
    let audio_t = times(&audio, "packets", "pts_time");
    let video = run_json(FFPROBE, &["-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time,width,height", "-of", "json", f]);
    let frames = video["frames"].as_array().unwrap();
    let mut video_sizes = BTreeMap::new();
    let mut video_t = Vec::new();
    let mut last_size = None;
    let mut switched_at = None;
    for fr in frames {
        let size = (fr["width"].as_u64().unwrap_or(0), fr["height"].as_u64().unwrap_or(0));
        *video_sizes.entry(size).or_insert(0) += 1;
        let t = fr["pts_time"].as_str().and_then(|s| s.parse::<f64>().ok());
        if let Some(t) = t {
            video_t.push(t);
            if last_size.is_some_and(|l| l != size) {
                switched_at = Some(t);
            }
        }
        last_size = Some(size);
    }
    let span = |t: &[f64]| (t.iter().copied().fold(f64::INFINITY, f64::min), t.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    let mut sorted = video_t.clone();
    sorted.sort_by(f64::total_cmp);
    let video_longest_gap = sorted.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    Probe {
        decode_errors,
        audio_packets: audio_t.len(),
        audio_span: span(&audio_t),
        video_frames: frames.len(),
        video_sizes,
        video_span: span(&video_t),
        video_longest_gap,
        switched_at,
    }
}

/// Runs one recorded meeting of `secs` seconds; with `stop_top_at`, the camera's top layer is
/// killed then. Returns the probe of the recording (and the run's directory, removed when
/// dropped).
fn record_meeting(name: &str, ports: Ports, plain: bool, secs: u64, stop_top_at: Option<u64>) -> (Probe, TempDir) {
    for tool in [GST, FFPROBE, FFMPEG] {
        assert!(Path::new(tool).exists(), "{tool} is missing (scripts/setup.sh installs GStreamer and ffmpeg)");
    }
    let dir = TempDir::new(name);
    let (dataplane, dp_sock) = start_dataplane_in(dir.path(), ports.legs);
    let (controlplane, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, ports.legs);
    let mut grpc = Grpc::connect(addr);
    let (mic_key, cam_key, tap_key) = (KeyMaterial::seeded(PROFILE, 11), KeyMaterial::seeded(PROFILE, 12), KeyMaterial::seeded(PROFILE, 13));
    let publisher = |id: &str, k: &KeyMaterial, from: u16| pb::Change {
        change: Some(C::Leg(pb::Leg {
            id: id.into(),
            rx: Some(pb_keys(k)),
            tx: Some(pb_keys(k)),
            remote: format!("127.0.0.1:{from}"),
            feedback_ssrc: 0xFEED_0000 + u32::from(from),
            ..Default::default()
        })),
    };
    let tap = pb::Leg {
        id: "recorder".into(),
        remote: format!("127.0.0.1:{}", ports.recorder),
        tap: Some(pb::RecordingTap::default()),
        plain_rtp: plain,
        rx: (!plain).then(|| pb_keys(&tap_key)),
        tx: (!plain).then(|| pb_keys(&tap_key)),
        feedback_ssrc: 0xFEED_0001,
        ..Default::default()
    };
    let changes = vec![
        publisher("mic", &mic_key, ports.mic_src),
        publisher("cam", &cam_key, ports.cam_src),
        pb::Change {
            change: Some(C::Track(pb::Track {
                id: "voice".into(),
                publisher_leg: "mic".into(),
                kind: pb::MediaKind::Audio as i32,
                clock_rate: 48_000,
                layers: vec![pb::Layer { ssrc: Some(AUDIO_SSRC), ..Default::default() }],
                payload_types: vec![pb::PayloadType { pt: 111, codec: pb::Codec::Audio as i32, rtx_pt: None }],
                ..Default::default()
            })),
        },
        pb::Change {
            change: Some(C::Track(pb::Track {
                id: "camera".into(),
                publisher_leg: "cam".into(),
                kind: pb::MediaKind::Video as i32,
                clock_rate: 90_000,
                layers: vec![pb::Layer { ssrc: Some(LOW_SSRC), ..Default::default() }, pb::Layer { ssrc: Some(HIGH_SSRC), ..Default::default() }],
                payload_types: vec![pb::PayloadType { pt: 96, codec: pb::Codec::Vp8 as i32, rtx_pt: None }],
                ..Default::default()
            })),
        },
        pb::Change { change: Some(C::Leg(tap)) },
    ];
    let answer = grpc.apply(session_req_with("recorded", changes)).unwrap();
    let port_of = |leg: &str| answer.ports.iter().find(|p| p.leg == leg).map(|p| p.local_port as u16).unwrap();
    // The recorder learns its SSRCs from the answer (and GetSession says the same).
    let streams = &answer.taps.iter().find(|t| t.leg == "recorder").expect("the tap's streams").streams;
    let ssrc_of = |track: &str| streams.iter().find(|s| s.track == track).map(|s| s.out_ssrc).unwrap();
    let (audio_out, video_out) = (ssrc_of("voice"), ssrc_of("camera"));
    let shown = grpc.session("recorded").unwrap();
    assert_eq!(shown.legs.iter().find(|l| l.id == "recorder").and_then(|l| l.tap.as_ref()).map(|t| &t.streams), Some(streams));

    let file = dir.path().join("meeting.mkv");
    let tap_key_hex = gst_key(&tap_key);
    let mut recorder =
        gst(&recorder_pipeline(ports.recorder, (!plain).then_some(tap_key_hex.as_str()), audio_out, video_out, &file), &dir.path().join("recorder.log"));
    thread::sleep(Duration::from_millis(700));
    let (mic, cam) = (gst_key(&mic_key), gst_key(&cam_key));
    let started = Instant::now();
    let mut audio = gst(&mic_pipeline(&mic, port_of("mic"), ports.mic_src), &dir.path().join("mic.log"));
    let mut low = gst(&cam_pipeline(&cam, port_of("cam"), ports.cam_src, (320, 180), LOW_SSRC, 300_000), &dir.path().join("cam-low.log"));
    let mut high = gst(&cam_pipeline(&cam, port_of("cam"), ports.cam_src, (640, 360), HIGH_SSRC, 900_000), &dir.path().join("cam-high.log"));
    let until = |t: u64| {
        let at = started + Duration::from_secs(t);
        thread::sleep(at.saturating_duration_since(Instant::now()));
    };
    if let Some(t) = stop_top_at {
        until(t);
        // The top layer's sender dies (by its PID): the layer stops mid-stream.
        high.signal(libc::SIGKILL);
        assert!(high.wait_exit(Duration::from_secs(5)).is_some());
    }
    until(secs);
    for p in [&mut audio, &mut low, &mut high] {
        p.signal(libc::SIGKILL);
        assert!(p.wait_exit(Duration::from_secs(5)).is_some());
    }
    // Let the jitter buffers drain, then EOS (gst-launch -e on SIGINT) so the file is finalized.
    thread::sleep(Duration::from_millis(800));
    recorder.signal(libc::SIGINT);
    let exited = recorder.wait_exit(Duration::from_secs(15));
    let rec_log = recorder.log_text();
    assert!(exited.is_some_and(|s| s.success()), "the recorder did not finish its file: {exited:?}\n{rec_log}");
    assert!(file.exists(), "no recording\n{rec_log}");
    let p = probe(&file);
    eprintln!("{name}: {} bytes, {p:?}", std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0));
    // To look at a recording: SLUICE_RECORDING_COPY=<dir> keeps the file and the recorder's log.
    if let Some(keep) = std::env::var_os("SLUICE_RECORDING_COPY") {
        let keep = Path::new(&keep);
        let _ = std::fs::create_dir_all(keep);
        let _ = std::fs::copy(&file, keep.join(format!("{name}.mkv")));
        let _ = std::fs::write(keep.join(format!("{name}-recorder.log")), &rec_log);
    }
    drop((controlplane, dataplane));
    (p, dir)
}

/// The must-show: a 20 s two-publisher meeting recorded through an SRTP tap, the camera's top
/// layer stopped at 10 s.
#[test]
fn an_srtp_tap_records_a_meeting_that_decodes_from_start_to_end_across_a_layer_switch() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let ports = Ports { legs: (34_000, 34_019), mic_src: 34_050, cam_src: 34_052, recorder: 34_080 };
    let (p, _dir) = record_meeting("rec-srtp", ports, false, 20, Some(10));
    assert!(p.decode_errors.is_empty(), "ffmpeg reported decode errors: {}", p.decode_errors);
    // Audio: 20 ms Opus frames over the meeting.
    assert!(p.audio_packets >= 850, "{p:?}");
    assert!(p.audio_span.1 - p.audio_span.0 >= 18.0, "audio spans {:?}", p.audio_span);
    // Video: from start to end, both resolutions, the switch after the kill.
    assert!(p.video_span.1 - p.video_span.0 >= 18.0, "video spans {:?}", p.video_span);
    let high = p.video_sizes.get(&(640, 360)).copied().unwrap_or(0);
    let low = p.video_sizes.get(&(320, 180)).copied().unwrap_or(0);
    assert!(high >= 200 && low >= 150, "frames per size: {:?}", p.video_sizes);
    assert_eq!(high + low, p.video_frames, "no other size: {:?}", p.video_sizes);
    let switched = p.switched_at.expect("a switch");
    assert!((9.0..16.0).contains(&(switched - p.video_span.0)), "switched {:.2} s into the video", switched - p.video_span.0);
    // The gap is the layer's 2 s inactivity timeout and the next keyframe of the lower layer.
    assert!(p.video_longest_gap < 4.5, "longest video gap {:.2} s", p.video_longest_gap);
    assert!(p.video_frames >= 450, "{p:?}");
}

/// A shorter plain-RTP tap on 127.0.0.1: the recorder without srtpdec decodes both tracks.
#[test]
fn a_plain_rtp_tap_on_loopback_records_a_meeting_that_decodes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let ports = Ports { legs: (34_020, 34_039), mic_src: 34_060, cam_src: 34_062, recorder: 34_081 };
    let (p, _dir) = record_meeting("rec-plain", ports, true, 8, None);
    assert!(p.decode_errors.is_empty(), "ffmpeg reported decode errors: {}", p.decode_errors);
    assert!(p.audio_packets >= 330, "{p:?}");
    assert!(p.audio_span.1 - p.audio_span.0 >= 7.0, "audio spans {:?}", p.audio_span);
    // The video starts about 0.6 s after the audio (measured: the encoder's first frame).
    assert!(p.video_span.1 - p.video_span.0 >= 6.5, "video spans {:?}", p.video_span);
    assert_eq!(p.video_sizes.keys().copied().collect::<Vec<_>>(), vec![(640, 360)], "the top layer throughout");
    assert!(p.video_frames >= 200, "{p:?}");
}
