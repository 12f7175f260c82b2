// A headless Chromium WebRTC peer driven over stdin/stdout (one JSON object per line), for
// tests/tests/webrtc.rs. Never downloads a browser: it runs Debian's /usr/bin/chromium.
//
//   out {"offer": sdp}                   after gathering (fake microphone, one sendrecv audio m-line)
//   in  {"answer": sdp}                  Sluice's answer, built from the gRPC ApplyResponse
//   out {"stats": {...}} every 250 ms    connection state, RTP sent and received (getStats)
//   in  {"quit": true}                   closes the browser
//
// PEER_RTC_CONFIG (JSON) is merged into the RTCPeerConnection's configuration (iceServers,
// iceTransportPolicy: "relay" for a participant that reaches Sluice only through TURN); the stats
// then name the selected pair's local candidate type and its relay protocol.
'use strict';
const readline = require('readline');
const { launch, send, fail } = require('./launch');

(async () => {
  const { context, page } = await launch();
  // getUserMedia needs a secure context: http://localhost is one. The page is served by
  // Playwright itself, so nothing listens on a port.
  await page.route('http://localhost/**', (route) => route.fulfill({ contentType: 'text/html', body: '<!doctype html><title>peer</title>' }));
  await page.goto('http://localhost/');
  const extra = JSON.parse(process.env.PEER_RTC_CONFIG || '{}');
  const offer = await page.evaluate(async (extra) => {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require', ...extra });
    window.pc = pc;
    for (const t of stream.getTracks()) pc.addTransceiver(t, { direction: 'sendrecv', streams: [stream] });
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
      setTimeout(resolve, 3000);
    });
    return pc.localDescription.sdp;
  }, extra);
  send({ offer });
  let timer = null;
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const msg = JSON.parse(line);
    if (msg.answer) {
      await page.evaluate((sdp) => window.pc.setRemoteDescription({ type: 'answer', sdp }), msg.answer);
      timer = setInterval(async () => {
        try {
          const stats = await page.evaluate(async () => {
            const out = { connection: window.pc.connectionState, ice: window.pc.iceConnectionState, sent: 0, received: 0, ssrc_in: [] };
            const report = await window.pc.getStats();
            let pair = null;
            report.forEach((r) => {
              if (r.type === 'outbound-rtp' && r.kind === 'audio') out.sent += r.packetsSent || 0;
              if (r.type === 'inbound-rtp' && r.kind === 'audio') { out.received += r.packetsReceived || 0; out.ssrc_in.push(r.ssrc); }
              if (r.type === 'transport' && r.selectedCandidatePairId) pair = report.get(r.selectedCandidatePairId);
            });
            const local = pair && report.get(pair.localCandidateId);
            if (local) { out.local_type = local.candidateType; out.relay_protocol = local.relayProtocol || null; out.local_protocol = local.protocol; }
            return out;
          });
          send({ stats });
        } catch (e) { send({ error: String(e) }); }
      }, 250);
    }
    if (msg.quit) break;
  }
  if (timer) clearInterval(timer);
  await context.close();
  process.exit(0);
})().catch(fail);
