//! `sluicectl top` end to end: the real daemons, a 3-party meeting programmed over gRPC with
//! real SRTP media flowing, and the view running in a real pseudo-terminal (a tmux server of the
//! test's own): it shows the node's non-zero packet rates, the session with its traffic (the sum
//! of its legs') and, after Enter, its legs as the dataplane reports them, each with non-zero
//! packets/s in and out (every participant sends); `q` ends it and gives the terminal back (the alternate
//! screen left, the cursor shown). `--once` prints the same view as plain text, and without
//! `--once` a stdout that is not a terminal is refused with a clear message.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use sluice_bench::live::leg_name;
use sluice_bench::meeting;
use sluice_core::srtp::Profile;
use sluice_tests::{TempDir, bin_dir, participant_socket};

mod cp;
use cp::{Grpc, Media, changes, session_req_with, sluicectl, start_controlplane_with, start_dataplane_in};

const SESSION: &str = "top-meeting";
/// Leg ports of the daemons started here: no other test uses these.
const PORTS: (u16, u16) = (34_500, 34_599);

/// A tmux server of this test's own (`-L`), killed (that server only) when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Self {
        Self { socket: format!("sluice-top-{}", std::process::id()) }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("tmux is installed");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn capture(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// Waits until the pane shows what `ok` accepts; the last capture either way.
    fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + timeout;
        loop {
            let pane = self.capture();
            if ok(&pane) {
                return pane;
            }
            assert!(Instant::now() < end, "the pane never showed {what}:\n{pane}");
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).output();
    }
}

/// The packets/s of `dir` ("in" or "out") on the view's traffic line, `1.2k` read as 1200.
fn traffic(view: &str, dir: &str) -> Option<f64> {
    let line = view.lines().find(|l| l.starts_with("traffic: "))?;
    let at = line.find(&format!(" {dir} "))? + dir.len() + 2;
    let n: String = line[at..].chars().take_while(|c| !c.is_whitespace()).collect();
    count(&n)
}

/// A count as the view writes it, `1.2k` read as 1200 (`None` for `…` or `-`).
fn count(n: &str) -> Option<f64> {
    let (num, mult) = match n.strip_suffix('k') {
        Some(n) => (n, 1e3),
        None => n.strip_suffix('M').map_or((n, 1.0), |n| (n, 1e6)),
    };
    num.parse::<f64>().ok().map(|x| x * mult)
}

/// The cell under the column headed `col` in the row that starts with `id` of the table whose
/// header starts with `table` (`SESSION`, `LEG`): cells sit under their headers, and the words
/// of a header are one space apart, columns at least two.
fn cell(view: &str, table: &str, id: &str, col: &str) -> Option<String> {
    let mut lines = view.lines().skip_while(|l| !l.starts_with(&format!("{table}  ")));
    let header = lines.next()?;
    let start = header.match_indices(col).map(|(i, _)| i).find(|&i| {
        let after = &header[i + col.len()..];
        (i == 0 || header[..i].ends_with("  ")) && (after.is_empty() || after.starts_with("  "))
    })?;
    let end = header[start + col.len()..].find(|c: char| c != ' ').map(|k| start + col.len() + k);
    let row: Vec<char> = lines.find(|l| l.split_whitespace().next() == Some(id))?.chars().collect();
    let cells: String = row.get(start..end.unwrap_or(row.len()).min(row.len()))?.iter().collect();
    Some(cells.trim().to_owned())
}

/// The packets/s in and out of `id` in `table`.
fn pps(view: &str, table: &str, id: &str) -> (Option<f64>, Option<f64>) {
    let get = |col| cell(view, table, id, col).as_deref().and_then(count);
    (get("IN PKT/S"), get("OUT PKT/S"))
}

fn both_ways((rx, tx): (Option<f64>, Option<f64>)) -> bool {
    rx.is_some_and(|x| x > 0.0) && tx.is_some_and(|x| x > 0.0)
}

/// Whether the session's packets/s (the sum of its legs') are the node's, give or take a
/// quarter (the rates of the legs and of the workers are read in separate calls): every
/// datagram here is a leg's, authenticated, and every packet sent is to one of its legs.
fn session_is_the_nodes_traffic(view: &str) -> bool {
    let near = |a: Option<f64>, b: Option<f64>| a.zip(b).is_some_and(|(a, b)| b > 0.0 && (a - b).abs() <= 0.25 * b);
    let (rx, tx) = pps(view, "SESSION", SESSION);
    near(rx, traffic(view, "in")) && near(tx, traffic(view, "out"))
}

/// The row of the session table (or leg table) that starts with `id`, as its cells.
fn row<'a>(view: &'a str, id: &str) -> Option<Vec<&'a str>> {
    view.lines().find(|l| l.split_whitespace().next() == Some(id)).map(|l| l.split_whitespace().collect())
}

/// Asserts the view shows the meeting: non-zero traffic both ways, the session with its 3 legs
/// all active, and (when `legs`) each leg active from its participant's address with the loss
/// of its receiver reports.
fn assert_shows_meeting(view: &str, legs: Option<&BTreeMap<String, String>>) {
    let (rx, tx) = (traffic(view, "in"), traffic(view, "out"));
    assert!(rx.is_some_and(|x| x > 0.0) && tx.is_some_and(|x| x > 0.0), "non-zero packets/s in and out: {rx:?} {tx:?}\n{view}");
    let s = row(view, SESSION).unwrap_or_else(|| panic!("no row for {SESSION}:\n{view}"));
    // SESSION REV LEGS ACTIVE TRACKS SUBS IN PKT/S OUT PKT/S IN OUT WORKERS ...
    assert_eq!((s[2], s[3], s[4], s[5]), ("3", "3", "6", "12"), "legs, active legs, tracks, subscriptions:\n{view}");
    assert!(session_is_the_nodes_traffic(view), "the session's packets/s in and out (its legs') are the node's:\n{view}");
    assert!(view.lines().any(|l| l.starts_with("drops by reason:")), "{view}");
    if let Some(legs) = legs {
        for (leg, remote) in legs {
            let r = row(view, leg).unwrap_or_else(|| panic!("no row for leg {leg}:\n{view}"));
            let c = |col| cell(view, "LEG", leg, col).unwrap_or_default();
            assert_eq!((r[1], c("REMOTE"), c("STATE"), c("LOSS")), ("srtp", remote.clone(), "active".into(), "0.0%".into()), "leg {leg}:\n{view}");
            // Every participant publishes and subscribes: traffic both ways on every leg.
            assert!(both_ways(pps(view, "LEG", leg)), "leg {leg}'s packets/s in and out:\n{view}");
            assert!(c("IN").ends_with("bit/s") && c("OUT").ends_with("bit/s") && !c("IN").starts_with("0 "), "leg {leg}'s bit rates:\n{view}");
        }
    }
}

fn start_meeting(dir: &Path) -> (Vec<sluice_tests::Daemon>, Grpc, std::net::SocketAddr, Media, BTreeMap<String, String>) {
    let (dataplane, dp_sock) = start_dataplane_in(dir, PORTS);
    let (cp, addr) = start_controlplane_with(dir, &dp_sock, 1, (PORTS.0, PORTS.0 + 7));
    let mut grpc = Grpc::connect(addr);
    let (ops, mut people) = meeting::build(7, 3, Profile::AeadAes128Gcm, 1);
    let created = grpc.apply(session_req_with(SESSION, changes(&ops))).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    let ports: BTreeMap<String, u16> = created.ports.iter().map(|p| (p.leg.clone(), p.local_port as u16)).collect();
    let sockets: Vec<_> = people.iter().map(|_| participant_socket()).collect();
    for (p, s) in people.iter_mut().zip(&sockets) {
        p.port = ports[&leg_name(p.leg.0)];
        p.addr = s.local_addr().unwrap();
    }
    let remotes = people.iter().map(|p| (leg_name(p.leg.0), p.addr.to_string())).collect();
    let mut media = Media::new(people, sockets);
    media.hello();
    media.settle(|_, ticks, frames| 2 * ticks + frames * 6);
    (vec![dataplane, cp], grpc, addr, media, remotes)
}

/// Media and receiver reports until `stop`, on a thread of its own.
fn keep_media_flowing(mut media: Media, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            media.run(25, |_| {});
            for i in 0..media.people.len() {
                let to = media.sfu(i);
                let rr = media.people[i].receiver_report();
                media.sockets[i].send_to(&rr, to).unwrap();
            }
        }
    })
}

#[test]
fn top_shows_a_live_meeting_in_a_pseudo_terminal_and_as_a_snapshot() {
    let dir = TempDir::new("sluicectl-top");
    let (_daemons, mut grpc, addr, media, remotes) = start_meeting(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let flowing = keep_media_flowing(media, stop.clone());
    let addr = addr.to_string();
    let ctl = bin_dir().join("sluicectl");

    // The full-screen view in a 160×48 pseudo-terminal; the shell says how it ended.
    let tmux = Tmux::new();
    let cmd = format!("'{}' --addr {addr} top --interval 0.5; echo TOP-EXITED-$?; sleep 60", ctl.display());
    tmux.run(&["new-session", "-d", "-x", "160", "-y", "48", "-s", "top", &cmd]);
    let view = tmux.wait_for("the meeting with media flowing", Duration::from_secs(20), |p| {
        traffic(p, "in").is_some_and(|x| x > 0.0)
            && traffic(p, "out").is_some_and(|x| x > 0.0)
            && row(p, SESSION).is_some_and(|r| r[3] == "3")
            && session_is_the_nodes_traffic(p)
    });
    assert_eq!(tmux.run(&["display-message", "-p", "-t", "top", "#{alternate_on}"]).trim(), "1", "the view is on the alternate screen");
    assert_shows_meeting(&view, None);
    assert!(!remotes.keys().any(|leg| row(&view, leg).is_some()), "no legs before Enter:\n{view}");
    // Enter: the selected (only) session's legs.
    tmux.run(&["send-keys", "-t", "top", "Enter"]);
    let view = tmux.wait_for("the session's legs", Duration::from_secs(15), |p| {
        remotes.keys().all(|leg| {
            cell(p, "LEG", leg, "STATE").as_deref() == Some("active") && cell(p, "LEG", leg, "LOSS").as_deref() == Some("0.0%") && both_ways(pps(p, "LEG", leg))
        })
    });
    assert_shows_meeting(&view, Some(&remotes));
    println!("--- sluicectl top, 160×48 ---\n{view}");
    // Esc: back to the sessions alone.
    tmux.run(&["send-keys", "-t", "top", "Escape"]);
    tmux.wait_for("the sessions without legs", Duration::from_secs(10), |p| row(p, SESSION).is_some() && !remotes.keys().any(|leg| row(p, leg).is_some()));
    // q: it exits 0 and the terminal is as it was (main screen, cursor shown, no view left).
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let pane = tmux.wait_for("top's exit", Duration::from_secs(10), |p| p.contains("TOP-EXITED-"));
    assert!(pane.contains("TOP-EXITED-0"), "top exits 0 on q:\n{pane}");
    assert!(!pane.contains("sluicectl top") && row(&pane, SESSION).is_none(), "the view is gone with the alternate screen:\n{pane}");
    let flags = tmux.run(&["display-message", "-p", "-t", "top", "#{alternate_on} #{cursor_flag}"]);
    assert_eq!(flags.trim(), "0 1", "main screen, cursor visible (alternate_on cursor_flag)");

    // --once: the same view as plain text, every session's legs included.
    let (ok, out, err) = sluicectl(&["--addr", &addr, "top", "--once", "--interval", "1"]);
    assert!(ok, "{err}");
    assert!(!out.contains('\u{1b}'), "no escape codes in --once:\n{out:?}");
    assert_shows_meeting(&out, Some(&remotes));
    let (ok, filtered, err) = sluicectl(&["--addr", &addr, "top", "--once", "--session", "no-such-meeting"]);
    assert!(ok, "{err}");
    assert!(filtered.contains("no session \"no-such-meeting\"") && row(&filtered, SESSION).is_none(), "{filtered}");

    // Without --once, a stdout that is not a terminal is refused, saying what to do.
    let (ok, _, err) = sluicectl(&["--addr", &addr, "top"]);
    assert!(!ok && err.contains("needs a terminal") && err.contains("--once"), "{err}");

    // The drops by reason the view sums come in NodeStatus, each worker's adding up to its drops
    // (the participants' receiver reports are consumed: rtcp_consumed).
    let status = grpc.status();
    for w in &status.workers {
        assert_eq!(w.drops_by_reason.iter().map(|d| d.count).sum::<u64>(), w.drops, "{w:?}");
        assert!(w.drops_by_reason.iter().all(|d| d.count > 0 && !d.reason.is_empty()), "{w:?}");
    }
    assert!(status.workers.iter().flat_map(|w| &w.drops_by_reason).any(|d| d.reason == "rtcp_consumed"), "{status:?}");

    stop.store(true, Ordering::Relaxed);
    flowing.join().expect("the media thread");
}
