// The page: talk (microphone or typed turns, settings, a viewer link) or, with
// `?session_id=S&role=viewer`, the read-only view of a live session in large type.
import { RealtimeClient } from "./client.js";
import { startMicrophone } from "./mic.js";
import { Transcript } from "./transcript.js";

const TOKEN_KEY = "realtime.token";
const MAX_ERRORS = 6;
const $ = (id) => document.getElementById(id);

const query = new URLSearchParams(location.search);
const viewing = query.get("role") === "viewer";
const watchedId = query.get("session_id");

const transcript = new Transcript($("transcript"), $("announcer"), viewing ? "Speaker" : "You");
let mic = null; // the running microphone, or null
let micStarting = false;
let sessionId = null;
let confirmed = null; // the session config the server confirmed last
let lastRetryWhy = null;

// ---- token (sessionStorage: this tab only) ------------------------------------------------

function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

function saveToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token lives for this page load only */ }
}

// ---- status and errors in plain words -----------------------------------------------------

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
}

// `connection`: a problem that a successful connection resolves (then shown muted).
function showError(code, text, { connection = false } = {}) {
  const list = $("errors");
  const item = document.createElement("li");
  item.dataset.code = code;
  if (connection) item.dataset.kind = "connection";
  const when = new Date().toLocaleTimeString();
  item.textContent = `${when}: ${text}`;
  list.prepend(item);
  while (list.children.length > MAX_ERRORS) list.lastChild.remove();
}

const ERROR_WORDS = {
  stt_error: (e) => `Speech-to-text failed${e.status ? ` (${e.status})` : ""}: ${e.message}. The microphone was stopped.`,
  audio_unsupported: () => "This server cannot take audio: it has no speech-to-text service. Type your message instead.",
  invalid_config: (e) => `The server refused the settings: ${e.message}`,
  read_only: () => "This is a read-only view: it cannot send anything.",
  internal_error: (e) => `The server failed to handle a message: ${e.message}`,
};

function serverError(err) {
  const e = err || {};
  const words = ERROR_WORDS[e.code];
  showError(e.code || "error", words ? words(e) : `The server reported ${e.code || "an error"}: ${e.message || ""}`);
  if (e.code === "stt_error") stopMic();
}

// ---- the connection -----------------------------------------------------------------------

const client = new RealtimeClient({
  role: viewing ? "viewer" : "participant",
  sessionId: viewing ? watchedId : null,
  token,
  onMessage,
  onState({ state, text, why }) {
    setStatus(state, text);
    if (state === "retrying" && why !== lastRetryWhy) {
      lastRetryWhy = why;
      showError("disconnected", `Disconnected: ${why}. Reconnecting automatically.`, {
        connection: true,
      });
    }
    if (state === "open") {
      lastRetryWhy = null;
      for (const item of $("errors").querySelectorAll("li[data-kind=connection]")) {
        item.dataset.resolved = "true";
      }
    }
    setEnabled(state === "open");
  },
  onRefused({ status, code, message }) {
    setEnabled(false);
    const reason = `The server refused the connection (${status} ${code}): ${message}.`;
    setStatus("refused", reason);
    showError(code, reason, { connection: true });
    if (status === 401) {
      $("access").hidden = false;
      $("access-reason").textContent = token()
        ? `${reason} The token you entered is not valid.`
        : `${reason} Enter the server's token.`;
      $("token").focus();
    }
  },
  onEnded(code, reason) {
    // A session that ended stops the microphone; one lost with its connection does not
    // (the next session takes the audio).
    if (code === 1000) stopMic();
    if (viewing) {
      showError("ended", "The session ended.");
      return false;
    }
    showError("ended", code === 1000
      ? `The session ended${reason ? ` (${reason})` : ""}; starting a new one.`
      : `${reason[0].toUpperCase()}${reason.slice(1)}; starting a new one.`);
    return true;
  },
});

function onMessage(msg) {
  switch (msg.type) {
    case "session.created":
    case "session.resumed":
      joined(msg);
      break;
    case "session.updated":
      showConfirmed(msg.session, msg.ignored);
      break;
    case "Begin":
      if (mic) setStatus("open", "Listening");
      break;
    case "SpeechStarted":
      break;
    case "Turn":
      transcript.turn(msg);
      break;
    case "Termination":
      if (mic) setStatus("open", "Speech-to-text ended");
      break;
    case "response.created":
      transcript.created(msg);
      break;
    case "response.queued":
      transcript.queued(msg);
      break;
    case "response.delta":
      transcript.delta(msg);
      break;
    case "response.tool_call.delta":
      transcript.toolCall(msg);
      break;
    case "response.done":
      transcript.done(msg);
      break;
    case "response.cancelled":
      transcript.cancelled(msg);
      break;
    case "response.failed":
      transcript.failed(msg);
      break;
    case "error":
      serverError(msg.error);
      break;
    default:
      break;
  }
}

function joined(msg) {
  const same = msg.session_id === sessionId;
  if (msg.type === "session.created") {
    if (same) {
      // The same session again (a viewer that reconnected): its snapshot replaces ours.
      $("transcript").replaceChildren();
    }
    transcript.begin(`New session ${msg.session_id}`);
    transcript.fromHistory(msg.history);
  }
  sessionId = msg.session_id;
  document.body.dataset.sessionId = sessionId;
  setStatus("open", viewing ? `Watching session ${sessionId}` : `Connected: session ${sessionId}`);
  if (msg.session) showConfirmed(msg.session, null, !same);
  if (!viewing) {
    const link = new URL("/", location.href);
    link.search = new URLSearchParams({ session_id: sessionId, role: "viewer" }).toString();
    $("viewer-link").value = link.href;
  }
}

// ---- settings -----------------------------------------------------------------------------

const SETTINGS = ["preset", "model", "trigger", "instructions"];

function showConfirmed(session, ignored, fillForm = true) {
  confirmed = session;
  const parts = [
    `preset ${session.preset}`,
    `model ${session.model}`,
    `trigger ${session.trigger}`,
    `on_new_turn ${session.on_new_turn}`,
    `instructions “${(session.instructions || "").slice(0, 80)}”`,
  ];
  if (ignored && ignored.length) parts.push(`ignored: ${ignored.join(", ")}`);
  $("confirmed").textContent = parts.join(" · ");
  if (fillForm) {
    for (const name of SETTINGS) {
      if (typeof session[name] === "string") $(name).value = session[name];
    }
  }
}

function applySettings(event) {
  event.preventDefault();
  const update = {};
  for (const name of SETTINGS) {
    const value = $(name).value;
    if (!confirmed || confirmed[name] !== value) update[name] = value;
  }
  if (Object.keys(update).length === 0) {
    $("confirmed").textContent += " (nothing changed)";
    return;
  }
  client.send({ type: "session.update", session: update });
}

// ---- typing -------------------------------------------------------------------------------

function sendTyped(event) {
  event.preventDefault();
  const input = $("message");
  const text = input.value.trim();
  if (!text) return;
  const turnOrder = transcript.nextTurnOrder;
  const words = text.split(/\s+/).map((word) => ({ text: word, word_is_final: true }));
  const sent = client.send({
    type: "Turn",
    turn_order: turnOrder,
    turn_is_formatted: true,
    end_of_turn: true,
    transcript: text,
    utterance: "",
    end_of_turn_confidence: 1,
    words,
  });
  if (!sent) {
    showError("not_connected", "Not connected: the message was not sent.");
    return;
  }
  transcript.typed(turnOrder, text);
  input.value = "";
}

// ---- the microphone -----------------------------------------------------------------------

async function toggleMic() {
  if (mic) {
    await stopMic();
    return;
  }
  if (micStarting) return;
  micStarting = true;
  $("mic").disabled = true;
  try {
    mic = await startMicrophone(
      (frame) => client.sendAudio(frame),
      () => {
        showError("mic_ended", "The microphone stopped (it was unplugged or taken by another program).");
        stopMic();
      },
    );
    $("mic").textContent = "Stop";
    $("mic").setAttribute("aria-pressed", "true");
    document.body.dataset.mic = "on";
    setStatus("open", "Listening");
  } catch (err) {
    showError(err.code || "microphone", err.message);
  } finally {
    micStarting = false;
    $("mic").disabled = !client.open;
    syncTyping();
  }
}

async function stopMic() {
  const running = mic;
  mic = null;
  $("mic").textContent = "Start talking";
  $("mic").setAttribute("aria-pressed", "false");
  delete document.body.dataset.mic;
  syncTyping();
  if (running) await running.stop();
}

// Typed turns and speech-to-text's turns share the session's turn_order, so the text box is
// off while the microphone runs.
function syncTyping() {
  const on = client.open && !mic;
  $("message").disabled = !on;
  $("send").disabled = !on;
  $("message").placeholder = mic
    ? "Stop the microphone to type"
    : "Or type a message and press Enter";
}

function setEnabled(open) {
  $("mic").disabled = !open || micStarting;
  $("apply").disabled = !open;
  $("copy-link").disabled = !open;
  syncTyping();
}

async function copyLink() {
  const input = $("viewer-link");
  try {
    await navigator.clipboard.writeText(input.value);
    $("copy-result").textContent = "Viewer link copied.";
  } catch {
    input.select();
    $("copy-result").textContent = "Copying was not allowed: the link is selected, copy it with Ctrl+C.";
  }
}

// ---- start --------------------------------------------------------------------------------

function start() {
  document.body.dataset.mode = viewing ? "viewer" : "talk";
  $("token").value = token();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveToken($("token").value.trim());
    $("access").hidden = true;
    client.connect();
  });
  if (viewing) {
    if (!watchedId) {
      setStatus("refused", "No session to watch: the link needs ?session_id=…&role=viewer.");
      return;
    }
    document.title = `realtime: watching ${watchedId}`;
    $("watch-title").hidden = false;
    $("watched-id").textContent = watchedId;
  } else {
    $("talk").hidden = false;
    $("mic").addEventListener("click", toggleMic);
    $("say").addEventListener("submit", sendTyped);
    $("settings-form").addEventListener("submit", applySettings);
    $("copy-link").addEventListener("click", copyLink);
  }
  client.connect();
}

start();
