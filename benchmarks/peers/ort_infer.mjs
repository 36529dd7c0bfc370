// ONNX Runtime as a peer of the deployment benchmark: images/s, batch-1 latency percentiles and
// peak resident memory of one exported model (examples/bgm_to_onnx) in ONNX Runtime's CPU
// execution provider (npm onnxruntime-node, pinned in tests/package.json and installed by
// scripts/install-deps.sh).
//
//   node ort_infer.mjs MODEL.onnx --batch B --threads T [--seconds S] [--warmup W]
//
// Input: a fixed pseudo-random float32 batch shaped like the model's input (the shape is read
// from the graph; the batch dimension is set to B). The timed loop runs session.run for at least
// S seconds (default 2) after W warm-up runs (default 3). Prints one JSON object on stdout:
//   {"engine":"onnxruntime","model":...,"batch":B,"threads":T,"runs":n,"ips":...,
//    "p50_ms":...,"p99_ms":...,"peak_rss_kb":...}
// ips = B x runs / seconds; p50/p99 are per-run latencies (for B = 1, per image); peak_rss_kb is
// the process's maximum resident set (Node.js itself included, like PyTorch's interpreter is
// included in its peer's figure). Exit status 2 when ONNX Runtime is not installed.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, '..', '..', 'tests', 'package.json'));
let ort;
try {
  ort = require('onnxruntime-node');
} catch (e) {
  console.error('ort_infer.mjs: onnxruntime-node is not installed in tests/node_modules; run ' +
                'scripts/install-deps.sh');
  process.exit(2);
}

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  if (at < 0) return fallback;
  const value = Number(process.argv[at + 1]);
  if (!Number.isFinite(value) || value <= 0) {
    console.error(`ort_infer.mjs: ${name} must be a positive number, got '${process.argv[at + 1]}'`);
    process.exit(1);
  }
  return value;
}

const model = process.argv[2];
if (!model || model.startsWith('--')) {
  console.error('usage: node ort_infer.mjs MODEL.onnx --batch B --threads T [--seconds S]');
  process.exit(1);
}
const batch = Math.trunc(option('--batch', 1));
const threads = Math.trunc(option('--threads', 1));
const seconds = option('--seconds', 2);
const warmup = Math.trunc(option('--warmup', 3));

const session = await ort.InferenceSession.create(model, {
  intraOpNumThreads: threads,
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: 'all',
});
const inputName = session.inputNames[0];
// The input's shape from the graph: [batch, c, h, w] with a symbolic or fixed batch dimension.
const meta = session.inputMetadata ? session.inputMetadata.find((m) => m.name === inputName) : null;
let perImageShape = null;
if (meta && Array.isArray(meta.shape)) perImageShape = meta.shape.slice(1).map(Number);
if (!perImageShape || perImageShape.some((d) => !Number.isInteger(d) || d <= 0)) {
  const at = process.argv.indexOf('--input-shape');
  if (at < 0) {
    console.error('ort_infer.mjs: the graph does not state the input shape; pass --input-shape c,h,w');
    process.exit(1);
  }
  perImageShape = process.argv[at + 1].split(',').map(Number);
}
const perImage = perImageShape.reduce((a, b) => a * b, 1);

// xorshift32: the same input on every run of the benchmark.
let state = 2463534242;
const data = new Float32Array(batch * perImage);
for (let i = 0; i < data.length; ++i) {
  state ^= state << 13; state >>>= 0;
  state ^= state >>> 17;
  state ^= state << 5; state >>>= 0;
  data[i] = (state / 4294967296) * 2 - 1;
}
const feeds = { [inputName]: new ort.Tensor('float32', data, [batch, ...perImageShape]) };

for (let i = 0; i < warmup; ++i) await session.run(feeds);
const latencies = [];
const start = performance.now();
let now = start;
while (now - start < seconds * 1000 || latencies.length < 5) {
  const t0 = performance.now();
  await session.run(feeds);
  now = performance.now();
  latencies.push(now - t0);
}
const elapsed = (now - start) / 1000;
latencies.sort((a, b) => a - b);
const percentile = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
console.log(JSON.stringify({
  engine: 'onnxruntime',
  model,
  batch,
  threads,
  runs: latencies.length,
  ips: (batch * latencies.length) / elapsed,
  p50_ms: percentile(0.5),
  p99_ms: percentile(0.99),
  peak_rss_kb: process.resourceUsage().maxRSS,
}));
