"use strict";
// The annotation page's script, served as /page.js: the page holds no inline script, so
// the server's Content-Security-Policy can forbid inline script. Every text from the
// server is inserted with textContent, never as HTML.
//
// Offsets: the server counts code points (Python string indices), JavaScript strings
// count UTF-16 units. The page works in UTF-16 units and converts where it meets the API:
// `toUnits` for the spans it receives, `codePointCounts` for the edits it sends.
//
// A correction is kept as "pieces" that partition the model's answer: each piece is a
// range [a, b) of the answer and the text that now stands for it (changed or not). Each
// selection the annotator replaces or deletes is one edit of the pieces, so the spans
// sent with a submission are exactly what the annotator changed. Only a free edit (E)
// uses the server's diff, and only for what that free edit changed.
//
// An item may come with an AI labeler's proposal (`item.proposal`): the page pre-fills it
// (its spans make the pieces, so its changes are highlighted as the annotator's are),
// marks it as the AI's, and A submits it unchanged as the annotator's own annotation.

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
// Scripts written without spaces between words: one character is one word there.
const NO_SPACES = "\\p{sc=Han}\\p{sc=Hiragana}\\p{sc=Katakana}\\p{sc=Thai}\\p{sc=Lao}" +
                  "\\p{sc=Khmer}\\p{sc=Myanmar}";
// Tokens the text is rendered in; marks and joined emoji stay with their character.
const TOKEN_RE = new RegExp(
    `\\s+|[${NO_SPACES}]\\p{M}*|(?:(?![${NO_SPACES}])[\\p{L}\\p{M}\\p{N}_])+` +
    "|[^](?:\\p{M}|\\u200d[^]|[\\u{1F3FB}-\\u{1F3FF}])*", "gu");
const DRAFT_PREFIX = "rlhfv-draft\n";
const DRAFT_DAYS = 30;
const MAX_UNDO = 200, MAX_DRAFT_UNDO = 30, MAX_HISTORY = 1000;

const state = {
  annotator: "", item: null, pieces: [], working: "", baseline: "", undo: [],
  submissionId: null, busy: false, zoom: 1, spans: {rejected: [], chosen: []},
  selection: null, imageReady: false, revising: null, freeBase: null, freeRequest: 0,
};

function newId() {  // crypto.randomUUID needs a secure context; this works over plain http
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function status(message, isError) {
  $("status").textContent = message || "";
  $("status").className = isError ? "error" : "";
}

async function api(path, body) {
  const headers = {"Content-Type": "application/json"};
  if (token) headers["X-Annotate-Token"] = token;
  const response = await fetch(path, body === undefined ? {headers} :
      {method: "POST", headers, body: JSON.stringify(body)});
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = Array.isArray(data.detail)
        ? data.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ")
        : data.detail;
    throw new Error(detail || `HTTP ${response.status}`);
  }
  return data;
}

function showProgress(p) {
  if (!p) return;
  $("progress").textContent =
      `you: ${p.yours} · done: ${p.done} / ${p.items} · open for you: ${p.open_for_you}`;
}

// ------------------------------------------------------------------ offsets

/** counts[u]: how many code points text.slice(0, u) holds (UTF-16 offset -> server's). */
function codePointCounts(text) {
  const counts = new Uint32Array(text.length + 1);
  for (let u = 0; u < text.length; u++) {
    const secondHalf = u > 0 && (text.charCodeAt(u) & 0xfc00) === 0xdc00 &&
                       (text.charCodeAt(u - 1) & 0xfc00) === 0xd800;
    counts[u + 1] = counts[u] + (secondHalf ? 0 : 1);
  }
  return counts;
}

/** The server's code point spans of `text` as UTF-16 spans. */
function toUnits(text, spans) {
  const offsets = [0];
  for (const ch of text) offsets.push(offsets[offsets.length - 1] + ch.length);
  return spans.map(([s, e]) => [offsets[s], offsets[e]]);
}

// ------------------------------------------------------------------ pieces

function initialPieces(answer) {
  return answer ? [{a: 0, b: answer.length, text: answer, changed: false}] : [];
}

function textOf(pieces) {
  return pieces.map((p) => p.text).join("");
}

/** Pieces with their `changed` flags right, empty unchanged ones dropped and neighbours
 * of one kind merged. */
function normalized(pieces, original) {
  let current = pieces;
  for (;;) {
    const out = [];
    for (const p of current) {
      const changed = p.text !== original.slice(p.a, p.b);
      if (!changed && !p.text) continue;
      const last = out[out.length - 1];
      if (last && last.changed === changed) {
        out[out.length - 1] = {a: last.a, b: p.b, text: last.text + p.text, changed};
      } else {
        out.push({a: p.a, b: p.b, text: p.text, changed});
      }
    }
    // Two changes merged into one may give the answer's own text back.
    if (out.every((p) => p.changed === (p.text !== original.slice(p.a, p.b)))) return out;
    current = out;
  }
}

/** The pieces after replacing working[s, e) with `replacement`. A change touching an
 * earlier change becomes one change with it. */
function applyEdit(pieces, original, s, e, replacement) {
  const starts = [];
  let at = 0;
  for (const p of pieces) { starts.push(at); at += p.text.length; }
  const hit = [];
  pieces.forEach((p, k) => {
    const ps = starts[k], pe = ps + p.text.length;
    if (p.changed ? ps <= e && pe >= s : ps < e && pe > s) hit.push(k);
  });
  if (!hit.length) {  // an insertion between two pieces
    let k = starts.findIndex((ps) => ps >= e);
    if (k < 0) k = pieces.length;
    const where = k < pieces.length ? pieces[k].a : original.length;
    return normalized([...pieces.slice(0, k), {a: where, b: where, text: replacement},
                       ...pieces.slice(k)], original);
  }
  const k1 = hit[0], k2 = hit[hit.length - 1];
  const first = pieces[k1], last = pieces[k2];
  const out = pieces.slice(0, k1);
  let a, b, text = replacement, tail = null;
  if (first.changed) {
    a = first.a;
    text = first.text.slice(0, s - starts[k1]) + text;
  } else {
    a = first.a + (s - starts[k1]);
    if (a > first.a) out.push({a: first.a, b: a, text: first.text.slice(0, a - first.a)});
  }
  if (last.changed) {
    b = last.b;
    text += last.text.slice(e - starts[k2]);
  } else {
    b = last.a + (e - starts[k2]);
    if (b < last.b) tail = {a: b, b: last.b, text: last.text.slice(b - last.a)};
  }
  out.push({a, b, text});
  if (tail) out.push(tail);
  out.push(...pieces.slice(k2 + 1));
  return normalized(out, original);
}

function trimmedSpan(text, s, e) {
  while (s < e && /\s/.test(text[s])) s++;
  while (e > s && /\s/.test(text[e - 1])) e--;
  return s < e ? [s, e] : null;
}

function mergedSpans(spans, text) {  // spans apart by whitespace only are one phrase
  const out = [];
  for (const [s, e] of spans) {
    const last = out[out.length - 1];
    if (last && !text.slice(last[1], s).trim()) last[1] = e;
    else out.push([s, e]);
  }
  return out;
}

/** UTF-16 spans of the changes, on both sides, as the server stores them: without
 * whitespace at their edges, whitespace-only changes left out. */
function spansOf(pieces, original) {
  const working = textOf(pieces), rejected = [], chosen = [];
  let at = 0;
  for (const p of pieces) {
    const end = at + p.text.length;
    if (p.changed) {
      const r = trimmedSpan(original, p.a, p.b), c = trimmedSpan(working, at, end);
      if ((r ? original.slice(...r) : "") !== (c ? working.slice(...c) : "")) {
        if (r) rejected.push(r);
        if (c) chosen.push(c);
      }
    }
    at = end;
  }
  return {rejected: mergedSpans(rejected, original), chosen: mergedSpans(chosen, working)};
}

/** The edits for /api/submit, in code points (the server checks and stores them). */
function editsOf(pieces, original) {
  const counts = codePointCounts(original), workingCounts = codePointCounts(textOf(pieces));
  const edits = [];
  let at = 0;
  for (const p of pieces) {
    const end = at + p.text.length;
    if (p.changed) {
      edits.push({rejected: [counts[p.a], counts[p.b]],
                  chosen: [workingCounts[at], workingCounts[end]]});
    }
    at = end;
  }
  return edits;
}

/** Pieces from stored (or diffed) UTF-16 spans. Outside the spans both texts hold the
 * same non-space characters in the same order; those anchor the pieces, and whatever
 * differs between two anchors is one change. Null if the spans do not fit the texts. */
function piecesFromSpans(original, corrected, rejected, chosen) {
  const anchors = (text, spans) => {
    const marked = new Uint8Array(text.length);
    for (const [s, e] of spans) marked.fill(1, s, e);
    const out = [];
    for (let i = 0; i < text.length; i++) if (!marked[i] && !/\s/.test(text[i])) out.push(i);
    return out;
  };
  const inA = anchors(original, rejected), inB = anchors(corrected, chosen);
  if (inA.length !== inB.length || inA.some((i, k) => original[i] !== corrected[inB[k]])) {
    return null;
  }
  const pieces = [];
  let a = 0, b = 0;
  for (let k = 0; k <= inA.length; k++) {
    const endA = k < inA.length ? inA[k] : original.length;
    const endB = k < inB.length ? inB[k] : corrected.length;
    pieces.push({a, b: endA, text: corrected.slice(b, endB)});
    if (k < inA.length) {
      pieces.push({a: endA, b: endA + 1, text: corrected[endB]});
      a = endA + 1;
      b = endB + 1;
    }
  }
  return normalized(pieces, original);
}

// ------------------------------------------------------------------ text rendering

function appendTokens(parent, text) {
  for (const match of text.matchAll(TOKEN_RE)) {
    const piece = document.createElement("span");
    piece.textContent = match[0];
    parent.appendChild(piece);
  }
}

/** `text` as word-sized spans; each span of `spans` (UTF-16) wrapped in one `cls` span. */
function renderText(element, text, spans, cls) {
  element.replaceChildren();
  let at = 0;
  for (const [s, e] of spans) {
    appendTokens(element, text.slice(at, s));
    const marked = document.createElement("span");
    marked.className = cls;
    appendTokens(marked, text.slice(s, e));
    element.appendChild(marked);
    at = e;
  }
  appendTokens(element, text.slice(at));
}

/** The text the item's AI proposal stands for (its correction, or the answer for "no
 * hallucination"), or null without a proposal. */
function proposalText(item) {
  const p = item.proposal;
  if (!p) return null;
  return p.verdict === "corrected" ? p.corrected : item.answer;
}

/** Whether the corrected answer on screen is the AI proposal as it came. */
function untouchedProposal() {
  return state.item !== null && currentText() === proposalText(state.item);
}

function showProposal() {
  const p = state.item.proposal, untouched = untouchedProposal();
  $("proposal").hidden = $("accept").hidden = !p;
  $("working").classList.toggle("proposal", Boolean(p) && untouched);
  if (!p) return;
  $("proposalBy").textContent = `AI proposal by ${p.annotator}`;
  $("proposalNote").textContent = !untouched
      ? "(you changed it: S submits your version, U undoes your changes)"
      : p.verdict === "corrected"
      ? "(pre-filled below, its corrections highlighted): A accepts it as yours, or edit it"
      : "(no hallucination): A accepts that as yours, or correct the answer";
}

function render() {
  if (!state.item) return;
  showProposal();
  // Pieces of another text (a free edit's diff still on its way) mark nothing.
  state.spans = state.pieces && textOf(state.pieces) === state.working
      ? spansOf(state.pieces, state.item.answer) : {rejected: [], chosen: []};
  renderText($("original"), state.item.answer, state.spans.rejected, "struck");
  renderText($("working"), state.working, state.spans.chosen, "added");
}

// ------------------------------------------------------------------ drafts

function draftKey(itemId) {
  return `${DRAFT_PREFIX}${state.annotator}\n${itemId}`;
}

/** The text on screen: the free-edit box's while it is open. */
function currentText() {
  return $("freeEdit").hidden ? state.working : $("freeEdit").value;
}

function dirty() {
  return state.item !== null && currentText() !== state.baseline;
}

/** Keeps the item's work in this browser until it is submitted (reload, Start, B). */
function saveDraft() {
  if (!state.item) return;
  const key = draftKey(state.item.id);
  try {
    if (!dirty() && !state.undo.length) {
      localStorage.removeItem(key);
      return;
    }
    localStorage.setItem(key, JSON.stringify({
      answer: state.item.answer, working: currentText(), pieces: state.pieces,
      freeBase: $("freeEdit").hidden ? null : state.freeBase,
      undo: state.undo.slice(-MAX_DRAFT_UNDO), saved: Date.now()}));
  } catch (e) {
    status("This browser refused to keep a draft (storage full?): submit soon.", true);
  }
}

function readDraft(item) {
  try {
    const draft = JSON.parse(localStorage.getItem(draftKey(item.id)));
    if (draft && draft.answer === item.answer && typeof draft.working === "string") return draft;
  } catch (e) { /* a damaged draft is no draft */ }
  return null;
}

function forgetDraft(itemId) {
  localStorage.removeItem(draftKey(itemId));
}

function pruneDrafts() {
  const oldest = Date.now() - DRAFT_DAYS * 86400e3;
  for (const key of Object.keys(localStorage)) {
    if (!key.startsWith(DRAFT_PREFIX)) continue;
    try {
      if (!(JSON.parse(localStorage.getItem(key)).saved > oldest)) localStorage.removeItem(key);
    } catch (e) { localStorage.removeItem(key); }
  }
}

// The items this annotator submitted from this browser, the last submitted last (B, F).
function historyKey() {
  return `rlhfv-history\n${state.annotator}`;
}

function readHistory() {
  try {
    const history = JSON.parse(localStorage.getItem(historyKey()));
    if (Array.isArray(history)) return history.filter((id) => typeof id === "string");
  } catch (e) { /* none */ }
  return [];
}

function remember(itemId) {
  const history = readHistory().filter((id) => id !== itemId);
  history.push(itemId);
  try {
    localStorage.setItem(historyKey(), JSON.stringify(history.slice(-MAX_HISTORY)));
  } catch (e) { /* B then reaches fewer items */ }
}

// ------------------------------------------------------------------ editing

function setPieces(pieces) {
  const working = textOf(pieces);
  if (working === state.working && state.pieces) return;
  state.undo.push({pieces: state.pieces, working: state.working});
  if (state.undo.length > MAX_UNDO) state.undo.shift();
  state.pieces = pieces;
  state.working = working;
  render();
  saveDraft();
}

/** The pieces to edit; when the free edit's diff failed, one change for the whole text. */
function editablePieces() {
  if (state.pieces) return state.pieces;
  return normalized([{a: 0, b: state.item.answer.length, text: state.working}],
                    state.item.answer);
}

/** Rebuilds the pieces of the text on screen: `base` (pieces and text before a free
 * edit) with the server's diff of that free edit applied. */
async function recompose(base) {
  const request = ++state.freeRequest, item = state.item, text = currentText();
  state.pieces = null;
  try {
    const d = await api("/api/spans", {original: base.working, corrected: text});
    if (request !== state.freeRequest || state.item !== item) return;
    if (currentText() !== text) return;  // typed on since: the next diff is on its way
    const changes = piecesFromSpans(base.working, text, toUnits(base.working, d.rejected_spans),
                                    toUnits(text, d.chosen_spans));
    if (changes) {
      // Right to left, so that each change's offsets still hold when it is applied.
      const pieces = changes.filter((p) => p.changed).reverse().reduce(
          (acc, p) => applyEdit(acc, item.answer, p.a, p.b, p.text), base.pieces);
      state.pieces = textOf(pieces) === text ? pieces : null;
    }
  } catch (e) {
    if (request === state.freeRequest) status(e.message, true);
  }
  if (request === state.freeRequest && state.item === item) {
    render();
    saveDraft();
  }
}

// ------------------------------------------------------------------ selection → correction

function offsetIn(container, node, offset) {
  const range = document.createRange();
  range.selectNodeContents(container);
  range.setEnd(node, offset);
  return range.toString().length;
}

function pointAt(container, offset) {
  const walker = document.createTreeWalker(container, NodeFilter.SHOW_TEXT);
  let node, last = null;
  while ((node = walker.nextNode())) {
    if (offset <= node.length) return [node, offset];
    offset -= node.length;
    last = node;
  }
  return last ? [last, last.length] : [container, 0];
}

function placeCaret(offset) {
  const [node, at] = pointAt($("working"), offset);
  window.getSelection().collapse(node, at);
}

function hideFix() {
  state.selection = null;
  $("fixBox").hidden = true;
}

/** Shows the correction box for the selection in the corrected answer (mouse or keys). */
function checkSelection() {
  if (!state.item || !$("freeEdit").hidden || document.activeElement === $("fix")) return;
  const selection = window.getSelection();
  const container = $("working");
  if (!selection.rangeCount) return;
  const range = selection.getRangeAt(0);
  if (!container.contains(range.startContainer) || !container.contains(range.endContainer)) return;
  let start = offsetIn(container, range.startContainer, range.startOffset);
  let end = offsetIn(container, range.endContainer, range.endOffset);
  while (start < end && /\s/.test(state.working[start])) start++;
  while (end > start && /\s/.test(state.working[end - 1])) end--;
  if (start === end) { hideFix(); return; }
  // The box shows the selection; the focus stays on the text, so that shift-click and
  // Shift+arrows still extend it. Enter (or a click into the box) starts the correction.
  state.selection = [start, end];
  $("fixFrom").textContent = state.working.slice(start, end);
  $("fix").value = state.working.slice(start, end);
  $("fixBox").hidden = false;
}

function startFix() {
  if (!state.selection) { checkSelection(); }
  if (!state.selection) { status("Select a span of the corrected answer first.", true); return; }
  $("fix").focus();
  $("fix").select();
}

/** What a deletion of text[s, e) removes: with the space before it when a space or
 * punctuation follows (at a line's start: the spaces after it), and with a comma,
 * semicolon or colon before it when punctuation follows ("behind the car, next to a
 * dog." -> "behind the car."). */
function deletionRange(text, s, e) {
  let before = s;
  while (before > 0 && /[ \t]/.test(text[before - 1])) before--;
  if (before < s && (e === text.length || /[\s.,;:!?)\]]/.test(text[e]))) {
    s = before;
  } else if (s === 0 || text[s - 1] === "\n") {
    while (e < text.length && /[ \t]/.test(text[e])) e++;
  }
  if (s > 0 && /[,;:]/.test(text[s - 1]) && (e === text.length || /[.,;:!?]/.test(text[e]))) {
    s--;
  }
  return [s, e];
}

function correct(replacement) {
  const [start, end] = state.selection;
  const [s, e] = replacement ? [start, end] : deletionRange(state.working, start, end);
  closeFix();
  setPieces(applyEdit(editablePieces(), state.item.answer, s, e, replacement));
  placeCaret(s + replacement.length);
}

function applyFix() {
  if (state.selection) correct($("fix").value.trim());
}

function deleteSelection() {
  checkSelection();
  if (state.selection) correct("");
}

function closeFix() {
  hideFix();
  window.getSelection().removeAllRanges();
  $("working").focus();
}

// ------------------------------------------------------------------ image

function updateButtons() {
  document.querySelectorAll(".actions button").forEach((b) => b.disabled = state.busy);
  // Judging needs the image: submit, "no hallucination" and accept wait until it loads.
  if (!state.imageReady) $("submit").disabled = $("clean").disabled = $("accept").disabled = true;
}

function loadImage() {
  const image = $("image"), item = state.item;
  const url = item.image_url + (token ? `?token=${encodeURIComponent(token)}` : "");
  state.imageReady = false;
  $("imageProblem").hidden = true;
  updateButtons();
  image.onload = image.onerror = null;
  image.removeAttribute("src");
  image.hidden = false;
  image.onload = () => {
    state.imageReady = true;
    updateButtons();
    zoom(1);
  };
  image.onerror = () => imageFailed(item, url);
  image.src = url;
}

async function imageFailed(item, url) {
  let reason = "The browser cannot display the file.";
  try {
    const response = await fetch(url);
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      reason = `The server refused it: ${typeof data.detail === "string" ? data.detail
                                          : `HTTP ${response.status}`}.`;
    }
  } catch (e) {
    reason = "The server cannot be reached.";
  }
  if (state.item !== item || state.imageReady) return;
  $("image").hidden = true;
  $("imageProblemText").textContent = reason;
  $("imageProblem").hidden = false;
  updateButtons();
}

/** Zooms to `level` (1: the whole image), keeping the image point under (x, y) there:
 * the cursor for the wheel, the viewport's centre for keys and buttons. */
function zoom(level, x, y) {
  const image = $("image"), viewport = $("viewport");
  if (!image.naturalWidth) return;
  const box = viewport.getBoundingClientRect();
  if (x === undefined) {
    x = box.left + viewport.clientWidth / 2;
    y = box.top + viewport.clientHeight / 2;
  }
  const before = image.getBoundingClientRect();
  const clamp = (v) => Math.min(1, Math.max(0, v));
  const fx = before.width ? clamp((x - before.left) / before.width) : 0.5;
  const fy = before.height ? clamp((y - before.top) / before.height) : 0.5;
  state.zoom = Math.min(8, Math.max(1, level));
  const fit = Math.min(viewport.clientWidth / image.naturalWidth,
                       viewport.clientHeight / image.naturalHeight);
  image.style.width = `${image.naturalWidth * fit * state.zoom}px`;
  image.style.height = `${image.naturalHeight * fit * state.zoom}px`;
  viewport.classList.toggle("fit", state.zoom === 1);
  const after = image.getBoundingClientRect();
  viewport.scrollLeft += after.left + fx * after.width - x;
  viewport.scrollTop += after.top + fy * after.height - y;
  $("zoomLevel").textContent = `${Math.round(state.zoom * 100)}%`;
}

// ------------------------------------------------------------------ items

/** Shows `item`: its draft if this browser holds one, else `annotation` (a revision), the
 * item's AI proposal or the model's answer. */
function showItem(item, annotation, revising) {
  const source = annotation || item.proposal;  // one's own annotation comes first
  const stored = source && source.verdict === "corrected" && source.corrected !== null
      ? source : null;
  state.item = item;
  state.revising = revising === undefined ? null : revising;
  state.baseline = stored ? stored.corrected : item.answer;
  state.working = state.baseline;
  state.pieces = stored
      ? piecesFromSpans(item.answer, stored.corrected, toUnits(item.answer, stored.rejected_spans),
                        toUnits(stored.corrected, stored.chosen_spans))
      : initialPieces(item.answer);
  state.undo = [];
  state.freeBase = null;
  state.freeRequest++;
  state.submissionId = newId();
  $("freeEdit").hidden = true;
  const draft = readDraft(item);
  let base = state.pieces ? null : {pieces: initialPieces(item.answer), working: item.answer};
  if (draft) {
    const pieces = Array.isArray(draft.pieces) ? draft.pieces : null;
    state.working = draft.working;
    state.pieces = pieces && textOf(pieces) === draft.working ? pieces : null;
    state.undo = Array.isArray(draft.undo) ? draft.undo : [];
    base = state.pieces ? null : (draft.freeBase ||
                                  {pieces: initialPieces(item.answer), working: item.answer});
  }
  closeFix();
  $("prompt").textContent = item.prompt;
  $("workspace").hidden = false;
  $("empty").hidden = true;
  loadImage();
  render();
  if (base) recompose(base);
  if (draft) status("Your draft of this item is back.");
}

async function loadNext() {
  const data = await api("/api/next", {annotator: state.annotator});
  showProgress(data.progress);
  state.revising = null;
  if (data.item === null) {
    state.item = null;
    $("image").removeAttribute("src");
    $("workspace").hidden = true;
    $("empty").hidden = false;
    return;
  }
  showItem(data.item);
}

/** A: the AI proposal, unchanged, becomes the annotator's own annotation. */
function accept() {
  if (!state.item.proposal) { status("This item has no AI proposal.", true); return; }
  if (!untouchedProposal()) {
    status("The corrected answer is no longer the AI proposal: submit (S) it as yours, " +
           "or undo (U) your changes to accept the proposal.", true);
    return;
  }
  submit(state.item.proposal.verdict, true);
}

async function submit(verdict, accepting) {
  if (!state.item || state.busy) return;
  if (!$("freeEdit").hidden) await leaveFreeEdit();
  if (verdict !== "unclear" && !state.imageReady) {
    status("The image has not loaded: judge the answer once you can see it, or skip (K).",
           true);
    return;
  }
  if (verdict === "corrected" && state.working === state.item.answer) {
    status("Nothing is corrected yet. Press N if the answer has no hallucination.", true);
    return;
  }
  // N over an untouched AI correction overrules it: the annotator made no change there.
  if (verdict === "no_hallucination" && state.working !== state.item.answer &&
      !untouchedProposal()) {
    status("You corrected this answer: undo (U) the corrections first, or submit (S).", true);
    return;
  }
  state.busy = true;
  updateButtons();
  const item = state.item;
  let data;
  try {
    const body = {
      annotator: state.annotator, item_id: item.id, verdict,
      corrected: verdict === "corrected" ? state.working : null,
      lease_token: item.lease_token || "", submission_id: state.submissionId};
    if (verdict === "corrected" && state.pieces) body.edits = editsOf(state.pieces, item.answer);
    data = await api("/api/submit", body);
  } catch (e) {
    status(`Not saved: ${e.message}. Press the key again to retry.`, true);
    state.busy = false;
    updateButtons();
    return;
  }
  forgetDraft(item.id);
  remember(item.id);
  const saved = (accepting ? "AI proposal accepted as yours." :
                 {corrected: "Correction saved.", no_hallucination: "Saved: no hallucination.",
                  unclear: "Skipped as unclear."}[verdict]) +
                (data.lease_lost && item.lease_token
                 ? " (Your lease had expired; it is saved all the same.)" : "");
  showProgress(data.progress);
  try {
    await loadNext();
    status(saved);
  } catch (e) {  // the item on screen is saved: it is no draft any more
    state.item = null;
    $("workspace").hidden = true;
    status(`${saved} The next item did not load (${e.message}): press Start to try again.`,
           true);
  } finally {
    state.busy = false;
    updateButtons();
  }
}

/** Shows the item `history[index]` with this annotator's annotation, to revise it. */
async function revise(history, index) {
  try {
    const data = await api(`/api/annotation?annotator=${encodeURIComponent(state.annotator)}` +
                           `&item_id=${encodeURIComponent(history[index])}`);
    showItem(data.item, data.annotation, index);
    status(`Revising the item you submitted ${history.length - index} back: submit again ` +
           "to replace your annotation; B goes further back, F forward.");
  } catch (e) { status(e.message, true); }
}

async function back() {
  if (state.busy) return;
  const history = readHistory();
  const index = (state.revising === null ? history.length : state.revising) - 1;
  if (index < 0) { status("No earlier item to revise.", true); return; }
  await revise(history, index);
}

async function forward() {
  if (state.busy) return;
  if (state.revising === null) {
    status("This is the item in progress: nothing after it.", true);
    return;
  }
  const history = readHistory();
  if (state.revising + 1 < history.length) {
    await revise(history, state.revising + 1);
  } else {
    try { await loadNext(); status(""); } catch (e) { status(e.message, true); }
  }
}

async function undo() {
  if (!$("freeEdit").hidden) await leaveFreeEdit();
  if (!state.undo.length) { status("Nothing to undo.", true); return; }
  const previous = state.undo.pop();
  state.freeRequest++;  // a diff still on its way is for the text undone
  state.pieces = previous.pieces;
  state.working = previous.working;
  render();
  if (!state.pieces) {
    recompose({pieces: initialPieces(state.item.answer), working: state.item.answer});
  }
  saveDraft();
}

// ------------------------------------------------------------------ free edit

let editTimer = null;
function enterFreeEdit() {
  closeFix();
  state.freeBase = {pieces: editablePieces(), working: state.working};
  $("freeEdit").value = state.working;
  $("freeEdit").hidden = false;
  $("freeEdit").focus();
}

async function leaveFreeEdit() {
  if ($("freeEdit").hidden) return;
  clearTimeout(editTimer);
  const base = state.freeBase, text = $("freeEdit").value;
  $("freeEdit").hidden = true;
  state.freeBase = null;
  if (text !== base.working) {
    state.undo.push(base);
    state.working = text;
    await recompose(base);
  } else {
    state.freeRequest++;
    state.pieces = base.pieces;
    state.working = text;
    render();
    saveDraft();
  }
  $("working").focus();
}

$("freeEdit").addEventListener("input", () => {
  state.working = $("freeEdit").value;
  saveDraft();
  clearTimeout(editTimer);
  editTimer = setTimeout(() => state.freeBase && recompose(state.freeBase), 250);
});

// ------------------------------------------------------------------ wiring

async function start() {
  const name = $("name").value.trim();
  if (!name) { status("Type your name first.", true); $("name").focus(); return; }
  $("name").blur();
  if (state.item && name === state.annotator) {  // already at work: keep it as it is
    $("working").focus();
    return;
  }
  state.annotator = name;
  localStorage.setItem("annotator", name);
  pruneDrafts();
  try { await loadNext(); status(""); } catch (e) { status(e.message, true); }
}

$("start").addEventListener("click", start);
$("name").addEventListener("keydown", (e) => { if (e.key === "Enter") start(); });
$("name").value = localStorage.getItem("annotator") || "";
document.addEventListener("selectionchange", checkSelection);
// The corrected answer takes the caret and selections, never typed text.
for (const event of ["beforeinput", "paste", "cut", "drop"]) {
  $("working").addEventListener(event, (e) => e.preventDefault());
}
$("working").addEventListener("input", render);  // a change that could not be refused
$("fix").addEventListener("keydown", (e) => {
  if (e.key === "Enter") { e.preventDefault(); applyFix(); }
  if (e.key === "Escape") { e.preventDefault(); closeFix(); }
  e.stopPropagation();
});
$("submit").addEventListener("click", () => submit("corrected"));
$("clean").addEventListener("click", () => submit("no_hallucination"));
$("unclear").addEventListener("click", () => submit("unclear"));
$("accept").addEventListener("click", () => state.item && accept());
$("undo").addEventListener("click", undo);
$("edit").addEventListener("click", () => $("freeEdit").hidden ? enterFreeEdit() : leaveFreeEdit());
$("back").addEventListener("click", back);
$("forward").addEventListener("click", forward);
$("imageRetry").addEventListener("click", () => state.item && loadImage());
$("zoomIn").addEventListener("click", () => zoom(state.zoom * 1.25));
$("zoomOut").addEventListener("click", () => zoom(state.zoom * 0.8));
$("zoomFit").addEventListener("click", () => zoom(1));
$("viewport").addEventListener("wheel", (e) => {
  e.preventDefault();
  zoom(state.zoom * (e.deltaY < 0 ? 1.25 : 0.8), e.clientX, e.clientY);
}, {passive: false});
window.addEventListener("resize", () => zoom(state.zoom));
window.addEventListener("beforeunload", (e) => {
  saveDraft();
  if (dirty()) {  // the draft survives, but the annotator may not expect to come back
    e.preventDefault();
    e.returnValue = "";
  }
});

document.addEventListener("keydown", (e) => {
  if (e.target === $("freeEdit")) {
    if (e.key === "Escape") { e.preventDefault(); leaveFreeEdit(); }
    return;
  }
  if (e.target.matches("input, textarea") || e.altKey || e.metaKey) return;
  if (!state.item) {  // nothing on screen: B still reaches the items submitted
    if (e.key.toLowerCase() === "b" && state.annotator && !e.ctrlKey) {
      e.preventDefault();
      back();
    }
    return;
  }
  if (e.ctrlKey) {
    if (e.key === "z" || e.key === "Z") { e.preventDefault(); undo(); }
    return;  // Ctrl+arrows, Ctrl+C, ...: the browser's own
  }
  if (e.target === $("working") && (e.key === "Delete" || e.key === "Backspace")) {
    e.preventDefault();
    deleteSelection();
    return;
  }
  const actions = {
    s: () => submit("corrected"), n: () => submit("no_hallucination"),
    k: () => submit("unclear"), a: accept, u: undo, e: enterFreeEdit, b: back, f: forward,
    "+": () => zoom(state.zoom * 1.25), "=": () => zoom(state.zoom * 1.25),
    "-": () => zoom(state.zoom * 0.8), "0": () => zoom(1),
    Enter: startFix, Escape: () => {
      hideFix();
      if (window.getSelection().rangeCount) window.getSelection().collapseToEnd();
    },
  };
  const action = actions[e.key.length === 1 ? e.key.toLowerCase() : e.key];
  if (action) { e.preventDefault(); action(); }
});
