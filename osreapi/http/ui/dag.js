// The task's steps as an SVG graph: one column per depth, edges from each dependency, nodes
// coloured by state (classes only: the page's policy allows no inline style).
const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 150, NODE_H = 30, GAP_X = 50, GAP_Y = 14, PAD = 10;

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (parent) parent.appendChild(node);
  return node;
}

// depends_on as given; a sequential task's steps each wait for the one before.
export function edgesOf(steps, mode) {
  if (mode === "sequential") return steps.slice(1).map((s, i) => [steps[i].name, s.name]);
  return steps.flatMap((s) => (s.depends_on || []).map((dep) => [dep, s.name]));
}

function depths(steps, edges) {
  const parents = new Map(steps.map((s) => [s.name, []]));
  for (const [from, to] of edges) parents.get(to)?.push(from);
  const depth = new Map();
  const visit = (name, guard = 0) => {
    if (depth.has(name)) return depth.get(name);
    if (guard > steps.length) return 0; // never loops: the server refuses cycles
    const d = Math.max(-1, ...parents.get(name).map((p) => visit(p, guard + 1))) + 1;
    depth.set(name, d);
    return d;
  };
  for (const s of steps) visit(s.name);
  return depth;
}

export function drawDag(container, steps, mode, stateClass, onSelect, selected) {
  const edges = edgesOf(steps, mode);
  const depth = depths(steps, edges);
  const rows = new Map();
  const place = new Map();
  for (const s of steps) {
    const d = depth.get(s.name);
    const row = rows.get(d) || 0;
    rows.set(d, row + 1);
    place.set(s.name, { x: PAD + d * (NODE_W + GAP_X), y: PAD + row * (NODE_H + GAP_Y) });
  }
  const width = PAD * 2 + (Math.max(0, ...depth.values()) + 1) * (NODE_W + GAP_X) - GAP_X;
  const height = PAD * 2 + Math.max(1, ...rows.values()) * (NODE_H + GAP_Y) - GAP_Y;
  const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  const defs = el("defs", {}, svg);
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto" }, defs);
  el("path", { d: "M0,0 L10,5 L0,10 z" }, marker);
  for (const [from, to] of edges) {
    const a = place.get(from), b = place.get(to);
    if (!a || !b) continue;
    el("line", { x1: a.x + NODE_W, y1: a.y + NODE_H / 2, x2: b.x, y2: b.y + NODE_H / 2, "data-edge": `${from}->${to}` }, svg);
  }
  for (const s of steps) {
    const { x, y } = place.get(s.name);
    const g = el("g", { class: `node ${stateClass(s)}${s.step === selected ? " selected" : ""}`, "data-step": s.step }, svg);
    el("rect", { x, y, width: NODE_W, height: NODE_H }, g);
    const label = el("text", { x: x + 8, y: y + NODE_H / 2 }, g);
    label.textContent = s.name.length > 20 ? `${s.name.slice(0, 19)}…` : s.name;
    el("title", {}, g).textContent = `${s.name}: ${s.state}`;
    g.addEventListener("click", () => onSelect(s.step));
  }
  container.replaceChildren(svg);
}
