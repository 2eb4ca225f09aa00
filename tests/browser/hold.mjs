// Approves a held request in the admin UI with headless Chromium: log in, open the held request,
// check what is shown (method, host, path, the rule, a redacted body preview), approve with the
// keyboard (Tab to the button, Enter), and check the confirmation.
// Usage: node hold.mjs ADMIN_URL OPERATOR PASSWORD PROPOSAL_ID ARTIFACT_DIR
import { chromium } from 'playwright-core';

const [adminUrl, operator, password, id, artifacts] = process.argv.slice(2);
const shot = (page, name) => page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: true });
const check = (cond, what) => { if (!cond) throw new Error(`check failed: ${what}`); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(`${adminUrl}/login`);
  await page.fill('#name', operator);
  await page.fill('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  await page.goto(`${adminUrl}/proposals/${id}`);
  const text = await page.textContent('main');
  check(text.includes('Held request'), 'the held request is shown');
  check(text.includes('POST api.openai.com/v1/refunds'), 'method, host and path are shown');
  check(text.includes('refunds-need-a-person'), 'the rule is named');
  check(text.includes('[redacted]') && !text.includes('not-for-the-operator'), 'the body preview is redacted');
  await shot(page, 'hold-proposal');
  const approve = page.locator('button:has-text("Approve")');
  await approve.focus();
  await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);
  check((await page.textContent('main')).includes('Approved'), 'approval confirmed');
  await shot(page, 'hold-approved');
  await page.goto(`${adminUrl}/rules`);
  const rules = await page.textContent('main');
  check(rules.includes('refunds-need-a-person') && rules.includes('no-deletes'), 'the rules page lists the rules');
  await shot(page, 'hold-rules');
  console.log(JSON.stringify({ ok: true }));
} finally {
  await browser.close();
}
