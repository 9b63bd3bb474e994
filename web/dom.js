// Building DOM nodes without HTML strings: every piece of data becomes a text
// node or an attribute value, never markup.

/**
 * h("a", { href: "#/x", class: "link", onclick: fn }, "text", child, [more])
 * Props: `class`, `dataset` (object), `on<event>` (functions), the boolean and
 * value properties below (set as properties), anything else as an attribute.
 * Children: strings and numbers become text; null, undefined and false are skipped.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
    } else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (PROPERTIES.has(key)) {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

const PROPERTIES = new Set(["hidden", "disabled", "checked", "value", "selected", "required", "open"]);

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.append(child);
    else el.append(document.createTextNode(String(child)));
  }
}

/** A description list from [term, value] pairs; pairs whose value is empty are left out. */
export function facts(pairs, cls = "facts") {
  const dl = h("dl", { class: cls });
  for (const [term, value] of pairs) {
    if (value === undefined || value === null || value === "") continue;
    dl.append(h("div", {}, h("dt", {}, term), h("dd", {}, value)));
  }
  return dl;
}

/** A coloured label; `tone` picks the colour (see app.css, `.badge-*`). */
export function badge(text, tone) {
  return h("span", { class: `badge badge-${tone}` }, text);
}

/** Resolves after `ms`, or at once when `signal` aborts (the view was left). */
export function pause(ms, signal) {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}
