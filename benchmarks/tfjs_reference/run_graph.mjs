// Run a TensorFlow.js graph model from disk as the reference for our Python ports.
//
// Why: a port (faceres, BlazeFace, ...) is only trusted once it gives the same numbers as the
// original graph run by TF.js itself. This script loads `model.json` and its weight shards
// through a file-system IOHandler (no http, nothing downloaded), feeds it arrays given as .npy
// files and writes the requested output tensors as .npy files. It is generic: graph, input
// nodes and output nodes are all arguments. Never run in CI (it needs npm packages).
//
// Setup, once, in a scratch folder OUTSIDE the repository (tfjs-node is not needed):
//   mkdir -p /tmp/node-ref && cd /tmp/node-ref
//   npm install @tensorflow/tfjs@4.22.0 @tensorflow/tfjs-backend-wasm@4.22.0
//
// Usage:
//   node benchmarks/tfjs_reference/run_graph.mjs --modules /tmp/node-ref/node_modules \
//     --graph PKG/models/faceres.json --input input_1=faces.npy \
//     --output global_pooling/Mean --out-dir OUT [--backend wasm|cpu] [--batch 8]
//   node benchmarks/tfjs_reference/run_graph.mjs --modules ... --graph G.json --info
//
// --modules (or env TFJS_NODE_MODULES) is the node_modules folder holding @tensorflow/tfjs.
// Inputs: .npy, little-endian float32 or int32, C order; the first axis is the batch, which is
// split into chunks of --batch (0: all at once) when every input has the same first dimension.
// Outputs: OUT/<output name with '/' and ':' replaced by '_'>.npy (float32, int32 or uint8),
// chunks concatenated along the first axis, plus OUT/run.json (backend, versions, shapes, time).
// Several outputs are computed in one call: execute(), or executeAsync() for graphs with
// control flow or dynamic shapes (NonMaxSuppression in detectors).

import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

function parseArgs(argv) {
  const args = { inputs: [], outputs: [], backend: "wasm", batch: 8, info: false };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${key} needs a value`);
      return argv[++i];
    };
    if (key === "--modules") args.modules = value();
    else if (key === "--graph") args.graph = value();
    else if (key === "--input") args.inputs.push(value());
    else if (key === "--output") args.outputs.push(value());
    else if (key === "--out-dir") args.outDir = value();
    else if (key === "--backend") args.backend = value();
    else if (key === "--batch") args.batch = Number.parseInt(value(), 10);
    else if (key === "--info") args.info = true;
    else throw new Error(`unknown argument ${key}`);
  }
  args.modules = args.modules || process.env.TFJS_NODE_MODULES;
  if (!args.modules) throw new Error("give --modules DIR/node_modules or TFJS_NODE_MODULES");
  if (!args.graph) throw new Error("give --graph model.json");
  if (!args.info && (!args.inputs.length || !args.outputs.length || !args.outDir)) {
    throw new Error("give --input NAME=FILE.npy, --output NAME and --out-dir DIR (or --info)");
  }
  return args;
}

// ---- .npy (version 1-3), the dtypes graph models exchange ----

const NPY_DTYPES = {
  "<f4": { array: Float32Array, tf: "float32" },
  "<i4": { array: Int32Array, tf: "int32" },
  "|u1": { array: Uint8Array, tf: "bool" },
};

function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.toString("latin1", 0, 6) !== "\x93NUMPY") throw new Error(`${file}: not a .npy file`);
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12) + headerLen;
  const header = buf.toString("latin1", major === 1 ? 10 : 12, start);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  if (/'fortran_order':\s*True/.test(header)) throw new Error(`${file}: Fortran order`);
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1] ?? "";
  const shape = shapeText.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const kind = NPY_DTYPES[descr];
  if (!kind) throw new Error(`${file}: dtype ${descr} not supported (use <f4 or <i4)`);
  const count = shape.reduce((a, b) => a * b, 1);
  const bytes = buf.subarray(start, start + count * kind.array.BYTES_PER_ELEMENT);
  const data = new kind.array(count);
  new Uint8Array(data.buffer).set(bytes); // copy: the header leaves the data unaligned
  return { data, shape, dtype: kind.tf };
}

function writeNpy(file, data, shape) {
  const descr = data instanceof Float32Array ? "<f4" : data instanceof Int32Array ? "<i4" : "|u1";
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeText}, }`;
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n"; // total a multiple of 64
  const head = Buffer.alloc(10);
  head.write("\x93NUMPY", 0, "latin1");
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  fs.writeFileSync(file, Buffer.concat([head, Buffer.from(header, "latin1"), body]));
}

// ---- the model from disk ----

function fileHandler(graphJson) {
  // A tf.io.IOHandler reading model.json and its shards with fs (tf.loadGraphModel needs http
  // or a handler in Node without tfjs-node).
  return {
    load: async () => {
      const model = JSON.parse(fs.readFileSync(graphJson, "utf8"));
      const folder = path.dirname(graphJson);
      const weightSpecs = [];
      const shards = [];
      for (const group of model.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const name of group.paths) shards.push(fs.readFileSync(path.join(folder, name)));
      }
      const all = Buffer.concat(shards);
      return {
        modelTopology: model.modelTopology,
        weightSpecs,
        weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength),
        format: model.format,
        generatedBy: model.generatedBy,
        convertedBy: model.convertedBy,
        signature: model.signature,
        userDefinedMetadata: model.userDefinedMetadata,
        modelInitializer: model.modelInitializer,
      };
    },
  };
}

async function setBackend(tf, require, backend) {
  if (backend === "wasm") {
    const wasm = require("@tensorflow/tfjs-backend-wasm");
    const dist = path.dirname(require.resolve("@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm"));
    wasm.setWasmPaths(dist + path.sep);
  } else if (backend !== "cpu") {
    throw new Error(`--backend must be wasm or cpu, not ${backend}`);
  }
  if (!(await tf.setBackend(backend))) throw new Error(`backend ${backend} failed to start`);
  await tf.ready();
}

function fileName(output) {
  return output.replace(/[/:]/g, "_") + ".npy";
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  // Resolve the packages from --modules, not from this script's folder (they live outside).
  const require = createRequire(path.join(path.resolve(args.modules), "..", "resolver.js"));
  const tf = require("@tensorflow/tfjs");
  await setBackend(tf, require, args.backend);
  const model = await tf.loadGraphModel(fileHandler(path.resolve(args.graph)));

  if (args.info) {
    const describe = (ts) => ts.map((t) => ({ name: t.name, shape: t.shape, dtype: t.dtype }));
    const info = { inputs: describe(model.inputs), outputs: describe(model.outputs) };
    console.log(JSON.stringify(info, null, 2));
    return;
  }

  const feeds = args.inputs.map((spec) => {
    const at = spec.indexOf("=");
    if (at < 1) throw new Error(`--input ${spec}: expected NAME=FILE.npy`);
    return { name: spec.slice(0, at), ...readNpy(spec.slice(at + 1)) };
  });
  const total = feeds[0].shape[0];
  const batched = args.batch > 0 && feeds.every((f) => f.shape.length > 0 && f.shape[0] === total);
  const step = batched ? args.batch : total;
  const chunks = args.outputs.map(() => []);
  const started = process.hrtime.bigint();
  for (let first = 0; first < (batched ? total : 1); first += step) {
    const n = batched ? Math.min(step, total - first) : total;
    const inputs = {};
    for (const f of feeds) {
      const per = f.shape.slice(1).reduce((a, b) => a * b, 1);
      const part = batched ? f.data.subarray(first * per, (first + n) * per) : f.data;
      const shape = batched ? [n, ...f.shape.slice(1)] : f.shape;
      inputs[f.name] = tf.tensor(part, shape, f.dtype);
    }
    let results;
    try {
      results = model.execute(inputs, args.outputs); // synchronous graphs: no warning
    } catch (error) {
      if (!/executeAsync/.test(String(error?.message))) throw error;
      results = await model.executeAsync(inputs, args.outputs); // control flow, dynamic shapes
    }
    if (!Array.isArray(results)) results = [results];
    for (let k = 0; k < results.length; k++) {
      chunks[k].push({ data: await results[k].data(), shape: results[k].shape });
    }
    tf.dispose([...Object.values(inputs), ...results]);
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;

  fs.mkdirSync(args.outDir, { recursive: true });
  const written = {};
  args.outputs.forEach((output, k) => {
    const parts = chunks[k];
    const length = parts.reduce((a, p) => a + p.data.length, 0);
    const data = new parts[0].data.constructor(length);
    let at = 0;
    for (const p of parts) {
      data.set(p.data, at);
      at += p.data.length;
    }
    const rows = batched ? parts.reduce((a, p) => a + p.shape[0], 0) : parts[0].shape[0];
    const shape = parts[0].shape.length ? [rows, ...parts[0].shape.slice(1)] : [];
    const file = path.join(args.outDir, fileName(output));
    writeNpy(file, data, shape);
    written[output] = { file, shape };
  });
  const run = {
    graph: path.resolve(args.graph),
    backend: tf.getBackend(),
    tfjs_version: tf.version.tfjs,
    node_version: process.version,
    inputs: Object.fromEntries(feeds.map((f) => [f.name, f.shape])),
    outputs: written,
    seconds,
  };
  fs.writeFileSync(path.join(args.outDir, "run.json"), JSON.stringify(run, null, 2) + "\n");
  console.log(JSON.stringify(run));
}

main().catch((error) => {
  console.error(error?.stack ?? String(error));
  process.exit(1);
});
