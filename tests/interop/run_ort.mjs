// Runs bitgrad's ONNX exports in ONNX Runtime (the npm package onnxruntime-node, pinned in
// tests/package.json, installed by scripts/install-deps.sh) and compares them with bitgrad's
// own runtime on the same inputs (interop_tool reference wrote them to WORK/ref).
//
//   node run_ort.mjs WORK [--forms float32,qdq,qdq-int4]
//
//   float32            max |logit difference| vs bitgrad's float path <= 1e-4
//   qdq, qdq-int4      vs bitgrad's int8 path (the arithmetic the QDQ form writes down):
//                      top-1 agreement >= 99.9% and, with labels, |accuracy difference| <= 0.05
//                      points. Also printed: agreement with bitgrad's float path.
// ORT_OPT=disabled|basic|extended|all sets the session's graph optimization level (default all,
// ONNX Runtime's own default). Exit status 1 on any failed comparison, 2 when ONNX Runtime is
// not installed.
import { createRequire } from 'node:module';
import { readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, '..', 'package.json'));
let ort;
try {
  ort = require('onnxruntime-node');
} catch (e) {
  console.error('run_ort.mjs: onnxruntime-node is not installed in tests/node_modules; run ' +
                'scripts/install-deps.sh (npm install --ignore-scripts onnxruntime-node@1.30.0)');
  process.exit(2);
}

const work = process.argv[2];
let forms = ['float32', 'qdq', 'qdq-int4'];
const at = process.argv.indexOf('--forms');
if (at > 0) forms = process.argv[at + 1].split(',');

const ref = join(work, 'ref');
const meta = JSON.parse(readFileSync(join(ref, 'meta.json'), 'utf8'));
const floats = (name) => {
  const b = readFileSync(join(ref, name));
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
};
const input = floats('input.f32');
const labels = meta.labels ? readFileSync(join(ref, 'labels.u8')) : null;
const perImage = meta.input_shape.reduce((a, b) => a * b, 1);
const outputs = meta.outputs;
const n = meta.images;

const top1 = (y, i) => {
  let best = 0;
  for (let k = 1; k < outputs; ++k) if (y[i * outputs + k] > y[i * outputs + best]) best = k;
  return best;
};
const accuracy = (y) => {
  let c = 0;
  for (let i = 0; i < n; ++i) c += top1(y, i) === labels[i] ? 1 : 0;
  return (100 * c) / n;
};
const agreement = (a, b) => {
  let same = 0;
  for (let i = 0; i < n; ++i) same += top1(a, i) === top1(b, i) ? 1 : 0;
  return same;
};

let failed = false;
for (const form of forms) {
  const path = join(work, `model-${form}.onnx`);
  const session = await ort.InferenceSession.create(path, { graphOptimizationLevel: process.env.ORT_OPT || 'all' });
  const y = new Float32Array(n * outputs);
  const batch = 256;
  for (let s = 0; s < n; s += batch) {
    const b = Math.min(batch, n - s);
    const x = new ort.Tensor('float32', input.subarray(s * perImage, (s + b) * perImage),
                             [b, ...meta.input_shape]);
    const r = await session.run({ input: x });
    y.set(r.output.data, s * outputs);
  }
  const bytes = statSync(path).size;
  const bgmFloat = floats('logits_float32.f32');
  if (form === 'float32') {
    let worst = 0;
    for (let k = 0; k < y.length; ++k) worst = Math.max(worst, Math.abs(y[k] - bgmFloat[k]));
    const ok = worst <= 1e-4;
    failed ||= !ok;
    let line = `${form} (${bytes} bytes): ${n} images, max |logit difference| vs bitgrad float ` +
               `${worst.toExponential(3)} (limit 1e-4) ${ok ? 'ok' : 'FAILED'}`;
    if (labels) line += `; accuracy ORT ${accuracy(y).toFixed(2)}% bitgrad ` +
                        `${accuracy(bgmFloat).toFixed(2)}%`;
    console.log(line);
    continue;
  }
  if (!meta.int8) {
    console.log(`${form}: the model has no calibration; compared with the float path only`);
  }
  const bgm = meta.int8 ? floats('logits_int8.f32') : bgmFloat;
  const same = agreement(y, bgm);
  let ok = same >= 0.999 * n;
  let line = `${form} (${bytes} bytes): ${n} images, top-1 agreement with bitgrad ` +
             `${meta.int8 ? 'int8' : 'float'} ${same}/${n} (${((100 * same) / n).toFixed(2)}%, ` +
             `limit 99.9%)`;
  let worst = 0;
  for (let k = 0; k < y.length; ++k) worst = Math.max(worst, Math.abs(y[k] - bgm[k]));
  line += `, max |logit difference| ${worst.toExponential(3)}`;
  if (labels) {
    const a = accuracy(y), b = accuracy(bgm);
    const accOk = Math.abs(a - b) <= 0.05 + 1e-9;
    ok &&= accOk;
    line += `; accuracy ORT ${a.toFixed(2)}% bitgrad ${b.toFixed(2)}% (limit 0.05 points)`;
  }
  line += `; agreement with bitgrad float ${agreement(y, bgmFloat)}/${n}`;
  failed ||= !ok;
  console.log(line + (ok ? ' ok' : ' FAILED'));
}
process.exit(failed ? 1 : 0);
