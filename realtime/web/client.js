// The connection to /v1/realtime: a preflight check, the WebSocket, and reconnects with backoff.
//
// A browser cannot read why a WebSocket upgrade was refused (it only sees close code 1006), so
// every attempt first asks GET /v1/realtime/check with the same query: {"ok": true}, or the
// refusal the upgrade would give ({"ok": false, "status": 401, "error": {"code", "message"}}).
// 400/401/403/404 stop the attempts (they need the user); anything else retries with capped,
// jittered exponential backoff.

const BACKOFF_S = [0.5, 1, 2, 4, 8, 15, 30];

export function backoffDelay(attempt) {
  const base = BACKOFF_S[Math.min(attempt, BACKOFF_S.length - 1)];
  return base * (0.8 + Math.random() * 0.4);
}

// A close code in plain words.
export function describeClose(code) {
  switch (code) {
    case 1000: return "the session ended";
    case 1001: return "the server is shutting down";
    case 1002: return "the connection broke the WebSocket protocol";
    case 1006: return "the connection was lost";
    case 1007: return "the server could not read a message";
    case 1008: return "this page fell too far behind the session";
    case 1009: return "a message was larger than the server accepts";
    case 1011: return "the server failed";
    default: return `the connection closed (code ${code})`;
  }
}

export class RealtimeClient {
  // options: role ("participant" | "viewer"), sessionId (viewers), token() -> string,
  // query (extra parameters, e.g. stt_sample_rate), and callbacks onMessage(msg),
  // onState({state, text, ...}), onRefused({status, code, message}), onEnded(code, reason).
  constructor(options) {
    this.opts = options;
    this.role = options.role || "participant";
    this.sessionId = options.sessionId || null;
    this.resumeToken = null;
    this.lastSeq = null;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = true;
    this.generation = 0; // bumps on every connect(), so stale callbacks are ignored
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  // (Re)start connecting now, forgetting any scheduled retry.
  connect() {
    this.stopped = false;
    clearTimeout(this.timer);
    this.timer = null;
    this.closeSocket();
    const generation = ++this.generation;
    this.attemptOnce(generation);
  }

  // Stop for good (until connect() again).
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    this.generation++;
    this.closeSocket();
  }

  // Start a fresh session on the next connect (a participant whose session ended).
  forgetSession() {
    if (this.role === "participant") this.sessionId = null;
    this.resumeToken = null;
    this.lastSeq = null;
  }

  send(message) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  sendAudio(buffer) {
    if (!this.open) return false;
    this.ws.send(buffer);
    return true;
  }

  closeSocket() {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close(1000);
    }
  }

  params(withToken) {
    const q = new URLSearchParams();
    if (this.role !== "participant") q.set("role", this.role);
    if (this.sessionId) q.set("session_id", this.sessionId);
    if (this.sessionId && this.resumeToken && this.lastSeq !== null) {
      q.set("resume_token", this.resumeToken);
      q.set("last_seq", String(this.lastSeq));
    }
    for (const [k, v] of Object.entries(this.opts.query || {})) q.set(k, v);
    const token = this.opts.token();
    if (withToken && token) q.set("token", token);
    return q;
  }

  async attemptOnce(generation) {
    this.state("checking", "Checking the server…");
    const token = this.opts.token();
    let answer;
    try {
      const q = this.params(false);
      answer = await fetch(`/v1/realtime/check?${q}`, {
        headers: token ? { Authorization: `Bearer ${token}` } : {},
        cache: "no-store",
      });
    } catch {
      if (generation === this.generation) this.retry(generation, "the server cannot be reached");
      return;
    }
    if (generation !== this.generation) return;
    let verdict = null;
    try {
      verdict = answer.ok ? await answer.json() : null;
    } catch { /* not JSON: treated as below */ }
    if (generation !== this.generation) return;
    if (!verdict) {
      this.retry(generation, `the server answered ${answer.status} ${answer.statusText}`.trim());
      return;
    }
    if (!verdict.ok) {
      const status = verdict.status;
      const { code, message } = verdict.error || { code: "refused", message: "refused" };
      if (status === 404 && this.role === "participant" && this.sessionId) {
        // Our session is gone (not resumable): start a fresh one at once.
        this.forgetSession();
        this.opts.onEnded && this.opts.onEnded(null, "the session could not be resumed");
        this.attemptOnce(generation);
        return;
      }
      if ([400, 401, 403, 404].includes(status)) {
        this.stopped = true;
        this.opts.onRefused({ status, code, message });
        return;
      }
      this.retry(generation, `the server refused (${status} ${code}: ${message})`);
      return;
    }
    this.openSocket(generation);
  }

  openSocket(generation) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const resuming = this.resumeToken !== null && this.sessionId !== null;
    this.state("connecting", resuming ? "Reconnecting to the session…" : "Connecting…");
    const ws = new WebSocket(`${scheme}//${location.host}/v1/realtime?${this.params(true)}`);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return;
      }
      if (typeof msg.seq === "number") this.lastSeq = msg.seq;
      if (msg.type === "session.created" || msg.type === "session.resumed") {
        this.attempt = 0;
        this.sessionId = msg.session_id || this.sessionId;
        if (msg.resume_token) this.resumeToken = msg.resume_token;
        this.state("open", msg.type === "session.resumed" ? "Reconnected" : "Connected");
      }
      this.opts.onMessage(msg);
    };
    ws.onclose = (event) => {
      if (generation !== this.generation) return;
      this.ws = null;
      if (!opened) {
        // Refused or unreachable: the next attempt's preflight tells why.
        if (resuming) this.forgetSession();
        this.retry(generation, "the connection could not be opened");
        return;
      }
      if (event.code === 1000) {
        this.forgetSession();
        const again = this.opts.onEnded && this.opts.onEnded(1000, event.reason);
        if (again && !this.stopped) {
          this.attempt = 0;
          this.attemptOnce(generation);
        } else {
          this.stopped = true;
          this.state("ended", "The session ended");
        }
        return;
      }
      if (this.role === "participant" && event.code !== 1006 && event.code !== 1001) {
        this.forgetSession(); // refused for a reason of its own: start afresh
      }
      this.retry(generation, describeClose(event.code));
    };
  }

  retry(generation, why) {
    if (this.stopped || generation !== this.generation) return;
    const delay = backoffDelay(this.attempt++);
    const until = Date.now() + delay * 1000;
    const tick = () => {
      if (generation !== this.generation) return;
      const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      this.state("retrying", `Disconnected: ${why}. Reconnecting in ${left} s…`, { why });
      if (left > 0) this.timer = setTimeout(tick, Math.min(1000, until - Date.now()));
      else this.attemptOnce(generation);
    };
    tick();
  }

  state(state, text, extra = {}) {
    this.opts.onState({ state, text, ...extra });
  }
}
