// Approves a held request in the admin UI with headless Chromium: log in, open the held request,
// check what is shown (method, host, path, the rule, a redacted body preview), approve with the
// keyboard (Tab to the button, Enter), and check the confirmation.
// Usage: node hold.mjs ADMIN_URL OPERATOR PASSWORD PROPOSAL_ID ARTIFACT_DIR
import { launch, check, shooter, login } from './common.mjs';

const [adminUrl, operator, password, id, artifacts] = process.argv.slice(2);
const shot = shooter(artifacts);
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await login(page, adminUrl, operator, password);
  await page.goto(`${adminUrl}/proposals/${id}`);
  const text = await page.textContent('main');
  check(text.includes('Held request'), 'the held request is shown');
  check(text.includes('POST api.openai.com/v1/refunds'), 'method, host and path are shown');
  check(text.includes('refunds-need-a-person'), 'the rule is named');
  check(text.includes('[REDACTED BY AIRLOCK]') && !text.includes('not-for-the-operator'), 'the body preview is redacted');
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
