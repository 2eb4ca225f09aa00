// Drives the admin UI in headless Chromium (Debian's /usr/bin/chromium through playwright-core):
// log in, open a proposal, paste the credential, approve, check the audit log, and check that the
// UI refuses to be framed. Screenshots of each page go to the artifacts directory.
// Usage: node approve.mjs ADMIN_URL OPERATOR PASSWORD PROPOSAL_ID KEY VALUE ARTIFACT_DIR
import { launch, check, shooter } from './common.mjs';

const [adminUrl, operator, password, id, key, value, artifacts] = process.argv.slice(2);
const shot = shooter(artifacts);
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } }); // a phone
  await page.goto(`${adminUrl}/proposals/${id}`);
  check(page.url().endsWith('/login'), `redirected to login, got ${page.url()}`);
  await shot(page, '1-login');
  await page.fill('#name', operator);
  await page.fill('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  check(new URL(page.url()).pathname === '/', `logged in to the overview, got ${page.url()}`);
  check((await page.textContent('.badge'))?.trim() === '1', 'the pending count is shown');
  await shot(page, '2-proposals');
  await page.goto(`${adminUrl}/proposals/${id}`);
  const text = await page.textContent('main');
  check(text.includes('<script>alert(1)</script>'), 'the hostile message is shown as text');
  check(await page.$('main script') === null, 'no script element was injected');
  check(text.includes('other.example.net'), 'the host is shown');
  await shot(page, '3-proposal');
  await page.fill(`[id="value-${key}"]`, value);
  await Promise.all([page.waitForNavigation(), page.click('button:has-text("Approve")')]);
  check((await page.textContent('main')).includes('Approved'), 'approval confirmed');
  check(!(await page.content()).includes(value), 'the value is not echoed back');
  await shot(page, '4-approved');
  await page.goto(`${adminUrl}/audit`);
  const audit = await page.textContent('main');
  check(audit.includes(`operator:${operator}`) && audit.includes('proposal.approve'), 'the audit log shows who approved');
  await shot(page, '5-audit');
  for (const p of ['vaults', 'agents', 'requests']) {
    await page.goto(`${adminUrl}/${p}`);
    await shot(page, `6-${p}`);
  }
  // Revoking takes two steps, the first saying what is lost (agent `doomed`, made by the test).
  // On a desktop: a phone's layout hides the action columns.
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.goto(`${adminUrl}/agents`);
  const row = page.locator('tr', { hasText: 'doomed' });
  const yes = row.locator('button:has-text("Yes, revoke")');
  check(!(await yes.isVisible()), 'the revoking button is hidden until asked for');
  await row.locator('summary:has-text("revoke")').click();
  check(await yes.isVisible(), 'the confirmation opens');
  check((await row.textContent()).includes('Agent doomed and every scoped token it minted stop working'), 'it names what is lost');
  await shot(page, '6-confirm-revoke');
  await Promise.all([page.waitForNavigation(), yes.click()]);
  check((await page.textContent('main')).includes('Revoked agent doomed'), 'revoked after the confirmation');
  // Framing is refused (frame-ancestors 'none' and X-Frame-Options: DENY).
  const framer = await browser.newPage();
  await framer.setContent(`<iframe src="${adminUrl}/login" width="400" height="300"></iframe>`);
  await framer.waitForTimeout(1500);
  const child = framer.frames().find((f) => f !== framer.mainFrame());
  const framedForm = child ? await child.$('form').catch(() => null) : null;
  check(framedForm === null, 'the login page rendered inside a frame');
  await shot(framer, '7-framed');
  console.log(JSON.stringify({ ok: true }));
} finally {
  await browser.close();
}
