// Reference outputs of the face-api networks (npm @vladmandic/face-api,
// extracted under build/src/face-api) computed by face-api's own code on
// TF.js's pure-JS CPU backend, for the ONNX conversion tests in
// models/golden. Inputs are pseudo-random RGB images from xorshift32 (the Go
// test generates the same ones), so only seeds and shapes are stored.
//
// Usage: node scripts/golden/faceapi.mjs [faceApiDir] [outDir]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const faceApiDir = process.argv[2] || path.join(repo, 'build', 'src', 'face-api');
const outDir = process.argv[3] || path.join(repo, 'testdata', 'golden');

const require = createRequire(import.meta.url);
const tf = require('@tensorflow/tfjs');
await tf.setBackend('cpu');
await tf.ready();

// face-api's no-bundle ESM build imports tfjs plus the webgl and wasm
// backends by bare specifier; point them at this tfjs (CPU only).
globalThis.__goldenTF = tf;
let src = fs.readFileSync(path.join(faceApiDir, 'dist', 'face-api.esm-nobundle.js'), 'utf8');
const imports = [
  ['import*as mn from"@tensorflow/tfjs/dist/index.js";', ''],
  ['import*as pn from"@tensorflow/tfjs-backend-webgl/dist/index.js";', ''],
  ['import*as un from"@tensorflow/tfjs-backend-wasm/dist/index.js";', ''],
];
for (const [from, to] of imports) {
  if (!src.includes(from)) throw new Error(`face-api bundle changed: no ${from}`);
  src = src.replace(from, to);
}
src = 'var mn=globalThis.__goldenTF,pn={},un={};\n' + src;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'faceapi-golden-'));
const modPath = path.join(tmp, 'face-api.mjs');
fs.writeFileSync(modPath, src);
const faceapi = await import(pathToFileURL(modPath).href);
fs.rmSync(tmp, { recursive: true, force: true });

// xorshift32; pixel = top 8 bits of each state, in HWC order.
function randomImage(seed, size) {
  let s = seed >>> 0;
  const v = new Float32Array(size * size * 3);
  for (let i = 0; i < v.length; i++) {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    v[i] = s >>> 24;
  }
  return tf.tensor4d(v, [1, size, size, 3], 'float32');
}

function loadNet(net, model) {
  const manifest = JSON.parse(fs.readFileSync(path.join(faceApiDir, 'model', `${model}-weights_manifest.json`), 'utf8'));
  const specs = [];
  const bufs = [];
  for (const g of manifest) {
    for (const p of g.paths) bufs.push(fs.readFileSync(path.join(faceApiDir, 'model', p)));
    specs.push(...g.weights);
  }
  const all = Buffer.concat(bufs);
  const ab = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  net.loadFromWeightMap(tf.io.decodeWeights(ab, specs));
  return net;
}

// Float32 arrays are stored little-endian base64: exact and compact.
const b64 = (a) => Buffer.from(new Float32Array(a).buffer).toString('base64');

function write(name, obj) {
  const file = path.join(outDir, `faceapi_${name}.json`);
  fs.writeFileSync(file, JSON.stringify(obj, null, 1) + '\n');
  console.log(`${file}: ${fs.statSync(file).size} bytes`);
}

const meta = {
  source: '@vladmandic/face-api@1.7.15',
  tfjs: tf.version.tfjs,
  backend: tf.getBackend(),
  generator: 'xorshift32, pixel = state>>>24, HWC order, RGB 0..255',
};

fs.mkdirSync(outDir, { recursive: true });

{ // tiny_face_detector: raw conv8 output (NHWC) and face-api's detections.
  const net = loadNet(new faceapi.TinyFaceDetector(), 'tiny_face_detector_model');
  const cases = [];
  for (const [seed, size] of [[1, 416], [2, 224]]) {
    const x = randomImage(seed, size);
    const out = net.forwardInput(await faceapi.toNetInput(x), size);
    const dets = await net.locateFaces(x.squeeze([0]), new faceapi.TinyFaceDetectorOptions({ inputSize: size, scoreThreshold: 0.002 }));
    cases.push({
      seed, size, outputShape: out.shape, output: b64(out.dataSync()),
      scoreThreshold: 0.002,
      detections: dets.map((d) => ({ score: d.score, x: d.box.x, y: d.box.y, width: d.box.width, height: d.box.height })),
    });
    out.dispose(); x.dispose();
  }
  write('tiny_face_detector', { ...meta, cases });
}

{ // ssd_mobilenetv1: decoded boxes [ymin,xmin,ymax,xmax] and scores, and detections.
  const net = loadNet(new faceapi.SsdMobilenetv1(), 'ssd_mobilenetv1_model');
  const cases = [];
  for (const seed of [3]) {
    const size = 512;
    const x = randomImage(seed, size);
    const { boxes, scores } = net.forwardInput(await faceapi.toNetInput(x));
    const dets = await net.locateFaces(x.squeeze([0]), new faceapi.SsdMobilenetv1Options({ minConfidence: 0.015, maxResults: 100 }));
    cases.push({
      seed, size, boxes: b64(boxes[0].dataSync()), scores: b64(scores[0].dataSync()),
      minConfidence: 0.015, maxResults: 100,
      detections: dets.map((d) => ({ score: d.score, x: d.box.x, y: d.box.y, width: d.box.width, height: d.box.height })),
    });
    boxes.forEach((t) => t.dispose()); scores.forEach((t) => t.dispose()); x.dispose();
  }
  write('ssd_mobilenetv1', { ...meta, cases });
}

{ // face_landmark_68: landmarks relative to the (square) input.
  const net = loadNet(new faceapi.FaceLandmark68Net(), 'face_landmark_68_model');
  const cases = [];
  for (const seed of [4, 5]) {
    const x = randomImage(seed, 112);
    const out = net.forwardInput(await faceapi.toNetInput(x));
    cases.push({ seed, size: 112, landmarks: Array.from(out.dataSync()) });
    out.dispose(); x.dispose();
  }
  write('face_landmark_68', { ...meta, cases });
}

{ // face_recognition: 128-d descriptors.
  const net = loadNet(new faceapi.FaceRecognitionNet(), 'face_recognition_model');
  const cases = [];
  for (const seed of [6, 7]) {
    const x = randomImage(seed, 150);
    const out = net.forwardInput(await faceapi.toNetInput(x));
    cases.push({ seed, size: 150, descriptor: Array.from(out.dataSync()) });
    out.dispose(); x.dispose();
  }
  write('face_recognition', { ...meta, cases });
}
