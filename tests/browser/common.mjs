// What the browser scripts share: Debian's chromium through playwright-core, headless, with
// nothing reaching the network; a check that throws; screenshots into the artifacts directory.
import { chromium } from 'playwright-core';

export const launch = () => chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
export const check = (cond, what) => { if (!cond) throw new Error(`check failed: ${what}`); };
export const shooter = (artifacts) =>
  (page, name) => page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: true });
export const login = async (page, adminUrl, operator, password) => {
  await page.goto(`${adminUrl}/login`);
  await page.fill('#name', operator);
  await page.fill('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
};
