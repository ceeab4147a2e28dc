// The sign-in experience in Debian's Chromium (headless), driven by playwright-core, with
// axe-core injected into every page. Run by tests/browser.rs against a real stack:
//
//   node e2e.mjs flows|server_error|branding
//
// Environment: NODE_MODULES (where playwright-core and axe-core are installed), CHROMIUM,
// AUTH and APP (the portal and the protected app, through nginx), CDN_PORT (the test
// app's own port, serving /brand/… under any name), MAIL_DIR (the SMTP sink's folder),
// README (for the JavaScript snippets it shows); optionally SCREENSHOTS, a folder for a
// picture of every page checked.
//
// Prints one JSON report on stdout: {ok, flows: {name: {ok, error?, …}}, axe: {page:
// {light: [violations], dark: [violations]}}, console: [unexpected messages]}; progress
// goes to stderr. Exit status 0 only when every flow passed.

import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (tests/browser.rs sets it)`);
  return v;
}

const require = createRequire(path.join(env("NODE_MODULES"), "resolve-from-here.js"));
const { chromium } = require("playwright-core");
const AXE_SOURCE = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const AUTH = env("AUTH");
const APP = env("APP");
const CDN_PORT = env("CDN_PORT");
const MAIL_DIR = env("MAIL_DIR");
const APP_NAME = "Browser Test App";
// A folder to save a screenshot of every checked page in, per theme (optional).
const SCREENSHOTS = process.env.SCREENSHOTS || "";
const AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"];
// The stylesheet's page background, per theme: proof that it loaded under the page's CSP.
const BACKGROUND = { light: "rgb(243, 244, 246)", dark: "rgb(18, 18, 20)" };

const report = { ok: false, flows: {}, axe: {}, console: [] };
const log = (...a) => console.error("[e2e]", ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function expect(cond, what) {
  if (!cond) throw new Error(`expected: ${what}`);
}

// ------------------------------------------------------------------ mail

function quotedPrintable(s) {
  s = s.replace(/=\r?\n/g, "");
  const bytes = [];
  for (let i = 0; i < s.length; i++) {
    const hex = s.slice(i + 1, i + 3);
    if (s[i] === "=" && /^[0-9A-Fa-f]{2}$/.test(hex)) {
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else {
      bytes.push(...Buffer.from(s[i], "utf8"));
    }
  }
  return Buffer.from(bytes).toString("utf8");
}

function mimeParts(raw) {
  const head = raw.slice(0, raw.indexOf("\r\n\r\n")).replace(/\r\n[ \t]/g, " ");
  const boundary = /boundary="?([^";\r\n]+)"?/i.exec(head)[1];
  return raw
    .split(`--${boundary}`)
    .slice(1)
    .filter((p) => !p.startsWith("--"))
    .map((p) => {
      p = p.replace(/^\r\n/, "");
      const at = p.indexOf("\r\n\r\n");
      const h = p.slice(0, at).toLowerCase();
      let body = p.slice(at + 4).replace(/\r\n$/, "");
      if (h.includes("quoted-printable")) body = quotedPrintable(body);
      else if (h.includes("base64")) body = Buffer.from(body.replace(/\s+/g, ""), "base64").toString("utf8");
      return { type: (/content-type:\s*([^;\r\n]+)/.exec(h) || [])[1], body };
    });
}

const taken = new Set();

/** The next sign-in email to `addr` (waits up to 20 s): its parts, link and code. */
async function mailFor(addr) {
  const until = Date.now() + 20000;
  for (;;) {
    const names = fs.readdirSync(MAIL_DIR).filter((f) => f.endsWith(".eml")).sort();
    for (const f of names) {
      if (taken.has(f)) continue;
      const envelope = fs.readFileSync(path.join(MAIL_DIR, f.replace(/\.eml$/, ".env")), "utf8");
      if (!envelope.toLowerCase().includes(`rcpt to ${addr.toLowerCase()}`)) continue;
      taken.add(f);
      const parts = mimeParts(fs.readFileSync(path.join(MAIL_DIR, f), "utf8"));
      const text = parts.find((p) => p.type === "text/plain").body;
      const html = parts.find((p) => p.type === "text/html").body;
      return {
        text,
        html,
        link: /(https?:\/\/\S+\/sign_in\/[A-Za-z0-9_-]+)/.exec(text)[1],
        code: /waiting: (\d{6})/.exec(text)[1],
      };
    }
    if (Date.now() > until) throw new Error(`no mail for ${addr} within 20 s`);
    await sleep(100);
  }
}

// ------------------------------------------------------------------ pages

async function newContext(browser, options = {}) {
  const ctx = await browser.newContext(options);
  ctx.setDefaultTimeout(20000);
  ctx.setDefaultNavigationTimeout(20000);
  ctx.__scheme = options.colorScheme || "light";
  ctx.__js = options.javaScriptEnabled !== false;
  return ctx;
}

/** A page whose console errors and uncaught exceptions go into the report. */
async function newPage(ctx, expected = () => false) {
  const page = await ctx.newPage();
  page.on("console", (m) => {
    const text = m.text();
    // A 4xx page is what some steps ask for; Chrome logs its status as an error.
    if (m.type() !== "error" || /Failed to load resource: the server responded/.test(text)) return;
    // axe fetches cross-origin stylesheets to read them (the 403 page's, on the app's
    // host); the page's connect-src refuses that, as it should. Not the page's doing.
    if (page.__axe && /^Connecting to '.*\.css.*' violates .*connect-src/s.test(text)) return;
    if (!expected(text)) report.console.push({ url: page.url(), text });
  });
  page.on("pageerror", (e) => report.console.push({ url: page.url(), text: `uncaught: ${e.message}` }));
  return page;
}

/** Click or press, and wait for the navigation it starts; returns its response. */
async function navigate(page, action) {
  const [response] = await Promise.all([page.waitForNavigation(), action()]);
  return response;
}

async function axe(page) {
  page.__axe = true;
  try {
    return await runAxe(page);
  } finally {
    page.__axe = false;
  }
}

async function runAxe(page) {
  if (!(await page.evaluate(() => typeof window.axe !== "undefined"))) {
    // Evaluated through the DevTools protocol: the page's CSP (script-src 'self') does
    // not apply, and the page itself is not changed to allow it.
    await page.evaluate(AXE_SOURCE);
  }
  return page.evaluate(async (tags) => {
    const r = await window.axe.run(document, {
      runOnly: { type: "tag", values: tags },
      resultTypes: ["violations"],
    });
    return r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.slice(0, 5).map((n) => `${n.target.join(" ")}: ${n.failureSummary}`),
    }));
  }, AXE_TAGS);
}

/**
 * The checks every authbase page gets: language, a title that says where you are (and
 * whose sign-in it is), one h1, the stylesheet applied (under the page's CSP), no
 * sideways scrolling, and axe-core in the light and the dark theme.
 */
async function checkPage(page, name, title) {
  const facts = await page.evaluate(() => ({
    lang: document.documentElement.lang,
    title: document.title,
    h1: document.querySelectorAll("h1").length,
    overflow: document.documentElement.scrollWidth - window.innerWidth,
  }));
  expect(facts.lang === "en", `${name}: <html lang="en"> (got ${facts.lang})`);
  expect(facts.title === `${title} · ${APP_NAME}`, `${name}: title "${title} · ${APP_NAME}" (got "${facts.title}")`);
  expect(facts.h1 === 1, `${name}: one h1 (got ${facts.h1})`);
  expect(facts.overflow <= 0, `${name}: no sideways scrolling (${facts.overflow}px too wide)`);
  if (!page.context().__js) return; // axe needs JavaScript; such pages are checked elsewhere
  report.axe[name] = {};
  for (const scheme of ["light", "dark"]) {
    await page.emulateMedia({ colorScheme: scheme });
    const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    expect(bg === BACKGROUND[scheme], `${name} (${scheme}): the stylesheet applies (background ${bg})`);
    if (SCREENSHOTS) await page.screenshot({ path: path.join(SCREENSHOTS, `${name}-${scheme}.png`), fullPage: true });
    report.axe[name][scheme] = await axe(page);
    log(`axe ${name} (${scheme}): ${report.axe[name][scheme].length} violation(s)`);
  }
  await page.emulateMedia({ colorScheme: page.context().__scheme });
}

async function flow(name, fn) {
  const started = Date.now();
  const result = { ok: false };
  report.flows[name] = result;
  try {
    await fn(result);
    result.ok = true;
  } catch (e) {
    result.error = String(e && e.stack ? e.stack : e);
  }
  result.ms = Date.now() - started;
  log(`${result.ok ? "ok  " : "FAIL"} ${name} (${result.ms} ms)${result.ok ? "" : `: ${result.error}`}`);
  return result.ok;
}

async function appShows(page, email, url) {
  if (url) expect(page.url() === url, `on ${url} (got ${page.url()})`);
  const shown = await page.textContent("#email");
  expect(shown === email, `the app shows ${email} (got "${shown}")`);
}

/** The sign-in page puts the focus in the address field by itself (autofocus). */
async function focusOnEmail(page) {
  await page.waitForFunction(() => document.activeElement && document.activeElement.id === "email", null, {
    timeout: 5000,
  });
}

function onPortal(page) {
  return page.url().startsWith(`${AUTH}/?rd=`);
}

// ------------------------------------------------------------------ README snippets

/**
 * The JavaScript block of README.md's "HTTP API" section, split at its `// ` comments:
 * {prelude, "sign in": code, "who am I": code, "sign out": code}, pointed at AUTH.
 */
function readmeSnippets() {
  const readme = fs.readFileSync(env("README"), "utf8");
  const marker = "The original library's JavaScript keeps working";
  const at = readme.indexOf(marker);
  expect(at >= 0, `README.md still says "${marker}"`);
  const start = readme.indexOf("```js\n", at) + "```js\n".length;
  const block = readme.slice(start, readme.indexOf("```", start)).replaceAll("https://auth.example.com", AUTH);
  const out = { prelude: "" };
  let key = "prelude";
  for (const line of block.split("\n")) {
    const m = /^\/\/ ([a-zA-Z ]+?)(?:[:(].*)?$/.exec(line);
    if (m) {
      key = m[1].trim();
      out[key] = "";
    } else {
      out[key] += `${line}\n`;
    }
  }
  for (const k of ["sign in", "who am I", "sign out"]) expect(out[k], `README snippet "// ${k}"`);
  return out;
}

/** Run one README snippet in `page` (a page on the app's host), with `form` defined. */
async function snippet(page, snippets, name) {
  const body = `${snippets.prelude}
const form = document.querySelector("form");
${snippets[name]}
return {
  started: typeof started === "undefined" ? undefined : started,
  me: typeof me === "undefined" ? undefined : me,
};`;
  return page.evaluate(async (src) => {
    const AsyncFunction = (async () => {}).constructor;
    return new AsyncFunction(src)();
  }, body);
}

// ------------------------------------------------------------------ scenarios

async function flows(browser) {
  const a = await newPage(await newContext(browser));
  const target = `${APP}/deep/page?x=1&y=two`;
  let aliceMail;

  await flow("redirect_then_link", async () => {
    await a.goto(target);
    expect(onPortal(a), `the app sends a visitor to the sign-in page (at ${a.url()})`);
    expect(new URL(a.url()).searchParams.get("rd") === target, "rd carries the page asked for");
    await checkPage(a, "sign_in", "Sign in");
    const h1 = await a.textContent("h1");
    expect(h1 === `Sign in to ${APP_NAME}`, `the page is branded with webapp_name (h1 "${h1}")`);
    await focusOnEmail(a);
    await a.keyboard.type("alice@example.com");
    await navigate(a, () => a.keyboard.press("Enter"));
    await checkPage(a, "check_email", "Check your email");
    // A wrong code: the same page, saying so, with the field marked.
    await a.fill("#code", "000000");
    const wrong = await navigate(a, () => a.click("form[action='/auth/code'] button"));
    expect(wrong.status() === 400, `a wrong code answers 400 (got ${wrong.status()})`);
    expect((await a.textContent("[role=alert]")).includes("not right"), "the error is announced");
    expect((await a.getAttribute("#code", "aria-invalid")) === "true", "the field is marked invalid");
    await checkPage(a, "check_email_wrong_code", "Check your email");
    aliceMail = await mailFor("alice@example.com");
    await a.goto(aliceMail.link);
    await appShows(a, "alice@example.com", target);
  });

  await flow("keyboard_and_focus", async () => {
    const k = await newPage(await newContext(browser));
    await k.goto(`${AUTH}/`);
    await focusOnEmail(k);
    await k.keyboard.type("kim@example.com");
    await navigate(k, () => k.keyboard.press("Enter"));
    const ring = async () =>
      k.evaluate(() => {
        const e = document.activeElement;
        const s = getComputedStyle(e);
        return { id: e.id, tag: e.tagName, style: s.outlineStyle, width: parseFloat(s.outlineWidth) };
      });
    await k.keyboard.press("Tab");
    let f = await ring();
    expect(f.id === "code", `Tab reaches the code field first (got ${f.tag}#${f.id})`);
    expect(f.style !== "none" && f.width >= 2, `a visible focus ring on the field (${f.style} ${f.width}px)`);
    await k.keyboard.press("Tab");
    f = await ring();
    expect(f.tag === "BUTTON" && f.style !== "none" && f.width >= 2, `then the button, with a ring (${f.tag} ${f.style})`);
    const mail = await mailFor("kim@example.com");
    await k.keyboard.press("Shift+Tab");
    await k.keyboard.type(mail.code);
    await navigate(k, () => k.keyboard.press("Enter"));
    expect(k.url() === `${APP}/`, `signed in by keyboard alone, landing on redirect_url (${k.url()})`);
    // Signing out from the portal's "signed in" page.
    await k.goto(`${AUTH}/`);
    expect((await k.title()).startsWith("Signed in"), `the portal says so (${await k.title()})`);
    await navigate(k, () => k.click("button:has-text('Sign out')"));
    expect((await k.title()).startsWith("Signed out"), `signed out (${await k.title()})`);
    await k.goto(`${APP}/`);
    expect(onPortal(k), "and the app sends to sign in again");
    await k.context().close();
  });

  await flow("signed_in_page", async () => {
    await a.goto(`${AUTH}/`);
    await checkPage(a, "signed_in", "Signed in");
    expect((await a.textContent("main")).includes("alice@example.com"), "it says who is signed in");
    const cont = await a.getAttribute("a.button", "href");
    expect(cont === `${APP}/`, `Continue goes to redirect_url (${cont})`);
  });

  await flow("forbidden_page", async () => {
    const r = await a.goto(`${APP}/admin/panel`);
    expect(r.status() === 403, `a path only boss@ may open answers 403 (got ${r.status()})`);
    await checkPage(a, "forbidden", `No access to ${new URL(APP).hostname}`);
    expect((await a.textContent("main")).includes("alice@example.com"), "it says who is signed in");
  });

  await flow("used_and_unknown_links", async () => {
    let r = await a.goto(aliceMail.link);
    expect(r.status() === 410, `a used link answers 410 (got ${r.status()})`);
    await checkPage(a, "link_used", "This link was already used");
    r = await a.goto(`${AUTH}/no/such/page`);
    expect(r.status() === 404, `404 (got ${r.status()})`);
    await checkPage(a, "not_found", "Page not found");
  });

  await flow("sign_out", async () => {
    // From the 403 page, on the app's host: a form posting to the portal.
    const r = await a.goto(`${APP}/admin/panel`);
    expect(r.status() === 403, "the 403 page again");
    await navigate(a, () => a.click("button:has-text('Sign out')"));
    expect(a.url() === `${AUTH}/sign_out`, `the portal answers the sign-out (${a.url()})`);
    await checkPage(a, "signed_out", "Signed out");
    await a.goto(target);
    expect(onPortal(a), `signed out on the app too: sent to sign in (at ${a.url()})`);
  });

  await flow("other_device_approval", async () => {
    // The waiting browser: a phone, in the dark theme.
    const phone = await newContext(browser, {
      viewport: { width: 320, height: 640 },
      isMobile: true,
      hasTouch: true,
      colorScheme: "dark",
    });
    const w = await newPage(phone);
    await w.goto(`${APP}/from/phone`);
    expect(onPortal(w), "sent to sign in");
    const narrow = async (what) => {
      const over = await w.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      expect(over <= 0, `${what} fits a 320 px phone (${over}px too wide)`);
    };
    await narrow("the sign-in page");
    await w.fill("#email", "bob@example.com");
    await navigate(w, () => w.tap("button[type=submit]"));
    await narrow("the check-your-email page");
    report.flows.phone_layout = { ok: true };
    const number = await w.getAttribute("[data-match-number]", "data-match-number");
    expect(/^\d{2}$/.test(number), `the waiting page shows a number (${number})`);
    const mail = await mailFor("bob@example.com");

    // The link, opened in another browser (a second context: no shared cookies).
    const other = await newContext(browser);
    const p = await newPage(other);
    await p.goto(mail.link);
    await checkPage(p, "confirm", "Confirm sign-in");
    expect((await p.textContent("h1")).includes("bob@example.com"), "it names the address");
    await p.fill("#match", number);
    await navigate(p, () => p.click("button:has-text('Approve the waiting browser')"));
    await checkPage(p, "approved", "Approved");

    // The waiting tab moves on by itself (wait.js polls GET /auth).
    await w.waitForURL(`${APP}/from/phone`, { timeout: 20000 });
    await appShows(w, "bob@example.com");
    // Approving let the waiting browser in, not this one.
    await p.goto(`${APP}/from/laptop`);
    expect(onPortal(p), "the approving browser is not signed in");
    await other.close();
    await phone.close();
  });

  await flow("code_without_javascript", async () => {
    const n = await newPage(await newContext(browser, { javaScriptEnabled: false }));
    await n.goto(`${APP}/by/code`);
    expect(onPortal(n), "sent to sign in");
    await checkPage(n, "sign_in_no_js", "Sign in");
    await n.fill("#email", "carol@example.com");
    await navigate(n, () => n.click("button[type=submit]"));
    await checkPage(n, "check_email_no_js", "Check your email");
    const mail = await mailFor("carol@example.com");
    await n.fill("#code", mail.code);
    await navigate(n, () => n.click("form[action='/auth/code'] button"));
    await appShows(n, "carol@example.com", `${APP}/by/code`);
    await n.context().close();
  });

  await flow("spa_snippets", async () => {
    const snippets = readmeSnippets();
    const ctx = await newContext(browser);
    const s = await newPage(ctx);
    await s.goto(`${APP}/spa/`);
    expect((await s.title()) === "SPA", "a public page on the app's host");
    await s.fill("#email", "dave@example.com");
    const started = (await snippet(s, snippets, "sign in")).started;
    expect(started && started.status === "check_email", `sign in answers check_email (${JSON.stringify(started)})`);
    expect(/^\d{2}$/.test(started.match_number), "with the match number");
    let me = (await snippet(s, snippets, "who am I")).me;
    expect(me === null, `not signed in before the link is opened (${JSON.stringify(me)})`);
    const mail = await mailFor("dave@example.com");
    const tab = await newPage(ctx);
    await tab.goto(mail.link);
    await appShows(tab, "dave@example.com", `${APP}/`);
    me = (await snippet(s, snippets, "who am I")).me;
    expect(me && me.email_address === "dave@example.com" && Number.isInteger(me.id), `who am I: ${JSON.stringify(me)}`);
    const cookies = await s.evaluate(() => document.cookie);
    expect(!cookies.includes("session_id"), "the session cookie is HttpOnly");
    await snippet(s, snippets, "sign out");
    me = (await snippet(s, snippets, "who am I")).me;
    expect(me === null, `signed out (${JSON.stringify(me)})`);
    await tab.goto(`${APP}/after`);
    expect(onPortal(tab), "signed out on every subdomain");
    await ctx.close();
  });

  await flow("rate_limited", async () => {
    const r = await newPage(await newContext(browser));
    let status = 0;
    for (let i = 0; i < 3; i++) {
      await r.goto(`${AUTH}/`);
      await r.fill("#email", "flood@example.com");
      status = (await navigate(r, () => r.click("button[type=submit]"))).status();
    }
    expect(status === 429, `the third request for one address answers 429 (got ${status})`);
    await checkPage(r, "rate_limited", "Please wait a moment");
    expect(/Try again in \d+ (seconds|minutes)/.test(await r.textContent("main")), "it says how long to wait");
    await r.context().close();
  });

  await flow("email_in_browser", async () => {
    const ctx = await newContext(browser);
    const requested = [];
    await ctx.route("**/*", (route) => {
      requested.push(route.request().url());
      return route.abort();
    });
    const e = await newPage(ctx);
    await e.setContent(aliceMail.html, { waitUntil: "load" });
    expect(requested.length === 0, `the email loads nothing (no tracking): ${requested.join(", ")}`);
    const hrefs = await e.$$eval("a", (as) => as.map((x) => x.href));
    expect(hrefs.length === 2 && hrefs.every((h) => h === aliceMail.link), `every link is the sign-in link: ${hrefs}`);
    const button = await e.locator("a").first().boundingBox();
    expect(button && button.height >= 40 && button.width >= 150, `the link is a big button (${JSON.stringify(button)})`);
    const text = await e.textContent("body");
    expect(text.includes(aliceMail.code), "the code is shown");
    const size = await e.evaluate((code) => {
      const el = [...document.querySelectorAll("p")].find((p) => p.textContent.trim() === code);
      return el ? parseFloat(getComputedStyle(el).fontSize) : 0;
    }, aliceMail.code);
    expect(size >= 28, `the code stands out (${size}px)`);
    expect(/requested .* UTC from Chrome/.test(text), "who asked and when");
    expect(text.includes("Wasn't you?"), "what to do if it wasn't you");
    if (SCREENSHOTS) await e.screenshot({ path: path.join(SCREENSHOTS, "email-light.png"), fullPage: true });
    report.axe.email = { light: await axe(e) };
    await ctx.close();
  });
}

async function serverError(browser) {
  await flow("server_error", async (result) => {
    const p = await newPage(await newContext(browser));
    await p.goto(`${AUTH}/`);
    await p.fill("#email", "erin@example.com");
    // Every writer in authbase waits out SQLite's busy timeout (5 s) in turn before the
    // sign-in gives up: allow for several.
    const [r] = await Promise.all([p.waitForNavigation({ timeout: 90000 }), p.click("button[type=submit]")]);
    expect(r.status() === 503, `a locked database answers 503 (got ${r.status()})`);
    await checkPage(p, "server_error", "Temporarily unavailable");
    result.reference = (await p.textContent("main code")).trim();
    expect(/^[0-9a-f]{12}$/.test(result.reference), `a reference id is shown (${result.reference})`);
  });
}

async function branding(browser) {
  const cdn = `http://cdn.example.com:${CDN_PORT}`;
  const evil = `http://evil.example.com:${CDN_PORT}`;
  await flow("branding", async () => {
    const p = await newPage(await newContext(browser), (text) => text.includes("evil.example.com"));
    await p.goto(`${AUTH}/`);
    const logo = await p.evaluate(() => {
      const img = document.querySelector(".brand img");
      return img && { src: img.src, width: img.naturalWidth, alt: img.getAttribute("alt") };
    });
    expect(logo && logo.src === `${cdn}/brand/logo.svg` && logo.width > 0, `the logo loads (${JSON.stringify(logo)})`);
    expect(logo.alt === "", "the logo is decorative next to the name (alt=\"\")");
    const styled = await p.evaluate(() => ({
      check: getComputedStyle(document.documentElement).getPropertyValue("--brand-check").trim(),
      transform: getComputedStyle(document.querySelector(".brand span")).textTransform,
    }));
    expect(styled.check === "loaded" && styled.transform === "uppercase", `the custom stylesheet applies (${JSON.stringify(styled)})`);
    for (const scheme of ["light", "dark"]) {
      await p.emulateMedia({ colorScheme: scheme });
      const button = await p.evaluate(() => {
        const s = getComputedStyle(document.querySelector("button"));
        return `${s.backgroundColor} / ${s.color}`;
      });
      expect(button === "rgb(255, 204, 0) / rgb(0, 0, 0)", `${scheme}: the accent, with a legible label (${button})`);
    }
    await p.emulateMedia({ colorScheme: "light" });
    await checkPage(p, "branded_sign_in", "Sign in");

    // The policy admits the configured origin only: the same files from another origin
    // are refused by the browser (and never requested: tests/browser.rs counts).
    const blocked = await p.evaluate(async (evilOrigin) => {
      const seen = [];
      document.addEventListener("securitypolicyviolation", (e) => seen.push(e.effectiveDirective));
      const link = document.createElement("link");
      link.rel = "stylesheet";
      link.href = `${evilOrigin}/brand/site.css`;
      document.head.appendChild(link);
      const img = document.createElement("img");
      img.src = `${evilOrigin}/brand/logo.svg`;
      document.body.appendChild(img);
      for (let i = 0; i < 100 && seen.length < 2; i++) await new Promise((r) => setTimeout(r, 50));
      return seen.sort();
    }, evil);
    expect(blocked.join() === "img-src,style-src-elem", `CSP refuses another origin (${blocked})`);

    await p.fill("#email", "frank@example.com");
    await navigate(p, () => p.click("button[type=submit]"));
    await checkPage(p, "branded_check_email", "Check your email");
    await mailFor("frank@example.com");
  });
}

// ------------------------------------------------------------------ main

const SCENARIOS = { flows, server_error: serverError, branding };

async function main() {
  const name = process.argv[2];
  const scenario = SCENARIOS[name];
  if (!scenario) throw new Error(`usage: node e2e.mjs ${Object.keys(SCENARIOS).join("|")}`);
  const browser = await chromium.launch({
    executablePath: env("CHROMIUM"),
    headless: true,
    // The test's host names are this machine; every other name fails to resolve, so
    // the browser (and anything a page tries) reaches nothing else.
    args: ["--host-resolver-rules=MAP *.example.com 127.0.0.1, MAP * ~NOTFOUND"],
  });
  log(`Chromium ${browser.version()}, scenario ${name}`);
  try {
    await scenario(browser);
  } finally {
    await browser.close();
  }
  const failed = Object.entries(report.flows).filter(([, f]) => !f.ok);
  if (report.console.length) log("unexpected console messages:", JSON.stringify(report.console, null, 2));
  report.ok = failed.length === 0 && report.console.length === 0 && Object.keys(report.flows).length > 0;
}

// A hung step must not hang the test: the Rust side also kills the process group.
const watchdog = setTimeout(() => {
  report.error = "e2e.mjs did not finish within 140 s";
  process.stdout.write(`${JSON.stringify(report)}\n`);
  process.exit(3);
}, 140000);

main()
  .catch((e) => {
    report.error = String(e && e.stack ? e.stack : e);
    log(report.error);
  })
  .finally(() => {
    clearTimeout(watchdog);
    process.stdout.write(`${JSON.stringify(report)}\n`);
    process.exit(report.ok ? 0 : 1);
  });
