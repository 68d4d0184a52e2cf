// The conversation as the page shows it: user captions by turn_order, replies by response_id.
//
// Captions grow with the partial `Turn`s and settle at the final (then the formatted copy);
// replies grow delta by delta and end done (with time to first token and total), interrupted,
// cancelled or failed. Each element carries its state in data attributes (data-state,
// data-status) for styling and tests. Finished replies are announced through the page's
// aria-live region, once, whole: announcing every delta would drown a screen reader.

const CANCEL_WORDS = {
  interrupted: "interrupted",
  superseded: "superseded by a newer turn",
  client: "cancelled",
  shutdown: "stopped: the server shut down",
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function ms(value) {
  return typeof value === "number" ? `${Math.round(value)} ms` : "?";
}

// The text of a caption partial: every word heard so far (a Universal-Streaming partial's
// `transcript` holds only the final words; its last, non-final word is in `words`).
export function captionText(turn) {
  if (turn.turn_is_formatted || turn.end_of_turn) return turn.transcript || "";
  if (Array.isArray(turn.words) && turn.words.length > 0) {
    return turn.words.map((w) => w.text).join(" ");
  }
  return turn.transcript || "";
}

export class Transcript {
  // `userLabel`: what a caption is headed with ("You" on the talk page, "Speaker" in a view).
  constructor(list, announcer, userLabel = "You") {
    this.list = list;
    this.announcer = announcer;
    this.userLabel = userLabel;
    this.session = null; // the <li> group of the current session
    this.turns = new Map(); // turn_order -> caption element
    this.replies = new Map(); // response_id -> reply element
    this.maxTurnOrder = -1;
  }

  get nextTurnOrder() {
    return this.maxTurnOrder + 1;
  }

  // A new session's part of the list (a divider when there was one before).
  begin(label) {
    if (this.list.children.length > 0) {
      this.list.append(el("li", "divider", label));
    }
    this.turns = new Map();
    this.replies = new Map();
    this.maxTurnOrder = -1;
  }

  // Show a joining connection's snapshot (`session.created.history`).
  fromHistory(history) {
    for (const entry of history || []) {
      this.seeTurnOrder(entry.turn_order);
      if (entry.role === "user") {
        const caption = this.caption(entry.turn_order);
        this.setCaption(caption, entry.text, "formatted");
        if (entry.speaker) this.setSpeaker(caption, entry.speaker);
      } else if (entry.role === "assistant") {
        const id = entry.response_id || `history-${this.list.children.length}`;
        const reply = this.reply(id, entry.turn_order);
        reply.querySelector(".text").textContent = entry.text || "";
        if (entry.status === "in_progress") {
          reply.dataset.status = "streaming";
        } else {
          this.finish(reply, "done", "");
        }
      }
    }
  }

  seeTurnOrder(order) {
    if (typeof order === "number" && order > this.maxTurnOrder) this.maxTurnOrder = order;
  }

  setSpeaker(node, speaker) {
    node.dataset.speaker = speaker;
    node.querySelector(".who").textContent = `${this.userLabel} ${speaker}`;
  }

  caption(turnOrder) {
    let node = this.turns.get(turnOrder);
    if (!node) {
      node = el("li", "entry user");
      node.dataset.turnOrder = String(turnOrder);
      node.append(el("span", "who", this.userLabel), el("p", "text"));
      this.list.append(node);
      this.turns.set(turnOrder, node);
    }
    return node;
  }

  setCaption(node, text, state) {
    node.dataset.state = state;
    node.querySelector(".text").textContent = text;
  }

  // A `Turn` from speech-to-text (or one this page typed).
  turn(msg) {
    this.seeTurnOrder(msg.turn_order);
    const node = this.caption(msg.turn_order);
    const state = msg.turn_is_formatted ? "formatted" : msg.end_of_turn ? "final" : "partial";
    if (node.dataset.state === "formatted" && state !== "formatted") return; // stale
    const text = captionText(msg);
    if (state === "partial" && !text) return;
    this.setCaption(node, text, state);
    if (typeof msg.speaker_label === "string" && msg.speaker_label) {
      this.setSpeaker(node, msg.speaker_label);
    }
  }

  typed(turnOrder, text) {
    this.seeTurnOrder(turnOrder);
    const node = this.caption(turnOrder);
    node.dataset.typed = "true";
    this.setCaption(node, text, "formatted");
  }

  reply(responseId, turnOrder) {
    let node = this.replies.get(responseId);
    if (!node) {
      node = el("li", "entry reply");
      node.dataset.responseId = responseId;
      node.dataset.turnOrder = String(turnOrder);
      node.dataset.status = "streaming";
      const text = el("p", "text");
      text.append(document.createTextNode(""));
      node.append(el("span", "who", "Assistant"), text, el("p", "meta"));
      this.list.append(node);
      this.replies.set(responseId, node);
    }
    return node;
  }

  created(msg) {
    this.seeTurnOrder(msg.turn_order);
    const node = this.reply(msg.response_id, msg.turn_order);
    node.dataset.status = "streaming";
    node.querySelector(".meta").textContent = "";
  }

  queued(msg) {
    const node = this.replies.get(msg.response_id);
    if (node) {
      node.querySelector(".meta").textContent =
        `waiting ${ms(msg.wait_ms)} for the model's rate limit…`;
    }
  }

  delta(msg) {
    const node = this.replies.get(msg.response_id) || this.reply(msg.response_id, msg.turn_order);
    const text = node.querySelector(".text");
    if (node.dataset.status !== "streaming") return;
    if (!text.firstChild) text.append(document.createTextNode(""));
    text.firstChild.appendData(msg.delta || "");
    if (node.querySelector(".meta").textContent.startsWith("waiting")) {
      node.querySelector(".meta").textContent = "";
    }
  }

  toolCall(msg) {
    const node = this.replies.get(msg.response_id);
    if (node && msg.name) node.querySelector(".meta").textContent = `calling ${msg.name}…`;
  }

  done(msg) {
    const node = this.reply(msg.response_id, msg.turn_order);
    node.querySelector(".text").textContent = msg.text || "";
    const t = msg.timings || {};
    this.finish(node, "done", `first token ${ms(t.ttft_ms)} · total ${ms(t.total_ms)}`);
    this.announce(`Assistant: ${msg.text || ""}`);
  }

  cancelled(msg) {
    const node = this.reply(msg.response_id, msg.turn_order);
    node.querySelector(".text").textContent = msg.delivered_text || "";
    const status = msg.reason === "interrupted" ? "interrupted" : "cancelled";
    this.finish(node, status, CANCEL_WORDS[msg.reason] || `cancelled (${msg.reason})`);
    node.dataset.reason = msg.reason || "";
    this.announce(`Reply ${CANCEL_WORDS[msg.reason] || "cancelled"}.`);
  }

  failed(msg) {
    const node = this.reply(msg.response_id, msg.turn_order);
    if (typeof msg.delivered_text === "string") {
      node.querySelector(".text").textContent = msg.delivered_text;
    }
    const err = msg.error || {};
    const status = err.status ? ` ${err.status}` : "";
    this.finish(node, "failed", `failed (${err.code || "error"}${status}): ${err.message || ""}`);
    this.announce("The reply failed.");
  }

  finish(node, status, meta) {
    node.dataset.status = status;
    node.querySelector(".meta").textContent = meta;
  }

  announce(text) {
    this.announcer.textContent = text;
  }
}
