// The kmlp playground: sample names, look at next-character probabilities and the embeddings.
// Plain JavaScript, no build step, nothing loaded from elsewhere; it talks to /playground/*.
"use strict";

const $ = (id) => document.getElementById(id);
const VOWELS = new Set("aeiouy");
const GROUP_COLORS = { vowel: "#d62728", consonant: "#1f77b4", boundary: "#7f7f7f" };
let info = null;
let inspectCalls = 0;
let inspectTimer = null;  // a keystroke waiting to be inspected

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const text = await response.text();
  let data;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new Error(`the server answered ${response.status}: ${text.slice(0, 200)}`);
  }
  if (!response.ok) throw new Error(data.error || `the server answered ${response.status}`);
  return data;
}

function showError(id, error) {
  const p = $(id);
  p.textContent = error ? String(error.message || error) : "";
  p.hidden = !error;
}

function element(tag, attributes = {}, text = undefined) {
  const svg = ["svg", "circle", "text", "line", "g", "title"].includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag)
                   : document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function group(token) {
  return token === "." ? "boundary" : VOWELS.has(token.toLowerCase()) ? "vowel" : "consonant";
}

function markLabel(mark) {
  return mark === "dev" || mark === "test" ? "dev/test" : mark;
}

// --- the model ---------------------------------------------------------------------------------

function describeModel() {
  const loss = info.dev_loss == null ? "" : `, dev loss ${info.dev_loss.toFixed(4)}`;
  $("model-info").textContent =
    `model '${info.model}' version ${info.version} from ${info.run}: ` +
    `${info.params.toLocaleString("en")} parameters${loss}, context of ${info.block_size} ` +
    `characters, ${info.tokens.length} tokens (${info.tokens.join(" ")})`;
  const d = info.defaults;
  $("count").value = d.count;
  $("count").max = info.limits.max_count;
  $("temperature").value = d.temperature;
  $("top-k").value = d.top_k;
  $("top-k").max = info.tokens.length;
  $("seed").value = d.seed;
  $("max-len").value = d.max_len;
  $("max-len").max = info.limits.max_len;
  $("prefix").maxLength = info.limits.max_chars;
  $("name").maxLength = info.limits.max_chars;
  if (info.marks_unavailable) {
    $("marks-note").textContent = `Train / dev-test / new marks are unavailable: ${info.marks_unavailable}`;
    $("marks-note").hidden = false;
  }
}

// --- generate ----------------------------------------------------------------------------------

async function generate() {
  const request = {
    count: Number($("count").value), temperature: Number($("temperature").value),
    top_k: Number($("top-k").value), prefix: $("prefix").value, seed: Number($("seed").value),
    max_len: Number($("max-len").value),
  };
  const list = $("names");
  list.dataset.state = "busy";
  $("generate").disabled = true;
  try {
    const result = await api("/playground/generate", request);
    showError("generate-error", null);
    list.replaceChildren(...result.names.map(({ name, found_in }) => {
      const item = element("li", { "data-name": name, "data-found-in": found_in ?? "" });
      const button = element("button", { type: "button", class: "name", title: "see what the model expects at each step" },
                             name || "(empty)");
      button.addEventListener("click", () => { $("name").value = name; inspect(); });
      item.append(button);
      if (found_in) item.append(element("span", { class: `mark ${found_in}` }, markLabel(found_in)));
      return item;
    }));
    $("names-summary").textContent = result.new == null ? `seed ${result.seed}` :
      `${result.new} of ${result.names.length} new (not in the training data); seed ${result.seed}`;
  } catch (error) {
    showError("generate-error", error);
  } finally {
    $("generate").disabled = false;
    list.dataset.state = "done";
  }
}

// --- inspect -----------------------------------------------------------------------------------

async function inspect() {
  const text = $("name").value;
  const call = ++inspectCalls;
  const map = $("heatmap");
  map.dataset.state = "busy";
  try {
    const result = await api("/playground/inspect", { text });
    if (call !== inspectCalls) return;  // a later keystroke has already asked again
    showError("inspect-error", null);
    drawHeatmap(result);
    const found = result.found_in ? `; ${result.found_in === "new" ? "not in the data" :
      `in the ${markLabel(result.found_in)} split`}` : "";
    $("inspect-summary").textContent =
      `log-likelihood ${result.log_likelihood.toFixed(3)} nats, ` +
      `${result.per_char.toFixed(3)} per character (the loss on this name)${found}`;
    highlightEmbedding(text + ".");
  } catch (error) {
    if (call !== inspectCalls) return;
    showError("inspect-error", error);
    map.replaceChildren();
    $("inspect-summary").textContent = "";
  } finally {
    if (call === inspectCalls && inspectTimer === null) {
      map.dataset.text = text;
      map.dataset.state = "done";
    }
  }
}

function inspectSoon() {  // after typing pauses, so a fast typist does not queue a call per key
  $("heatmap").dataset.state = "busy";
  clearTimeout(inspectTimer);
  inspectTimer = setTimeout(() => { inspectTimer = null; inspect(); }, 120);
}

function drawHeatmap(result) {
  const table = element("table");
  const head = element("tr");
  head.append(element("th", { class: "context" }, "context"), element("th", {}, "next"),
              element("th", { class: "p" }, "p(next)"));
  for (const token of info.tokens) head.append(element("th", { class: "token" }, token));
  const thead = element("thead");
  thead.append(head);
  table.append(thead);
  const body = element("tbody");
  for (const row of result.rows) {
    const tr = element("tr", { "data-next": row.next, "data-p": row.p });
    tr.append(element("td", { class: "context" }, row.context), element("td", { class: "next" }, row.next));
    const p = element("td", { class: "p" });
    const bar = element("span", { class: "bar" });
    bar.style.width = `${Math.max(1, Math.round(row.p * 60))}px`;
    p.append(bar, element("span", {}, row.p.toFixed(3)));
    tr.append(p);
    row.probs.forEach((prob, i) => {
      const token = info.tokens[i];
      const cell = element("td", {
        class: token === row.next ? "cell actual" : "cell", "data-p": prob,
        title: `P(${token} after "${row.context}") = ${prob.toFixed(4)}`,
      });
      cell.style.backgroundColor = `rgba(31, 119, 180, ${Math.sqrt(prob).toFixed(3)})`;
      if (prob >= 0.1) cell.textContent = Math.round(prob * 100);
      if (prob >= 0.3) cell.classList.add("strong");
      tr.append(cell);
    });
    body.append(tr);
  }
  table.append(body);
  $("heatmap").replaceChildren(table);
}

// --- embedding ---------------------------------------------------------------------------------

function drawEmbedding() {
  const svg = $("embedding");
  const { points, xlabel, ylabel, dims } = info.embedding;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const span = Math.max(x1 - x0, y1 - y0) || 1;  // one scale for both axes: distances stay true
  const size = 420, margin = 30, scale = (size - 2 * margin) / span;
  const px = (x) => margin + (x - (x0 + x1) / 2) * scale + (size - 2 * margin) / 2;
  const py = (y) => size - margin - ((y - (y0 + y1) / 2) * scale + (size - 2 * margin) / 2);
  svg.replaceChildren();
  svg.append(element("line", { x1: 0, y1: size - 12, x2: size, y2: size - 12, class: "axis" }));
  svg.append(element("text", { x: size / 2, y: size - 2, class: "axis-label" }, xlabel));
  svg.append(element("text", { x: 10, y: size / 2, class: "axis-label",
                               transform: `rotate(-90 10 ${size / 2})` }, ylabel));
  const order = info.tokens.map((t, i) => i).sort((a, b) => (info.tokens[a] === ".") - (info.tokens[b] === "."));
  for (const i of order) {
    const token = info.tokens[i];
    const g = element("g", { class: "point", "data-token": token });
    g.append(element("title", {}, `${token}: (${points[i][0].toFixed(3)}, ${points[i][1].toFixed(3)})`));
    g.append(element("circle", { cx: px(points[i][0]), cy: py(points[i][1]), r: 11, fill: GROUP_COLORS[group(token)] }));
    g.append(element("text", { x: px(points[i][0]), y: py(points[i][1]), class: "point-label" }, token));
    svg.append(g);
  }
  $("embedding-caption").textContent =
    `${dims} dimensions${dims > 2 ? ", first two principal components" : ""}. ` +
    "Red: vowels (a e i o u y), blue: consonants, grey: the boundary. " +
    "The characters of the inspected name are outlined.";
}

function highlightEmbedding(text) {
  const chars = new Set(text);
  for (const g of $("embedding").querySelectorAll(".point")) {
    g.classList.toggle("in-name", chars.has(g.dataset.token));
  }
}

// --- the REST API ------------------------------------------------------------------------------

function apiExample() {
  const base = `${location.origin}/v1/models/${info.model}`;
  const lines = [`curl ${base}`, `curl ${base}/metadata`];
  if (info.signatures.includes("generate")) {
    lines.push(`curl -d '{"signature_name": "generate", "inputs": {"count": 3, "seed": 7, "temperature": 1.0}}' ${base}:predict`);
  }
  if (info.signatures.includes("score")) {
    lines.push(`curl -d '{"signature_name": "score", "instances": ["emma", "zyxq"]}' ${base}:predict`);
  }
  $("api-example").textContent = lines.join("\n");
}

// --- start -------------------------------------------------------------------------------------

async function start() {
  info = await api("/playground/info");
  describeModel();
  drawEmbedding();
  apiExample();
  $("generate-form").addEventListener("submit", (event) => { event.preventDefault(); generate(); });
  $("temperature").addEventListener("input", () => {
    $("temperature-value").textContent = Number($("temperature").value).toFixed(2);
  });
  $("temperature").dispatchEvent(new Event("input"));
  $("new-seed").addEventListener("click", () => {
    $("seed").value = Math.floor(Math.random() * 2 ** 31);
    generate();
  });
  $("name").addEventListener("input", inspectSoon);
  await Promise.all([generate(), inspect()]);
  document.body.dataset.ready = "true";
}

start().catch((error) => {
  $("model-info").textContent = `The playground could not start: ${error.message || error}`;
  $("model-info").classList.add("error");
});
