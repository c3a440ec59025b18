/*
 * TraceFlow reference browser client: the executable spec of PROTOCOL §1 for SDK teams.
 *
 *   const tf = new TraceflowClient({ runners: ["https://runner.bank.internal:8080"],
 *                                    token: "tf_...", sessionId: "s-123" });
 *   tf.start();          // record with rrweb and stream batches
 *   await tf.flush();    // resolves once every batch so far is acked
 *
 * Transport: a WebRTC data channel labelled "traceflow" (POST /v1/rtc/offer, one request, no
 * trickle ICE), else a WebSocket (GET /v1/stream). Both carry the same JSON messages; on the
 * data channel a message over the channel's max message size goes as "frag" messages.
 * Delivery: each batch has a seq (1, 2, ...) and stays in memory until acked. A hello carries
 * last_acked_seq; the welcome's resume_seq is the highest seq the Runner holds, so the client
 * resends only what the Runner lacks and nothing is lost or stored twice.
 * Runner says goaway: reconnect after reconnect_after_ms, to the next of `runners` (usually
 * one load-balanced URL, so "any replica"). nack buffer_full / rate_limited:
 * resend that batch after retry_after_ms. nack too_large / invalid: drop that batch.
 * Close 4400/4401/4403/4413 (WebSocket close code, or the data channel's "close" message):
 * stop, do not retry. Anything else: reconnect with backoff.
 */
(function (global) {
  "use strict";

  const nativeFetch = global.fetch.bind(global); // signaling is never recorded
  const FATAL = new Set([4400, 4401, 4403, 4413]);
  const RETRYABLE = new Set(["buffer_full", "rate_limited"]);
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();

  class TraceflowClient {
    constructor(options) {
      this.o = Object.assign(
        { transports: ["webrtc", "websocket"], batchMs: 250, maxEvents: 200, window: 4,
          rtcTimeoutMs: 5000, iceServers: [], keepRecord: false, sdk: { name: "web-ref", version: "1" } },
        options);
      this.runners = [].concat(this.o.runners || this.o.runner);
      this.runnerIndex = 0;
      this.nextSeq = 1;
      this.pending = [];         // recorded, not yet in a batch
      this.batches = new Map();  // seq -> { seq, events, sent: bool, notBefore: ms }, until acked
      this.lastAcked = 0;        // highest seq acked with every lower seq acked too
      this.acked = new Set();
      this.link = null;
      this.ready = false;        // welcome received on the current link
      this.stopped = false;
      this.backoffMs = 200;
      this.waiters = [];
      this.log = { links: [], welcomes: [], goaways: 0, nacks: 0, closes: [], recorded: [] };
    }

    start() {
      const plugins = global.rrwebPluginConsoleRecord
        ? [global.rrwebPluginConsoleRecord.getRecordConsolePlugin()] : [];
      this.stopRecording = global.rrweb.record({ emit: (e) => this.add(e), plugins });
      this.captureFetch();
      this.timer = setInterval(() => this.cut(), this.o.batchMs);
      // Leaving the page: close the transport so the Runner frees it now, not after the
      // ~30 s an unanswered ICE consent check takes. (A page-unload beacon to POST /v1/batch
      // would carry the events not yet acked.)
      global.addEventListener("pagehide", () => this.link && this.link.close());
      this.connect();
    }

    add(event) {
      this.pending.push(event);
      if (this.o.keepRecord) this.log.recorded.push(event);
      if (this.pending.length >= this.o.maxEvents) this.cut();
    }

    // Network capture as rrweb/network@1 plugin events (the Runner redacts URLs, headers, bodies).
    captureFetch() {
      const self = this;
      global.fetch = async function (input, init) {
        const startTime = performance.now();
        const response = await nativeFetch(input, init);
        const body = await response.clone().text().catch(() => "");
        const url = new URL(typeof input === "string" ? input : input.url, location.href).href;
        self.add({ type: 6, timestamp: Date.now(), data: { plugin: "rrweb/network@1", payload: {
          requests: [{ url, method: (init && init.method) || "GET", initiatorType: "fetch",
            status: response.status, startTime, endTime: performance.now(),
            requestHeaders: (init && init.headers) || {}, requestBody: (init && init.body) || null,
            responseBody: body }] } } });
        return response;
      };
    }

    cut() {
      if (!this.pending.length) return;
      const seq = this.nextSeq++;
      this.batches.set(seq, { seq, events: this.pending, sent: false, notBefore: 0 });
      this.pending = [];
      this.pump();
    }

    pump() {
      if (!this.ready) return;
      const now = Date.now();
      let inflight = 0;
      for (const b of this.batches.values()) if (b.sent) inflight++;
      for (const b of this.batches.values()) {
        if (inflight >= this.o.window) break;
        if (b.sent || b.notBefore > now) continue;
        b.sent = true;
        inflight++;
        try {
          this.link.send(JSON.stringify({ type: "batch", seq: b.seq, events: b.events }));
        } catch (err) {
          return this.onClose(this.link, 1006); // the channel closed under us
        }
      }
    }

    // Resolves once every event recorded so far is in an acked batch.
    flush() {
      this.cut();
      const upTo = this.nextSeq - 1;
      return new Promise((resolve) => { this.waiters.push({ upTo, resolve }); this.settle(); });
    }

    settle() {
      const ready = this.waiters.filter((w) => w.upTo <= this.lastAcked);
      this.waiters = this.waiters.filter((w) => w.upTo > this.lastAcked);
      ready.forEach((w) => w.resolve());
    }

    // -- connection ----------------------------------------------------------------------

    async connect() {
      if (this.stopped || this.link || this.connecting) return;
      this.connecting = true;
      let link = null;
      const base = this.runners[this.runnerIndex];
      for (const kind of this.o.transports) {
        try {
          link = await (kind === "webrtc" ? openDataChannel : openWebSocket)(this, base, this.o);
          break;
        } catch (err) {
          if (err.status === 401 || err.status === 403) {
            this.connecting = false;
            return this.stop("refused " + err.status);
          }
        }
      }
      this.connecting = false;
      if (!link) return this.retry(this.backoffMs, true);
      this.link = link;
      this.log.links.push(this.link.kind);
      this.link.send(JSON.stringify({ type: "hello", v: 1, token: this.o.token,
        session_id: this.o.sessionId, sdk: this.o.sdk, last_acked_seq: this.lastAcked }));
    }

    retry(delayMs, nextRunner) {
      if (nextRunner) this.runnerIndex = (this.runnerIndex + 1) % this.runners.length;
      this.backoffMs = Math.min(this.backoffMs * 2, 5000);
      setTimeout(() => this.connect(), delayMs);
    }

    onMessage(link, msg) {
      if (link !== this.link) return;
      if (msg.type === "welcome") {
        this.log.welcomes.push(msg);
        this.backoffMs = 200;
        for (const seq of [...this.batches.keys()]) if (seq <= msg.resume_seq) this.done(seq);
        for (const b of this.batches.values()) b.sent = false;
        if (this.nextSeq <= msg.resume_seq) this.nextSeq = msg.resume_seq + 1;
        this.ready = true;
        this.pump();
      } else if (msg.type === "ack") {
        this.done(msg.seq);
        this.pump();
      } else if (msg.type === "nack") {
        this.log.nacks++;
        const b = this.batches.get(msg.seq);
        if (b && RETRYABLE.has(msg.code)) {
          b.sent = false;
          b.notBefore = Date.now() + (msg.retry_after_ms || 1000);
          setTimeout(() => this.pump(), msg.retry_after_ms || 1000);
        } else if (b) this.done(msg.seq); // too_large / invalid: resending cannot help
      } else if (msg.type === "goaway") {
        this.log.goaways++;
        this.drop(link, msg.reconnect_after_ms || 500, true);
      } else if (msg.type === "close") {
        this.onClose(link, msg.code);
      }
    }

    done(seq) {
      this.batches.delete(seq);
      this.acked.add(seq);
      while (this.acked.has(this.lastAcked + 1)) this.acked.delete(++this.lastAcked);
      this.settle();
    }

    onClose(link, code) {
      if (link !== this.link) return;
      this.log.closes.push(code);
      if (FATAL.has(code)) return this.stop("closed " + code);
      this.drop(link, this.backoffMs);
    }

    drop(link, reconnectMs, nextRunner) {
      if (link !== this.link) return;
      this.link = null;
      this.ready = false;
      link.close();
      this.retry(reconnectMs, nextRunner);
    }

    // Test hook: cut the transport as a network failure would, without telling the Runner.
    killTransport() {
      if (this.link) this.link.abort();
    }

    stop(why) {
      this.stopped = true;
      this.log.stopped = why;
      clearInterval(this.timer);
      if (this.stopRecording) this.stopRecording();
      if (this.link) this.link.close();
    }
  }

  // -- WebSocket -----------------------------------------------------------------------------

  function openWebSocket(client, base) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(base.replace(/^http/, "ws") + "/v1/stream");
      const link = { kind: "websocket", send: (text) => ws.send(text),
        close: () => ws.close(1000), abort: () => ws.close(4000, "killed") };
      ws.onopen = () => resolve(link);
      ws.onerror = () => reject(new Error("websocket failed"));
      ws.onmessage = (e) => client.onMessage(link, JSON.parse(e.data));
      ws.onclose = (e) => client.onClose(link, e.code);
    });
  }

  // -- WebRTC data channel -----------------------------------------------------------------

  async function openDataChannel(client, base, o) {
    const pc = new RTCPeerConnection({ iceServers: o.iceServers });
    const dc = pc.createDataChannel("traceflow", { ordered: true });
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await within(o.rtcTimeoutMs, new Promise((done) => {
        const check = () => pc.iceGatheringState === "complete" && done();
        pc.addEventListener("icegatheringstatechange", check);
        check();
      }));
      const response = await nativeFetch(base + "/v1/rtc/offer", { method: "POST",
        headers: { "Authorization": "Bearer " + o.token, "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }) });
      if (!response.ok) throw Object.assign(new Error("offer refused"), { status: response.status });
      await pc.setRemoteDescription(await response.json());
      await within(o.rtcTimeoutMs, new Promise((done) => { dc.onopen = done; }));
    } catch (err) {
      pc.close();
      throw err;
    }
    const limit = Math.min((pc.sctp && pc.sctp.maxMessageSize) || 65536, 262144);
    const frags = new Defragmenter();
    let closeCode = 1006;
    const link = { kind: "webrtc",
      send: (text) => fragment(text, limit).forEach((piece) => dc.send(piece)),
      close: () => { dc.close(); pc.close(); },
      abort: () => dc.close() };
    dc.onmessage = (e) => {
      let msg = JSON.parse(e.data);
      if (msg.type === "frag") {
        const whole = frags.feed(msg);
        if (!whole) return;
        msg = JSON.parse(whole);
      }
      if (msg.type === "close") closeCode = msg.code; // a data channel has no close code
      client.onMessage(link, msg);
    };
    dc.onclose = () => client.onClose(link, closeCode);
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed") client.onClose(link, 1006);
    };
    return link;
  }

  function within(ms, promise) {
    return Promise.race([promise, new Promise((_, reject) =>
      setTimeout(() => reject(new Error("timed out")), ms))]);
  }

  // PROTOCOL §1 framing: {"type":"frag","id","i","n","b64"}; slices of whole multiples of 3
  // bytes, so each b64 slice decodes on its own.
  let fragIds = 0;

  function fragment(text, limit) {
    if (text.length * 3 <= limit) return [text]; // UTF-8 is at most 3 bytes per UTF-16 unit
    const bytes = encoder.encode(text);
    if (bytes.length <= limit) return [text];
    const id = "c" + (++fragIds).toString(36);
    const room = Math.floor((limit - 80 - id.length) / 4) * 3;
    const n = Math.ceil(bytes.length / room);
    const out = [];
    for (let i = 0; i < n; i++) {
      const b64 = toBase64(bytes.subarray(i * room, (i + 1) * room));
      out.push(JSON.stringify({ type: "frag", id, i, n, b64 }));
    }
    return out;
  }

  class Defragmenter {
    feed(f) {
      if (f.i === 0) this.parts = [];
      this.parts.push(fromBase64(f.b64));
      if (this.parts.length < f.n) return null;
      const whole = new Uint8Array(this.parts.reduce((s, p) => s + p.length, 0));
      let at = 0;
      for (const p of this.parts) { whole.set(p, at); at += p.length; }
      this.parts = [];
      return decoder.decode(whole);
    }
  }

  function toBase64(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(s);
  }

  function fromBase64(b64) {
    return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  }

  global.TraceflowClient = TraceflowClient;
})(window);
