// Live updates: `GET /api/v1/events/stream` read with fetch and a streaming
// Server-Sent-Events parser (EventSource cannot send the bearer header). Reconnects with
// exponential backoff and jitter; after any reconnect the caller gets a synthetic `resync`
// (messages may have been missed while the stream was down).

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;
/** The server sends a comment every 15 s: a stream silent for this long is dead. */
const SILENCE_MS = 45000;

/** Splits an SSE byte stream (already decoded to text) into `{event, data}` messages. */
export class SseParser {
  constructor(onMessage) {
    this.onMessage = onMessage;
    this.buffer = "";
  }

  push(text) {
    this.buffer += text;
    // Normalise line ends; keep a trailing CR: its LF may be in the next chunk.
    const keepCr = this.buffer.endsWith("\r");
    let body = keepCr ? this.buffer.slice(0, -1) : this.buffer;
    body = body.replace(/\r\n?/g, "\n");
    let end;
    while ((end = body.indexOf("\n\n")) !== -1) {
      this.dispatch(body.slice(0, end));
      body = body.slice(end + 2);
    }
    this.buffer = keepCr ? `${body}\r` : body;
  }

  dispatch(block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (data.length > 0) this.onMessage({ event, data: data.join("\n") });
  }
}

/**
 * Starts reading the stream until `stop()` is called.
 * - `token()`: the bearer token to send;
 * - `onMessage({event, data})`: `data` parsed as JSON; a `resync` follows every reconnect;
 * - `onStatus(state, detail)`: `"connecting"`, `"live"`, `"reconnecting"` (detail: delay ms);
 * - `onUnauthorized()`: the token was refused (the stream stops).
 */
export function startLive({ token, onMessage, onStatus, onUnauthorized }) {
  const stopper = new AbortController();
  let current = null;

  const sleep = (ms) => new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    stopper.signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });

  const deliver = ({ event, data }) => {
    let parsed = null;
    try {
      parsed = JSON.parse(data);
    } catch {
      return; // Not one of ours.
    }
    onMessage(event, parsed);
  };

  async function readOnce(isReconnect) {
    current = new AbortController();
    const abortCurrent = () => current.abort();
    stopper.signal.addEventListener("abort", abortCurrent, { once: true });
    let silence = null;
    const armSilence = () => {
      clearTimeout(silence);
      silence = setTimeout(() => current.abort(), SILENCE_MS);
    };
    try {
      const res = await fetch("/api/v1/events/stream", {
        headers: { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" },
        cache: "no-store",
        signal: current.signal,
      });
      if (res.status === 401) return "unauthorized";
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      onStatus("live");
      if (isReconnect) onMessage("resync", {});
      const parser = new SseParser(deliver);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      armSilence();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        armSilence();
        parser.push(value);
      }
      return "closed";
    } finally {
      clearTimeout(silence);
      stopper.signal.removeEventListener("abort", abortCurrent);
    }
  }

  (async () => {
    let delay = FIRST_DELAY_MS;
    onStatus("connecting");
    // Every connection after the first may have missed messages: it starts with a resync.
    for (let attempt = 0; !stopper.signal.aborted; attempt += 1) {
      const opened = Date.now();
      let outcome;
      try {
        outcome = await readOnce(attempt > 0);
      } catch {
        outcome = "failed";
      }
      if (stopper.signal.aborted) return;
      if (outcome === "unauthorized") {
        onUnauthorized();
        return;
      }
      // A stream that stayed up for a while starts the backoff over.
      if (Date.now() - opened > 10000) delay = FIRST_DELAY_MS;
      const wait = Math.round(delay * (0.75 + Math.random() * 0.5));
      onStatus("reconnecting", wait);
      await sleep(wait);
      delay = Math.min(delay * 2, MAX_DELAY_MS);
    }
  })();

  return function stop() {
    stopper.abort();
  };
}
