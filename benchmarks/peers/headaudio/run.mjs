// HeadAudio (npm @met4citizen/headaudio, pinned in package-lock.json) run in node on a PCM file, as a
// peer of benchmarks.quality. Benchmark-only: nothing in the product imports this.
//
//     node run.mjs PCM_F32LE SAMPLE_RATE TIMES_JSON   ->  JSON on stdout
//
// PCM_F32LE: mono float32 little-endian samples; TIMES_JSON: a JSON array of the video frame times (s)
// to report at. The package is written for the browser (an AudioWorkletProcessor wrapping a plain-JS
// `Processor`, and an AudioWorkletNode `HeadAudio` that turns the processor's viseme messages into
// eased Oculus blend-shape values). Here the processor is fed 128-sample blocks directly, as the
// audio thread would, its messages are handed straight to the node's own `_onmessage`, and the
// node's `update(dt)` is called after every block with the block's duration (audio time, not wall
// time), so the values are what an avatar would be given at that moment of the audio (causal; no
// DelayNode). Output per frame time:
//   values: the node's 15 blend-shape values (`onvalue`, 0..0.75) at that time;
//   labels: the share of the last frame period's blocks in which each viseme was the processor's
//           current viseme (its last `viseme` message while speaking, `sil` otherwise).
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

// HeadAudio extends AudioWorkletNode: a stand-in with the one member its constructor touches.
globalThis.AudioWorkletNode = class { constructor() { this.port = { postMessage() {} }; } };

const here = path.dirname(fileURLToPath(import.meta.url));
const pkg = path.join(here, "node_modules", "@met4citizen", "headaudio");
const { Processor } = await import(path.join(pkg, "modules", "processor.mjs"));
const { HeadAudio } = await import(path.join(pkg, "modules", "headaudio.mjs"));
const { Training } = await import(path.join(pkg, "modules", "training.mjs"));
const PARAMS = await import(path.join(pkg, "modules", "parameters.mjs"));

const [pcmPath, rateArg, timesPath] = process.argv.slice(2);
if (!timesPath) {
  console.error("usage: node run.mjs PCM_F32LE SAMPLE_RATE TIMES_JSON");
  process.exit(2);
}
const sampleRate = Number(rateArg);
const raw = fs.readFileSync(pcmPath);
const pcm = new Float32Array(raw.buffer, raw.byteOffset, Math.floor(raw.byteLength / 4));
const times = JSON.parse(fs.readFileSync(timesPath, "utf8"));

// The model, decoded as Training.loadModel does after its fetch().
const bin = fs.readFileSync(path.join(pkg, "dist", "model-en-mixed.bin"));
const buffer = bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength);
const training = new Training();
const model = [];
for (let pos = 0; pos + PARAMS.RECORD_OFFSET <= buffer.byteLength; pos += PARAMS.RECORD_OFFSET) {
  model.push(training.decodeBinaryRecord(new Float32Array(buffer, pos, PARAMS.RECORD_LEN)));
}

// Node and processor with the package's defaults (vadMode 1, gate -40/-50 dB, no silence calibration).
const node = new HeadAudio(null, {});
const names = node.visemeNames;
const values = new Array(names.length).fill(0);
node.onvalue = (key, value) => { values[names.indexOf(key)] = value; };
let current = PARAMS.MODEL_VISEME_SIL;
const worklet = {
  port: {
    postMessage(data) {
      if (data.event === "viseme" && data.viseme !== null) current = data.viseme;
      if (data.event === "ended") current = PARAMS.MODEL_VISEME_SIL;
      node._onmessage({ data });
    },
  },
};
const processor = new Processor({ sampleRate, processorOptions: {}, parameterData: {} }, worklet);
processor._onmessage({ data: { event: "model", model } });

// Feed 128-sample blocks; after each, step the node's animation by the block's duration.
const BLOCK = 128;
const blockMs = (1000 * BLOCK) / sampleRate;
const blockEnds = [];
const blockValues = [];
const blockLabels = [];
for (let start = 0; start < pcm.length; start += BLOCK) {
  const block = new Float32Array(BLOCK); // the last block is padded with silence, as a worklet's would be
  block.set(pcm.subarray(start, Math.min(start + BLOCK, pcm.length)));
  processor.process(block);
  node.update(blockMs);
  blockEnds.push((start + BLOCK) / sampleRate);
  blockValues.push(values.slice());
  blockLabels.push(current);
}

const period = times.length > 1 ? (times[times.length - 1] - times[0]) / (times.length - 1) : 0.04;
const out = { version: JSON.parse(fs.readFileSync(path.join(pkg, "package.json"), "utf8")).version,
              visemes: names.map((n) => n.replace("viseme_", "")), values: [], labels: [] };
let j = -1; // the last block ending at or before the frame time
for (const t of times) {
  while (j + 1 < blockEnds.length && blockEnds[j + 1] <= t + 1e-9) j++;
  out.values.push(j >= 0 ? blockValues[j] : new Array(names.length).fill(0));
  const share = new Array(names.length).fill(0);
  let n = 0;
  for (let k = j; k >= 0 && blockEnds[k] > t - period; k--, n++) share[blockLabels[k]]++;
  if (n === 0) share[PARAMS.MODEL_VISEME_SIL] = 1;
  out.labels.push(share.map((c) => (n ? c / n : c)));
}
process.stdout.write(JSON.stringify(out));
