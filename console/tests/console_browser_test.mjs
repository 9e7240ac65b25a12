// The web console in a real browser: Debian's Chromium, headless, driven by
// playwright-core, against a real h5depotd serving the built console
// (console/dist) and images pushed with the real CLI.
//
//   H5DEPOTD=build/server/h5depotd H5DEPOT=build/client/h5depot \
//   CONSOLE_DIR=console/dist SCREENSHOT=build/console.png \
//     node console/tests/console_browser_test.mjs
//
// It opens the console, finds an image the test pushed, opens it, sees its
// dataset tree, opens a 1-D dataset (a line plot) and a 2-D one (a
// heatmap) and checks that each plot's canvas is not blank, then pushes
// another image and sees it listed without a reload. It saves a
// screenshot. Exits 0 if every check held, 1 with what failed otherwise.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const value = process.env[name] || fallback;
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const H5DEPOTD = env('H5DEPOTD');
const H5DEPOT = env('H5DEPOT');
const CONSOLE_DIR = env('CONSOLE_DIR');
const SCREENSHOT = env('SCREENSHOT');
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');
const PYTHON = env('H5PY_PYTHON', '/usr/bin/python3');
// How long any one step may take: generous, for loaded and sanitizer runs.
const STEP_MS = 120000;

// Starts h5depotd and resolves with its targets once it says it is ready.
function startServer() {
  const server = spawn(
    H5DEPOTD,
    [
      '--listen=127.0.0.1:0',
      '--http-listen=127.0.0.1:0',
      `--http-console-dir=${CONSOLE_DIR}`,
      '--max-memory=1G',
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  return new Promise((resolve, reject) => {
    let output = '';
    server.on('exit', (code) =>
      reject(new Error(`h5depotd exited (${code}) before it was ready:\n${output}`)),
    );
    server.stdout.on('data', (chunk) => {
      output += chunk;
      if (!output.includes('h5depotd holds up to')) return;
      const grpc = output.match(/listening on (127\.0\.0\.1:\d+)/);
      const http = output.match(/HTTP gateway on (http:\/\/127\.0\.0\.1:\d+)/);
      if (!grpc || !http) {
        reject(new Error(`no addresses in h5depotd's report:\n${output}`));
        return;
      }
      resolve({ server, target: grpc[1], url: `${http[1]}/` });
    });
  });
}

// Writes an HDF5 file with h5py: /signal (1-D) and /scan/image (2-D).
function writeImage(path, seed) {
  execFileSync(PYTHON, [
    '-c',
    `
import h5py, numpy as np
with h5py.File(${JSON.stringify(path)}, "w") as f:
    x = np.linspace(0, 8 * np.pi, 2000)
    f["signal"] = np.sin(x + ${seed}) * np.exp(-x / 20)
    y, z = np.mgrid[0:256, 0:256]
    f.create_group("scan")["image"] = np.sin(y / 17.0 + ${seed}) * np.cos(z / 23.0)
    f.attrs["title"] = "console test ${seed}"
`,
  ]);
}

function push(target, file, id) {
  execFileSync(H5DEPOT, [`--server=${target}`, 'put', file, '--id', id]);
}

// How many distinct colours the element shows (sampled): 1 for a blank
// canvas, many for a plot. Decoded by the page's own 2-D canvas, from a
// screenshot, so that it sees what a user sees of a WebGL canvas.
async function distinctColours(page, locator) {
  const png = await locator.screenshot({ timeout: STEP_MS });
  return page.evaluate(async (base64) => {
    const picture = new Image();
    picture.src = `data:image/png;base64,${base64}`;
    await picture.decode();
    const canvas = document.createElement('canvas');
    canvas.width = picture.width;
    canvas.height = picture.height;
    const context = canvas.getContext('2d');
    context.drawImage(picture, 0, 0);
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
    const seen = new Set();
    for (let i = 0; i < pixels.length; i += 4 * 3) {
      seen.add((pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2]);
    }
    return seen.size;
  }, png.toString('base64'));
}

const failures = [];
function expect(condition, what) {
  console.log(`${condition ? 'ok' : 'FAILED'}: ${what}`);
  if (!condition) failures.push(what);
}

const dir = mkdtempSync(join(tmpdir(), 'h5depot-console-'));
let server;
let browser;
try {
  const started = await startServer();
  server = started.server;
  writeImage(join(dir, 'first.h5'), 0);
  writeImage(join(dir, 'second.h5'), 1);
  push(started.target, join(dir, 'first.h5'), 'demo/first.h5');

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // WebGL (h5web's plots) on the CPU: there is no GPU.
      '--use-angle=swiftshader',
      '--enable-unsafe-swiftshader',
    ],
  });
  const page = await browser.newPage({ viewport: { width: 1600, height: 900 } });
  page.on('pageerror', (error) => console.log(`page error: ${error.message}`));
  page.setDefaultTimeout(STEP_MS);
  await page.goto(started.url);

  // The image the test pushed is listed; open it.
  const first = page.locator('tr[data-image-id="demo/first.h5"]');
  await first.waitFor();
  expect(true, 'the pushed image is listed');
  await expect(
    (await page.getByTestId('image-count').textContent()) !== null,
    'the status panel shows the image count',
  );
  await first.click();

  // h5web's explorer shows the file's tree.
  const signal = page.getByRole('treeitem', { name: 'signal' });
  await signal.waitFor();
  expect(true, "the image's dataset tree is shown");
  await page.getByRole('treeitem', { name: 'scan' }).waitFor();

  // A 1-D dataset: a line plot, drawn.
  await signal.click();
  const canvas = page.getByTestId('viewer').locator('canvas').first();
  await canvas.waitFor();
  const lineColours = await distinctColours(page, canvas);
  expect(lineColours > 2, `the line plot is drawn (${lineColours} colours)`);

  // A 2-D dataset: a heatmap, drawn.
  await page.getByRole('treeitem', { name: 'scan' }).click();
  await page.getByRole('treeitem', { name: 'image' }).click();
  await page.getByRole('tab', { name: 'Heatmap' }).waitFor();
  const heatmap = page.getByTestId('viewer').locator('canvas').first();
  await heatmap.waitFor();
  const heatmapColours = await distinctColours(page, heatmap);
  expect(heatmapColours > 20, `the heatmap is drawn (${heatmapColours} colours)`);

  // Another push shows up without a reload.
  push(started.target, join(dir, 'second.h5'), 'demo/second.h5');
  await page.locator('tr[data-image-id="demo/second.h5"]').waitFor();
  expect(true, 'an image pushed later appears without a reload');

  await page.screenshot({ path: SCREENSHOT });
  console.log(`screenshot: ${SCREENSHOT}`);
} catch (error) {
  failures.push(String(error && error.stack ? error.stack : error));
  console.log(`FAILED: ${error && error.message ? error.message : error}`);
} finally {
  if (browser) await browser.close();
  if (server) server.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
}
if (failures.length > 0) {
  console.log(`${failures.length} check(s) failed`);
  process.exit(1);
}
console.log('every check held');
