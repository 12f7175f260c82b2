// One meeting participant in headless Chromium, for tests/tests/webrtc.rs: opens the reference
// meeting page at argv[2] and reports what its getStats shows, one JSON object per line.
//
//   out {"stats": {connection, inbound: {mid: {kind, packets, frames, ssrc}}}} every 250 ms
//   in  {"leave": true}   the participant hangs up (closes its WebSocket and PeerConnection)
//   in  {"quit": true}    closes the browser
'use strict';
const readline = require('readline');
const { launch, send, fail } = require('./launch');

(async () => {
  const { context, page } = await launch();
  page.on('console', (m) => send({ console: m.text() }));
  await page.goto(process.argv[2]);
  const timer = setInterval(async () => {
    try { send({ stats: await page.evaluate(() => window.sluiceStats()) }); } catch (e) { send({ error: String(e) }); }
  }, 250);
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const msg = JSON.parse(line);
    if (msg.leave) await page.evaluate(() => window.leave());
    if (msg.quit) break;
  }
  clearInterval(timer);
  await context.close();
  process.exit(0);
})().catch(fail);
