//! HTML views (maud: every interpolated value is escaped) and the stylesheet. Layout only; the
//! handlers in `pages` decide what to show.

use maud::{DOCTYPE, Markup, html};

use crate::security::Session;

pub(crate) const CSS: &str = r#"
:root { --fg:#1d2330; --muted:#5b6475; --line:#dfe3ea; --bg:#f6f7f9; --card:#fff; --accent:#2f5bea; --ok:#1f7a4d; --bad:#b42318; }
* { box-sizing: border-box; }
body { margin:0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color:var(--fg); background:var(--bg); }
header { background:var(--card); border-bottom:1px solid var(--line); }
nav { max-width:960px; margin:0 auto; padding:.6rem 1rem; display:flex; flex-wrap:wrap; gap:.4rem 1.1rem; align-items:center; }
nav a { color:var(--fg); text-decoration:none; }
nav a.brand { font-weight:700; margin-right:auto; }
.badge { background:var(--accent); color:#fff; border-radius:999px; padding:0 .5rem; margin-left:.3rem; font-size:.8rem; }
main { max-width:960px; margin:0 auto; padding:1rem; }
h1 { font-size:1.4rem; margin:.5rem 0 1rem; }
h2 { font-size:1.1rem; margin:1.5rem 0 .5rem; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:1rem; margin-bottom:1rem; }
table { width:100%; border-collapse:collapse; background:var(--card); border:1px solid var(--line); border-radius:10px; overflow:hidden; }
th, td { text-align:left; padding:.5rem .6rem; border-bottom:1px solid var(--line); vertical-align:top; overflow-wrap:anywhere; }
th { font-size:.85rem; color:var(--muted); font-weight:600; }
.muted { color:var(--muted); }
.status { font-weight:600; }
.status.pending { color:var(--accent); } .status.applied { color:var(--ok); } .status.rejected, .status.expired { color:var(--bad); }
label { display:block; font-weight:600; margin:.8rem 0 .2rem; }
input[type=text], input[type=password], textarea { width:100%; padding:.55rem; border:1px solid var(--line); border-radius:8px; font:inherit; }
button { font:inherit; padding:.55rem 1rem; border-radius:8px; border:1px solid var(--accent); background:var(--accent); color:#fff; cursor:pointer; margin-top:.8rem; }
button.secondary { background:#fff; color:var(--bad); border-color:var(--bad); }
form.inline { display:inline; } form.inline button { margin:0; padding:.2rem .6rem; background:none; color:var(--muted); border-color:var(--line); }
details.confirm { display:inline-block; vertical-align:top; } details.confirm summary { display:inline-block; cursor:pointer; padding:.2rem .6rem; border:1px solid var(--line); border-radius:8px; color:var(--muted); }
details.confirm[open] { display:block; max-width:28rem; margin:.4rem 0; padding:.5rem; border:1px solid var(--bad); border-radius:8px; } details.confirm p { margin:.4rem 0; }
details.confirm form.inline button.danger { color:var(--bad); border-color:var(--bad); }
details.form { margin-top:.8rem; } details.form > summary { cursor:pointer; font-weight:600; color:var(--accent); } details.form[open] > summary { margin-bottom:.4rem; }
.message { white-space:pre-wrap; background:var(--bg); border-left:3px solid var(--line); padding:.5rem .8rem; }
.flash { padding:.7rem 1rem; border-radius:8px; margin-bottom:1rem; }
.flash.ok { background:#e7f6ee; color:var(--ok); } .flash.bad { background:#fdecea; color:var(--bad); }
.warn { color:var(--bad); } .flash.reuse { font-size:1.05rem; border:2px solid var(--bad); }
label.confirm { display:block; margin:.8rem 0; font-weight:600; color:var(--bad); }
code { font-size:.9em; overflow-wrap:anywhere; }
dl { display:grid; grid-template-columns:max-content 1fr; gap:.3rem 1rem; margin:0; } dt { font-weight:600; color:var(--muted); } dd { margin:0; }
th { white-space:nowrap; } .sr { position:absolute; width:1px; height:1px; overflow:hidden; clip-path:inset(50%); white-space:nowrap; } .nowrap { white-space:nowrap; }
select, input, textarea { max-width:100%; } main { overflow-wrap:anywhere; }
form.filters { display:grid; grid-template-columns:repeat(auto-fill, minmax(9.5rem, 1fr)); gap:.2rem .8rem; align-items:end; margin-bottom:.8rem; }
form.filters label { margin:.2rem 0; font-size:.9rem; } form.filters select { width:100%; padding:.5rem; border:1px solid var(--line); border-radius:8px; font:inherit; background:#fff; }
form.filters .actions button { margin:0; width:100%; }
.tools { font-size:.95rem; } a { color:var(--accent); } nav a { color:var(--fg); }
table.log td { font-size:.92rem; }
figure.chart { margin:.8rem 0; } figure.chart svg { width:100%; height:auto; display:block; } figcaption { font-size:.95rem; margin-bottom:.3rem; }
.c-ok { fill:#1f7a4d; background:#1f7a4d; } .c-client { fill:#b7791f; background:#b7791f; } .c-failed { fill:#b42318; background:#b42318; }
.axis { stroke:var(--line); } svg.split { width:10rem; height:.8rem; display:block; margin-top:.35rem; } .tick { font-size:11px; fill:var(--muted); } .tick.end { text-anchor:end; }
.legend { display:flex; gap:1rem; font-size:.9rem; } .legend .key { display:inline-block; width:.8rem; height:.8rem; border-radius:2px; margin-right:.3rem; vertical-align:middle; }
ul.plain { list-style:none; padding:0; margin:.3rem 0; } ul.plain li { margin:.2rem 0; }
.cols { display:grid; grid-template-columns:repeat(auto-fit, minmax(14rem, 1fr)); gap:0 1.5rem; }
h3 { font-size:1rem; margin:1rem 0 .3rem; }
@media (max-width: 600px) { th:nth-child(n+4), td:nth-child(n+4) { display:none; } }
"#;

/// The request log's live mode: polls `/requests/live` for rows newer than the newest shown
/// (with the page's filter) and adds them at the top, as text.
pub(crate) const LIVE_JS: &str = r#"
const table = document.querySelector('table.log[data-live]');
if (table) {
  let after = table.dataset.after;
  const params = new URLSearchParams(location.search);
  params.delete('live');
  params.delete('before');
  const poll = async () => {
    params.set('after', after);
    try {
      const r = await fetch('/requests/live?' + params, { credentials: 'same-origin' });
      if (r.ok) {
        const page = await r.json();
        after = page.last;
        const body = table.tBodies[0];
        for (const cells of page.rows) {
          const tr = document.createElement('tr');
          cells.forEach((text, i) => {
            const td = document.createElement('td');
            if (i === 1) { const c = document.createElement('code'); c.textContent = text; td.append(c); }
            else { td.textContent = text; }
            if (i === 0) td.className = 'muted nowrap';
            if (i === 2) td.className = 'nowrap';
            tr.append(td);
          });
          body.insertBefore(tr, body.firstChild);
        }
      }
    } finally {
      setTimeout(poll, 1000);
    }
  };
  setTimeout(poll, 1000);
}
"#;

/// The page frame: navigation (with the pending count) for a logged-in operator.
pub(crate) fn page(title: &str, session: &Session, pending: usize, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · airlock" }
                link rel="stylesheet" href="/static/app.css";
            }
            body {
                header { nav {
                    a.brand href="/" { "airlock" }
                    @if session.operator.is_some() { a href="/" { "Overview" } }
                    @if session.operator.is_some() {
                        a href="/proposals" { "Proposals" @if pending > 0 { span.badge { (pending) } } }
                        a href="/vaults" { "Vaults" }
                        a href="/agents" { "Agents" }
                        a href="/requests" { "Requests" }
                        a href="/hosts" { "Hosts tried" }
                        a href="/rules" { "Rules" }
                        a href="/audit" { "Audit" }
                        form.inline method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button { "Log out " (session.operator.as_deref().unwrap_or("")) }
                        }
                    }
                } }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A long list's search box: a GET form to `action` whose field `name` (id `id`) holds `value`.
pub(crate) fn search_form(
    action: &str,
    (id, name): (&str, &str),
    label: &str,
    value: &str,
) -> Markup {
    html! {
        form.filters method="get" action=(action) {
            label for=(id) { (label) }
            input id=(id) type="search" name=(name) value=(value);
            button { "Search" }
        }
    }
}

pub(crate) fn flash(ok: bool, text: &str) -> Markup {
    html! { div class={ "flash " (if ok { "ok" } else { "bad" }) } { (text) } }
}
