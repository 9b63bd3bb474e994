// How times, durations and sizes read on screen. Times are shown in the
// browser's time zone; the full RFC 3339 value is kept in a <time> element.

import { h } from "./dom.js";

/** A Date from an RFC 3339 string or a number of seconds (or milliseconds) since the epoch. */
export function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  if (typeof value === "number") return new Date(value < 1e12 ? value * 1000 : value);
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? null : d;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** 2024-05-01 14:03:07 */
export function dateTime(value) {
  const d = toDate(value);
  if (!d) return "";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(d)}`;
}

/** 14:03:07.123 */
export function clockMs(value) {
  const d = toDate(value);
  return d ? `${clock(d)}.${pad(d.getMilliseconds(), 3)}` : "";
}

function clock(d) {
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A <time> element showing `text`, with the instant in `datetime` and as a tooltip. */
export function timeEl(value, text = dateTime(value)) {
  const d = toDate(value);
  if (!d) return "";
  return h("time", { datetime: d.toISOString(), title: d.toISOString() }, text);
}

/** 850 ms, 12.5 s, 3 min 20 s, 2 h 5 min */
export function duration(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${Math.round(ms * 10) / 10} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  const rest = (n, unit) => (n ? ` ${n} ${unit}` : "");
  if (m < 60) return `${m} min${rest(Math.floor(s % 60), "s")}`;
  return `${Math.floor(m / 60)} h${rest(m % 60, "min")}`;
}

/** 512 B, 12.3 KiB, 4.0 MiB */
export function bytes(n) {
  if (n === null || n === undefined) return "";
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

/** A value for <input type="datetime-local"> → RFC 3339 in UTC, or "" if empty or invalid. */
export function localInputToIso(value) {
  if (!value) return "";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}
