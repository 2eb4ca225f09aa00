// Every admin page with a large vault and log: answers within a time and a size budget.
// Usage: node pages.mjs ADMIN_URL OPERATOR PASSWORD MAX_MS MAX_KIB
import { launch, check, login } from './common.mjs';

const [adminUrl, operator, password, maxMs, maxKib] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await browser.newPage();
  await login(page, adminUrl, operator, password);
  const paths = ['/', '/requests', '/requests?class=5', '/requests?error=rule_denied&range=3600',
    '/audit', '/audit?action=agent.', '/rules', '/proposals',
    '/vaults', '/vaults/default', '/agents', '/agents?q=agent-99', '/hosts'];
  const measured = [];
  for (const path of paths) {
    const times = [];
    let bytes = 0;
    for (let i = 0; i < 3; i++) {
      const got = await page.evaluate(async (p) => {
        const t0 = performance.now();
        const r = await fetch(p);
        const text = await r.text();
        return { ms: performance.now() - t0, bytes: new TextEncoder().encode(text).length, status: r.status };
      }, path);
      check(got.status === 200, `${path}: ${got.status}`);
      times.push(got.ms);
      bytes = got.bytes;
    }
    times.sort((a, b) => a - b);
    measured.push({ path, ms: Math.round(times[1]), kib: Math.round(bytes / 1024) });
  }
  console.log(JSON.stringify({ measured }));
  const slow = measured.filter((m) => m.ms > Number(maxMs) || m.kib > Number(maxKib));
  check(slow.length === 0, `over budget: ${JSON.stringify(slow)}`);
  console.log(JSON.stringify({ ok: true }));
} finally {
  await browser.close();
}
