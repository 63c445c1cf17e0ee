"use strict";
// The sampler of charrnn's exported page (charrnn/export/page.py fills in the template around it).
// It decodes the weights embedded in the page and runs the model one character at a time in plain
// JavaScript: matrix-vector products, the LSTM / GRU / RNN cell, softmax with temperature and top-k,
// a seeded random number generator. Greedy decoding gives the text `charrnn sample --argmax` gives.
// Nothing here touches the network; the page's Content-Security-Policy forbids it anyway.
(function () {
  const $ = (id) => document.getElementById(id);
  const page = { meta: null, startup_ms: null, last: null, error: null };
  window.charrnnPage = page; // for scripts and tests: the model, the start-up time, the last run

  // ---- the weights ---------------------------------------------------------------------------

  function base64Bytes(text) {
    const bin = atob(text.trim());
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes;
  }

  function halfToFloatTable() {
    // Every float16 bit pattern as a float32: decoding is one lookup per weight.
    const table = new Float32Array(65536);
    for (let bits = 0; bits < 65536; bits++) {
      const sign = bits & 0x8000 ? -1 : 1;
      const exponent = (bits >> 10) & 0x1f;
      const fraction = bits & 0x3ff;
      if (exponent === 0) table[bits] = sign * fraction * 2 ** -24;
      else if (exponent === 31) table[bits] = fraction ? NaN : sign * Infinity;
      else table[bits] = sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
    }
    return table;
  }

  function tensors(meta, bytes) {
    // name -> Float32Array; meta.tensors gives each one's dtype, shape and byte offset (4-aligned).
    const out = {};
    let table = null;
    for (const t of meta.tensors) {
      const n = t.shape.reduce((a, b) => a * b, 1);
      if (t.dtype === "float32") {
        out[t.name] = new Float32Array(bytes.buffer, t.offset, n);
      } else {
        table = table || halfToFloatTable();
        const raw = new Uint16Array(bytes.buffer, t.offset, n);
        const values = new Float32Array(n);
        for (let i = 0; i < n; i++) values[i] = table[raw[i]];
        out[t.name] = values;
      }
    }
    return out;
  }

  // ---- the model -----------------------------------------------------------------------------

  // y = w x + b for a row-major (rows, cols) matrix w, four rows at a time: each x[c] is read once
  // for four products, and the four sums are independent. About 1.4 times as fast as one row at a
  // time in Chromium (benchmarks/bench_export.py times the page).
  function affine(w, b, x, y, rows, cols) {
    let r = 0;
    for (; r + 3 < rows; r += 4) {
      const k0 = r * cols, k1 = k0 + cols, k2 = k1 + cols, k3 = k2 + cols;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let c = 0; c < cols; c++) {
        const v = x[c];
        s0 += w[k0 + c] * v;
        s1 += w[k1 + c] * v;
        s2 += w[k2 + c] * v;
        s3 += w[k3 + c] * v;
      }
      y[r] = b[r] + s0;
      y[r + 1] = b[r + 1] + s1;
      y[r + 2] = b[r + 2] + s2;
      y[r + 3] = b[r + 3] + s3;
    }
    for (; r < rows; r++) {
      const k = r * cols;
      let s = 0;
      for (let c = 0; c < cols; c++) s += w[k + c] * x[c];
      y[r] = b[r] + s;
    }
  }

  const sigmoid = (v) => 1 / (1 + Math.exp(-v));

  class Model {
    // The one-character step: step(id) advances the state and returns the logits (a Float32Array
    // that the next step overwrites). Weights as charrnn.export.fused lays them out.
    constructor(meta, w) {
      this.meta = meta;
      this.w = w;
      const H = meta.hidden_size, E = meta.embedding_size, gates = { lstm: 4, gru: 3, rnn: 1 }[meta.cell];
      this.layers = [];
      for (let l = 0; l < meta.num_layers; l++) {
        const inputs = l === 0 ? E : H;
        this.layers.push({
          inputs,
          h: new Float32Array(H),
          c: meta.cell === "lstm" ? new Float32Array(H) : null,
          xh: new Float32Array(inputs + H), // [x; h] for the LSTM and RNN product
          gates: new Float32Array(gates * H),
          hidden: meta.cell === "gru" ? new Float32Array(gates * H) : null, // the GRU's hidden product
        });
      }
      this.logits = new Float32Array(meta.vocab_size);
    }

    reset() {
      for (const layer of this.layers) {
        layer.h.fill(0);
        if (layer.c) layer.c.fill(0);
      }
    }

    step(id) {
      const meta = this.meta, w = this.w, H = meta.hidden_size, E = meta.embedding_size;
      let x = w.embedding.subarray(id * E, (id + 1) * E);
      for (let l = 0; l < this.layers.length; l++) {
        const layer = this.layers[l], h = layer.h, g = layer.gates, p = "layer" + l + ".";
        if (meta.cell === "gru") {
          const gh = layer.hidden;
          affine(w[p + "w_ih"], w[p + "b_ih"], x, g, 3 * H, layer.inputs);
          affine(w[p + "w_hh"], w[p + "b_hh"], h, gh, 3 * H, H);
          for (let j = 0; j < H; j++) {
            const r = sigmoid(g[j] + gh[j]);
            const z = sigmoid(g[H + j] + gh[H + j]);
            const n = Math.tanh(g[2 * H + j] + r * gh[2 * H + j]);
            h[j] = n + z * (h[j] - n);
          }
        } else {
          layer.xh.set(x, 0);
          layer.xh.set(h, layer.inputs);
          affine(w[p + "w"], w[p + "b"], layer.xh, g, g.length, layer.inputs + H);
          if (meta.cell === "lstm") {
            const c = layer.c;
            for (let j = 0; j < H; j++) {
              const i = sigmoid(g[j]), f = sigmoid(g[H + j]), gg = Math.tanh(g[2 * H + j]), o = sigmoid(g[3 * H + j]);
              c[j] = f * c[j] + i * gg;
              h[j] = o * Math.tanh(c[j]);
            }
          } else {
            for (let j = 0; j < H; j++) h[j] = Math.tanh(g[j]);
          }
        }
        x = h;
      }
      affine(w["head.w"], w["head.b"], x, this.logits, meta.vocab_size, H);
      return this.logits;
    }
  }

  // ---- choosing the next character -------------------------------------------------------------

  function argmax(logits) {
    let best = 0; // the first of equal maxima, as torch.argmax
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }

  function generator(seed) {
    // xoshiro128** seeded through splitmix32: uniform numbers in [0, 1) from a 32-bit seed.
    let z = seed >>> 0;
    const split = () => {
      z = (z + 0x9e3779b9) >>> 0;
      let t = z;
      t = Math.imul(t ^ (t >>> 16), 0x85ebca6b);
      t = Math.imul(t ^ (t >>> 13), 0xc2b2ae35);
      return (t ^ (t >>> 16)) >>> 0;
    };
    let a = split(), b = split(), c = split(), d = split();
    return () => {
      const out = Math.imul(((Math.imul(b, 5) << 7) | (Math.imul(b, 5) >>> 25)), 9) >>> 0;
      const t = b << 9;
      c ^= a; d ^= b; b ^= c; a ^= d; c ^= t;
      d = (d << 11) | (d >>> 21);
      return out / 4294967296;
    };
  }

  function draw(logits, temperature, topK, random) {
    // A sample from softmax(logits / temperature), over the topK most likely characters if topK > 0
    // (ties with the k-th kept, as `charrnn sample --top-k`).
    const V = logits.length, scaled = new Float64Array(V);
    for (let i = 0; i < V; i++) scaled[i] = logits[i] / temperature;
    let floor = -Infinity;
    if (topK > 0 && topK < V) floor = Array.from(scaled).sort((p, q) => q - p)[topK - 1];
    let max = -Infinity;
    for (let i = 0; i < V; i++) if (scaled[i] >= floor && scaled[i] > max) max = scaled[i];
    let total = 0;
    for (let i = 0; i < V; i++) {
      scaled[i] = scaled[i] >= floor ? Math.exp(scaled[i] - max) : 0;
      total += scaled[i];
    }
    let u = random() * total, last = 0;
    for (let i = 0; i < V; i++) {
      if (scaled[i] === 0) continue;
      last = i;
      u -= scaled[i];
      if (u < 0) return i;
    }
    return last; // rounding left a sliver of u: the last possible character
  }

  // ---- the page --------------------------------------------------------------------------------

  let model = null, chars = null, index = null, stopping = false, running = false;

  function setState(state, message) {
    document.body.dataset.state = state;
    if (message !== undefined) $("status").textContent = message;
  }

  function escapeChar(ch) {
    const named = { "\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "␣" };
    if (named[ch]) return named[ch];
    const code = ch.codePointAt(0);
    return code < 32 || (code >= 127 && code < 160) ? "U+" + code.toString(16).toUpperCase().padStart(4, "0") : ch;
  }

  function options() {
    // The form's values, checked; throws an Error whose message says what to change.
    const whole = (id, low, what) => {
      const text = $(id).value.trim(), value = Number(text);
      if (text === "" || !Number.isInteger(value) || value < low) throw new Error(what + " must be a whole number of at least " + low + ", got '" + text + "'");
      return value;
    };
    const length = whole("length", 1, "length");
    const topK = whole("top-k", 0, "top-k");
    if (topK > chars.length) throw new Error("top-k must be at most the vocabulary size (" + chars.length + "), got " + topK);
    const temperature = Number($("temperature").value);
    const seedText = $("seed").value.trim();
    let seed;
    if (seedText === "") seed = crypto.getRandomValues(new Uint32Array(1))[0];
    else if (/^\d+$/.test(seedText) && Number(seedText) < 2 ** 32) seed = Number(seedText);
    else throw new Error("seed must be a whole number from 0 to 4294967295, or empty for a random one");
    const prime = $("prime").value;
    const ids = [], unknown = [];
    for (const ch of prime) {
      const id = index.get(ch);
      if (id === undefined) { if (!unknown.includes(ch)) unknown.push(ch); } else ids.push(id);
    }
    if (unknown.length) {
      const shown = unknown.slice(0, 20).map((ch) => "'" + escapeChar(ch) + "'").join(", ");
      throw new Error(unknown.length + " character(s) of the prime are not in the model's vocabulary: " + shown + "; remove them");
    }
    return { length, topK, temperature, seed, argmax: $("argmax").checked, prime, ids };
  }

  // Yield to the browser between slices of work, without setTimeout's 4 ms clamp.
  const channel = new MessageChannel();
  let wake = null;
  channel.port1.onmessage = () => { const resume = wake; wake = null; if (resume) resume(); };
  const pause = () => new Promise((resolve) => { wake = resolve; channel.port2.postMessage(0); });

  async function generate() {
    if (running) return;
    let opts;
    try {
      opts = options();
    } catch (err) {
      setState("error", err.message);
      return;
    }
    running = true;
    stopping = false;
    $("generate").disabled = true;
    $("stop").disabled = false;
    const output = $("output");
    output.textContent = opts.prime;
    setState("running", "Reading the prime…");
    const random = generator(opts.seed);
    const started = performance.now();
    // 1. The prime, one character at a time, from a zero state; with none, after a line break.
    model.reset();
    const ids = opts.ids.length ? opts.ids : [page.meta.start];
    let logits = null;
    for (let i = 0; i < ids.length; i++) {
      logits = model.step(ids[i]);
      if (i % 256 === 255) await pause();
    }
    // 2. The continuation, in slices of about 30 ms, each shown as soon as it is written.
    const primed = performance.now();
    let n = 0;
    while (n < opts.length && !stopping) {
      const until = performance.now() + 30;
      let piece = "";
      while (n < opts.length && performance.now() < until) {
        const id = opts.argmax ? argmax(logits) : draw(logits, opts.temperature, opts.topK, random);
        piece += chars[id];
        n++;
        if (n < opts.length) logits = model.step(id);
      }
      output.append(piece);
      const seconds = (performance.now() - primed) / 1000;
      $("status").textContent = n + " characters, " + Math.round(n / Math.max(seconds, 1e-3)) + " characters/s";
      await pause();
    }
    const seconds = (performance.now() - primed) / 1000;
    page.last = {
      n_chars: n,
      elapsed_s: seconds,
      prime_s: (primed - started) / 1000,
      chars_per_s: n / Math.max(seconds, 1e-6),
      seed: opts.seed,
      stopped: stopping,
    };
    running = false;
    $("generate").disabled = false;
    $("stop").disabled = true;
    const how = opts.argmax ? "greedy" : "temperature " + opts.temperature.toFixed(2) + (opts.topK ? ", top-k " + opts.topK : "") + ", seed " + opts.seed;
    setState("done", (stopping ? "Stopped after " : "") + n + " characters in " + seconds.toFixed(2) + " s (" + Math.round(page.last.chars_per_s) + " characters/s; " + how + ")");
  }

  function start() {
    try {
      const meta = JSON.parse($("model").textContent);
      const bytes = base64Bytes($("weights").textContent);
      $("weights").textContent = ""; // the decoded copy is all that is needed from here on
      chars = Array.from(meta.vocab);
      index = new Map(chars.map((ch, i) => [ch, i]));
      model = new Model(meta, tensors(meta, bytes));
      page.meta = meta;
    } catch (err) {
      page.error = String(err);
      setState("error", "This page's model could not be loaded (" + err + "); export it again with `charrnn export`.");
      return;
    }
    const sync = () => { $("temperature-value").textContent = Number($("temperature").value).toFixed(2); $("temperature").disabled = $("argmax").checked; };
    $("temperature").addEventListener("input", sync);
    $("argmax").addEventListener("change", sync);
    $("generate").addEventListener("click", generate);
    $("stop").addEventListener("click", () => { stopping = true; });
    $("prime").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
    sync();
    $("generate").disabled = false;
    page.startup_ms = performance.now();
    setState("ready", "Ready in " + (page.startup_ms / 1000).toFixed(2) + " s. Type a prime (or none) and press Generate (Ctrl+Enter).");
  }

  start();
})();
