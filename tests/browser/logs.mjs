// The admin UI's log views in headless Chromium: filters narrow the request log, pages by
// cursor, CSV and JSON export of a filtered view, the audit log's filter, headings that never
// wrap and no horizontal scroll at desktop width (and headings whole on a phone), and live mode
// showing a request sent after the page opened within two seconds.
// Usage: node logs.mjs ADMIN_URL OPERATOR PASSWORD PROXY_URL CA_FILE ARTIFACT_DIR
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { launch, check, shooter, login } from './common.mjs';

const [adminUrl, operator, password, proxyUrl, caFile, artifacts] = process.argv.slice(2);
const shot = shooter(artifacts);
const browser = await launch();
const rows = (page) => page.$$eval('table.log tbody tr', (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent.trim())));
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await login(page, adminUrl, operator, password);

  // The overview is the landing page; its charts show the requests the test sent.
  check(new URL(page.url()).pathname === '/', `landed on the overview, got ${page.url()}`);
  // The summary is made in the background within a few seconds of new rows.
  const chartLabels = () => page.$$eval('figure.chart svg[role=img]', (svgs) => svgs.map((s) => s.getAttribute('aria-label')));
  for (let i = 0; i < 20 && !/: 113 requests/.test((await chartLabels())[0] || ''); i++) {
    await page.waitForTimeout(250);
    await page.reload();
  }
  const labels = await chartLabels();
  const split = await page.$$eval('svg.split', (svgs) => svgs.map((s) => s.getAttribute('aria-label')));
  check(split.length === 1 && /^11[0-6] 2xx\/3xx, 0 4xx/.test(split[0]), `the openai service's split: ${split}`);
  check(labels.length === 2 && labels.every((l) => /: 11[3-9] requests \(11[0-6] 2xx\/3xx, 3 4xx/.test(l)), `charts: ${labels}`);
  check(await page.$$eval('svg rect.c-ok', (r) => r.length) > 0, 'bars are drawn');
  const overview = await page.textContent('main');
  check(overview.includes('openai') && overview.includes('no_service') && overview.includes('other.example.net') && overview.includes('bot'), 'services, error codes, refused hosts and agents');
  await shot(page, 'overview');

  // Pages by cursor: 100 rows, then the older ones.
  await page.goto(`${adminUrl}/requests`);
  const first = await rows(page);
  check(first.length === 100, `a page holds 100 rows, got ${first.length}`);
  await Promise.all([page.waitForNavigation(), page.click('a[rel=next]')]);
  const second = await rows(page);
  check(second.length > 0 && second.length < 100, `the older page, got ${second.length}`);
  check(!second.some((r) => first.some((f) => f.join() === r.join() && r[1].includes('/v1/p'))), 'pages do not overlap');

  // Filters narrow the rows: status class, then error code, then agent.
  await page.goto(`${adminUrl}/requests`);
  await page.selectOption('#f-class', '4');
  await Promise.all([page.waitForNavigation(), page.click('form.filters button')]);
  const refused = await rows(page);
  check(refused.length === 3 && refused.every((r) => r[2] === '403'), `4xx only: ${JSON.stringify(refused)}`);
  await page.fill('#f-error', 'rule_denied');
  await Promise.all([page.waitForNavigation(), page.click('form.filters button')]);
  check((await rows(page)).length === 0, 'no rule_denied rows');
  await page.goto(`${adminUrl}/requests?agent=nobody`);
  check((await rows(page)).length === 0, 'an unknown agent has no rows');
  await page.goto(`${adminUrl}/requests?class=4&error=no_service`);
  await shot(page, 'logs-filtered');

  // Export of the filtered view.
  const csv = await page.evaluate(() => fetch('/requests.csv?class=4').then((r) => r.text()));
  const lines = csv.split('\r\n').filter(Boolean);
  check(lines[0].startsWith('time,vault,agent,method,host,path,status') && lines.length === 4, `csv: ${csv}`);
  const json = await page.evaluate(() => fetch('/requests.json?class=4').then((r) => r.json()));
  check(json.length === 3 && json.every((r) => r.status === 403 && r.error === 'no_service'), `json: ${JSON.stringify(json)}`);

  // The audit log's filter.
  await page.goto(`${adminUrl}/audit?action=agent.&range=3600`);
  const audit = await page.$$eval('table.log tbody tr', (trs) => trs.map((tr) => tr.cells[2].textContent));
  check(audit.length > 0 && audit.every((a) => a.startsWith('agent.')), `audit filter: ${audit}`);

  // Layout: no heading wraps mid-word; no horizontal scroll at desktop width.
  for (const [width, height, name] of [[1280, 900, 'desktop'], [390, 844, 'phone']]) {
    await page.setViewportSize({ width, height });
    for (const path of ['', 'requests', 'audit', 'rules', 'proposals', 'vaults', 'vaults/default', 'agents', 'hosts', 'login']) {
      await page.goto(`${adminUrl}/${path}`);
      // (A heading only for screen readers, `.sr`, is drawn 1px wide on purpose.)
      const wrapped = await page.$$eval('th', (ths) => ths.filter((th) => !th.querySelector('.sr')).filter((th) => {
        const range = document.createRange();
        range.selectNodeContents(th);
        return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size > 1;
      }).map((th) => th.textContent));
      check(wrapped.length === 0, `${path} at ${width}px: headings wrap: ${wrapped}`);
      if (name === 'desktop') {
        const wide = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        check(wide <= 0, `${path} scrolls sideways by ${wide}px at ${width}px`);
      }
      await shot(page, `logs-${(path || 'overview').replace('/', '-')}-${name}`);
    }
  }

  // Accessibility: axe-core in every page (its script needs the page's CSP set aside, so it runs
  // in a context of its own with the same login) reports no serious or critical violation.
  const axePath = createRequire(import.meta.url).resolve('axe-core');
  const audit11y = await browser.newContext({ bypassCSP: true, viewport: { width: 1280, height: 900 },
    storageState: await page.context().storageState() });
  const a11y = await audit11y.newPage();
  const minor = [];
  for (const path of ['', 'requests', 'audit', 'rules', 'proposals', 'vaults', 'vaults/default', 'agents', 'hosts', 'login']) {
    await a11y.goto(`${adminUrl}/${path}`);
    await a11y.addScriptTag({ path: axePath });
    const found = await a11y.evaluate(async () => {
      const r = await axe.run(document, { resultTypes: ['violations'] });
      return { passes: r.passes.length, violations: r.violations.map((v) => ({ id: v.id, impact: v.impact,
        where: v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join(' | ') })) };
    });
    check(found.passes > 10, `axe ran on /${path}`);
    const bad = found.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
    check(bad.length === 0, `/${path}: ${bad.map((v) => `${v.id}: ${v.where}`).join('; ')}`);
    minor.push(...found.violations.map((v) => `/${path} ${v.id} (${v.impact})`));
  }
  await audit11y.close();

  // Live: a request sent after the page opened shows within two seconds.
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.goto(`${adminUrl}/requests?live=1`);
  execFileSync('curl', ['-sS', '-o', '/dev/null', '--proxy', proxyUrl, '--cacert', caFile, 'https://api.openai.com/v1/live-marker']);
  const sent = Date.now();
  await page.waitForFunction(() => document.querySelector('table.log tbody').textContent.includes('/v1/live-marker'), null, { timeout: 5000 });
  const took = Date.now() - sent;
  check(took <= 2000, `the live row took ${took} ms`);
  await shot(page, 'logs-live');
  console.log(JSON.stringify({ ok: true, live_ms: took, a11y_minor: minor }));
} finally {
  await browser.close();
}
