// The web console in headless Chromium, driven by playwright-core against a
// running control plane. tests/web_ui.rs starts the stack and a psql session
// and runs this script, one phase at a time:
//
//   node e2e.mjs inbox      sign in, find the held statement in the inbox, approve it
//   node e2e.mjs sessions   find the psql session, open it, check its statements,
//                           the masked value and the integrity badge, download its timeline
//   node e2e.mjs sso-refused   single sign-on through the stand-in identity provider, with
//                              the state tampered with, then the code verifier: an error each
//                              time, and not signed in
//   node e2e.mjs sso-denied    the user refuses at the provider: its error shown, not signed in
//   node e2e.mjs sso           sign in with the provider, find the held statement, approve it
//
// Environment:
//   AIRLOCK_URL              the control plane's REST address (http://127.0.0.1:PORT)
//   AIRLOCK_TOKEN            a token to sign in with (the tenant's admin token)
//   AIRLOCK_E2E_STATEMENT    the held statement's text
//   AIRLOCK_E2E_SUBJECT      the principal that ran the psql session
//   AIRLOCK_E2E_MASKED       a value the masking hides: it must not appear anywhere
//   AIRLOCK_E2E_SESSION      the psql session's id (sessions phase)
//   AIRLOCK_E2E_IDP          the identity provider's issuer URL (sso phases)
//   AIRLOCK_E2E_SCREENSHOTS  where screenshots go (one PNG per page checked)
//   AIRLOCK_CHROMIUM         the browser (default /usr/bin/chromium, Debian's package)
//
// Chromium flags: playwright-core starts Chromium in its new headless mode
// (`headless: true` passes `--headless`, which is the new mode since Chromium
// 132) and without its sandbox (`chromiumSandbox` defaults to false and passes
// `--no-sandbox`), which a container running as root needs: Chromium refuses
// to run as root with the sandbox on. No other flag is needed.
//
// Exits 0 when every check passed; otherwise prints what failed and exits 1.

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};
const BASE = env("AIRLOCK_URL").replace(/\/$/, "");
const SHOTS = env("AIRLOCK_E2E_SCREENSHOTS");
const CHROMIUM = env("AIRLOCK_CHROMIUM", "/usr/bin/chromium");
// Long enough for a loaded machine; every wait ends as soon as its element shows.
const TIMEOUT_MS = 30_000;

mkdirSync(SHOTS, { recursive: true });

const phase = process.argv[2];
const phases = { inbox, sessions, "sso-refused": ssoRefused, "sso-denied": ssoDenied, sso };
if (!phases[phase]) {
  console.error(`usage: node e2e.mjs ${Object.keys(phases).join("|")}`);
  process.exit(2);
}

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
const problems = [];
// What the page logged and where it went, printed when a check fails.
const consoleLog = [];
const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
context.setDefaultTimeout(TIMEOUT_MS);
const page = await context.newPage();
try {
  // A CSP violation or an uncaught error fails the run: the page must work
  // under its own Content-Security-Policy.
  page.on("pageerror", (e) => problems.push(`uncaught error: ${e.message}`));
  page.on("framenavigated", (f) => {
    if (f === page.mainFrame()) consoleLog.push(`navigated to ${f.url()}`);
  });
  page.on("console", (m) => {
    consoleLog.push(`${m.type()}: ${m.text()}`);
    if (m.type() === "error" && /Content Security Policy|Refused to/i.test(m.text())) {
      problems.push(`console: ${m.text()}`);
    }
  });
  await phases[phase](page);
  assert.deepEqual(problems, [], "the console ran without CSP violations or uncaught errors");
  console.log(`e2e ${phase}: ok`);
} catch (err) {
  console.error(`e2e ${phase}: FAILED: ${err.stack ?? err}`);
  for (const p of problems) console.error(`  ${p}`);
  for (const line of consoleLog) console.error(`  page: ${line}`);
  // What the page showed: its address and the error banner, if any.
  console.error(`  at ${page.url()}`);
  const banner = await page.locator("#banner").textContent({ timeout: 1000 }).catch(() => "");
  if (banner) console.error(`  the page says: ${banner}`);
  await shot(page, `${phase}-failed`).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

async function signIn(page) {
  await page.goto(`${BASE}/`);
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await page.getByLabel("Access token").fill(env("AIRLOCK_TOKEN"));
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await page.getByRole("heading", { name: "Inbox" }).waitFor();
}

async function inbox(page) {
  await signIn(page);
  await approveHeld(page, "checked in the console");

  // The configuration page still shows the connection the session used.
  await page.getByRole("link", { name: "Configuration" }).click();
  await page.getByRole("heading", { name: "Connections" }).waitFor();
  await page.locator("table").first().getByRole("cell", { name: "pg", exact: true }).waitFor();
  await page.locator("pre", { hasText: "ddl-needs-approval" }).waitFor();
  await shot(page, "config");
}

/** The held statement's card in the inbox, checked and approved with `comment`. */
async function approveHeld(page, comment, shots = "inbox") {
  const statement = env("AIRLOCK_E2E_STATEMENT");
  const subject = env("AIRLOCK_E2E_SUBJECT");

  // The held statement's card: what is held, by whom, on which connection, under which rule.
  const card = page.locator("article.review").filter({ has: page.locator("pre", { hasText: statement }) });
  await card.waitFor();
  assert.equal(await card.getByRole("heading").first().textContent(), "Held statement");
  assert.equal((await card.locator("pre").textContent()).trim(), statement);
  const facts = await dl(card);
  assert.equal(facts["Requested by"], subject);
  assert.equal(facts.Connection, "pg");
  assert.equal(facts.Rule, "ddl-needs-approval");
  assert.match(facts["Requested at"], /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
  assert.equal(facts.Approvals, "0 of 1");
  await shot(page, shots);

  await card.getByLabel("Comment (optional)").fill(comment);
  await card.getByRole("button", { name: "Approve" }).click();
  await page.getByRole("status").filter({ hasText: "Approved the held statement" }).waitFor();
  await card.waitFor({ state: "detached" });
  await shot(page, `${shots}-approved`);
}

/** The login page, with its single sign-on button (named after the provider's host). */
async function ssoButton(page) {
  const host = new URL(env("AIRLOCK_E2E_IDP")).host;
  await page.goto(`${BASE}/`);
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  const button = page.getByRole("button", { name: `Sign in with ${host}` });
  await button.waitFor();
  return button;
}

/** After a failed single sign-on: the login page with `message`, no token, no query left. */
async function notSignedIn(page, message) {
  await page.locator("#login-error").filter({ hasText: message }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("airlock.token")), null);
  assert.equal(new URL(page.url()).search, "", "the provider's answer is taken off the address");
  assert.ok(await page.locator("#nav").isHidden(), "the navigation shows only when signed in");
}

async function ssoRefused(page) {
  const idp = new URL(env("AIRLOCK_E2E_IDP"));
  const at = (path) => (url) => url.origin === idp.origin && url.pathname === path;
  const [authorizeUrl, tokenUrl] = [at("/authorize"), at("/token")];
  await ssoButton(page);
  await shot(page, "login-sso");

  // The state the browser carries to the provider is changed on the way
  // (an answer forged for another sign-in): the provider sends it back
  // changed, and the console refuses the answer without trading the code.
  let tokenCalls = 0;
  await page.route(tokenUrl, (route) => {
    tokenCalls += 1;
    return route.continue();
  });
  await page.route(authorizeUrl, (route) => {
    const url = new URL(route.request().url());
    url.searchParams.set("state", "forged-state");
    return route.continue({ url: url.href });
  });
  await (await ssoButton(page)).click();
  await notSignedIn(page, "state mismatch");
  assert.equal(tokenCalls, 0, "no code is traded for a forged answer");
  await shot(page, "login-sso-state-mismatch");
  await page.unroute(authorizeUrl);

  // The code verifier is changed on its way to the token endpoint: the
  // provider refuses the code.
  await page.unroute(tokenUrl);
  await page.route(tokenUrl, (route) => {
    tokenCalls += 1;
    const form = new URLSearchParams(route.request().postData() ?? "");
    form.set("code_verifier", "x".repeat(64));
    return route.continue({ postData: form.toString() });
  });
  await (await ssoButton(page)).click();
  await notSignedIn(page, "invalid_grant");
  assert.equal(tokenCalls, 1);
}

async function ssoDenied(page) {
  await (await ssoButton(page)).click();
  await notSignedIn(page, "refused the sign-in: access_denied");
}

async function sso(page) {
  await (await ssoButton(page)).click();
  await page.getByRole("heading", { name: "Inbox" }).waitFor();
  assert.equal(new URL(page.url()).search, "", "the code is taken off the address");
  const token = await page.evaluate(() => sessionStorage.getItem("airlock.token"));
  assert.equal(token?.split(".").length, 3, "the ID token is the bearer token");
  await page.locator("#nav").waitFor();
  await approveHeld(page, "approved after single sign-on", "sso-inbox");
}

async function sessions(page) {
  const statement = env("AIRLOCK_E2E_STATEMENT");
  const subject = env("AIRLOCK_E2E_SUBJECT");
  const masked = env("AIRLOCK_E2E_MASKED");
  await signIn(page);

  // The list, filtered to the agent: its one psql session, completed.
  await page.getByRole("link", { name: "Sessions" }).click();
  await page.getByLabel("Principal").fill(subject);
  await page.getByLabel("Outcome").selectOption("completed");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForURL(/principal=/);
  const rows = page.locator("#sessions tbody tr");
  await rows.first().waitFor();
  await page.getByRole("status").filter({ hasText: "1 session." }).waitFor();
  const cells = await rows.first().locator("td").allTextContents();
  assert.equal(cells[1], subject);
  assert.equal(cells[2], "pg");
  assert.match(cells[3], /^airlock_/, "the role the session ran as on the target");
  assert.equal(cells[7], "completed");
  assert.equal(await rows.first().getAttribute("data-session-id"), env("AIRLOCK_E2E_SESSION"));
  await shot(page, "sessions");

  await rows.first().getByRole("link").click();
  await page.getByRole("heading", { name: `Session of ${subject}` }).waitFor();
  await page.locator("#integrity .badge", { hasText: "Recording intact" }).waitFor();

  const timeline = page.locator("#timeline > li");
  // The masked read: the rule's placeholder in the result, the value nowhere on the page.
  const read = timeline.filter({ has: page.locator("pre", { hasText: "SELECT id, email FROM contacts" }) });
  await read.waitFor();
  await read.locator("table.result").getByRole("cell", { name: "[redacted]" }).waitFor();
  // The held statement, approved, and the statement after it that shows it ran.
  const held = timeline.filter({ has: page.locator("pre", { hasText: statement }) });
  await held.waitFor();
  const heldMeta = await held.locator(".meta").textContent();
  assert.match(heldMeta, /review/);
  assert.match(heldMeta, /ddl-needs-approval/);
  assert.match(heldMeta, /approved by api-key:admin/);
  await timeline.filter({ has: page.locator("pre", { hasText: "SELECT count(*) FROM notes" }) }).waitFor();
  const text = await page.locator("body").innerText();
  assert.ok(!text.includes(masked), `the page shows the masked value ${masked}`);
  await shot(page, "session");

  // The timeline as JSON lines, downloaded with the bearer token.
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("button", { name: "Download timeline (JSON lines)" }).click(),
  ]);
  const file = join(SHOTS, "timeline.jsonl");
  await download.saveAs(file);
  const lines = (await readFile(file, "utf8")).trim().split("\n").map((l) => JSON.parse(l));
  assert.ok(lines.some((e) => e.statement === statement), "the download holds the held statement");
  assert.ok(!JSON.stringify(lines).includes(masked), "the download never holds the masked value");
}

/** A card's facts (dt → dd text). */
async function dl(card) {
  const out = {};
  for (const pair of await card.locator("dl > div").all()) {
    out[await pair.locator("dt").textContent()] = (await pair.locator("dd").textContent()).trim();
  }
  return out;
}
