// What peer.js and participant.js share: Debian's headless Chromium with the flags a WebRTC test
// needs (loopback candidates, fake camera and microphone granted without a prompt), a fresh
// profile from CHROMIUM_USER_DATA_DIR, and one JSON object per stdout line.
'use strict';
const { chromium } = require('playwright-core');

const FLAGS = [
  '--no-sandbox', '--disable-gpu', '--allow-loopback-in-peer-connection',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
  // The meeting page's synthetic voice (?talk=) is a WebAudio graph: no user gesture here.
  '--autoplay-policy=no-user-gesture-required',
];

function send(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }

async function launch() {
  const context = await chromium.launchPersistentContext(process.env.CHROMIUM_USER_DATA_DIR, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // A page served from a non-loopback address (a test's network namespace) is not a secure
    // context, and getUserMedia needs one: CHROMIUM_SECURE_ORIGIN names the origin to treat as
    // secure.
    // CHROMIUM_FLAGS adds flags (space-separated), e.g. for a TURN server with a test certificate.
    args: [
      ...FLAGS,
      ...(process.env.CHROMIUM_SECURE_ORIGIN ? [`--unsafely-treat-insecure-origin-as-secure=${process.env.CHROMIUM_SECURE_ORIGIN}`] : []),
      ...(process.env.CHROMIUM_FLAGS ? process.env.CHROMIUM_FLAGS.split(' ').filter(Boolean) : []),
    ],
  });
  const page = context.pages()[0] || await context.newPage();
  return { context, page };
}

function fail(e) { send({ error: String((e && e.stack) || e) }); process.exit(1); }

module.exports = { launch, send, fail };
