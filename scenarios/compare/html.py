"""HTML pages of the comparison (pure: documents in, text out; no script, no external asset).

* :func:`render_index`: the matrix, one row per case grouped by seed, one
  column per target, each cell a verdict with its duration linking to the
  case's evidence page.
* :func:`render_case`: one target's evidence for one case: every check with
  what was expected and what was seen, the facts recorded (history excerpts),
  and what the target logged meanwhile.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from html import escape
from typing import Any

from .matrix import VARIANTS_GROUP

LABELS = {
    "passed": "passed",
    "failed": "FAILED",
    "known_deviation": "known deviation",
    "inconclusive": "inconclusive",
    "unsupported": "unsupported",
    "error": "ERROR",
    "skipped": "skipped",
    "not_run": "·",
}

STYLE = """
:root { --pass: #1f7a3a; --pass-bg: #e3f4e8; --fail: #a4161a; --fail-bg: #fde2e1; --known: #8a5a00;
        --known-bg: #fff1cc; --unsup: #5b6270; --unsup-bg: #eef0f3; --line: #d7dbe0; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #1d232b; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 24px 0 8px; }
.sub { color: #5b6270; margin-bottom: 16px; }
.status { display: inline-block; padding: 4px 10px; border-radius: 4px; font-weight: 600; }
.status.ok { background: var(--pass-bg); color: var(--pass); } .status.bad { background: var(--fail-bg); color: var(--fail); }
ul.problems { color: var(--fail); margin: 6px 0 16px; }
table.matrix { border-collapse: separate; border-spacing: 0; width: 100%; }
table.matrix th, table.matrix td { border-bottom: 1px solid var(--line); padding: 6px 8px; text-align: left; vertical-align: top; }
table.matrix thead th { background: #fff; border-bottom: 2px solid #9aa3ad; min-width: 150px; }
table.matrix thead tr.groups th { font-size: 12px; color: #39414b; border-bottom: 1px solid #9aa3ad; border-left: 2px solid #fff;
  background: #f6f7f9; }
table.matrix th.case { min-width: 240px; font-weight: 500; font-family: ui-monospace, monospace; font-size: 13px; }
tr.seed th { background: #f6f7f9; font-weight: 600; color: #39414b; padding-top: 12px; }
.tname { font-size: 15px; } .tdesc { font-weight: 400; color: #5b6270; font-size: 12px; margin: 2px 0 4px; }
.caps { font-weight: 400; font-size: 11px; color: #39414b; } .caps span { display: inline-block; background: #eef0f3;
  border-radius: 3px; padding: 0 4px; margin: 1px 2px 1px 0; }
.counts { font-weight: 400; font-size: 12px; margin-top: 4px; }
.cell { display: block; padding: 3px 6px; border-radius: 4px; text-decoration: none; font-weight: 600; }
.cell small { font-weight: 400; opacity: .8; margin-left: 4px; }
.v-passed { background: var(--pass-bg); color: var(--pass); } .v-failed, .v-error { background: var(--fail-bg); color: var(--fail); }
.v-known_deviation { background: var(--known-bg); color: var(--known); }
.v-inconclusive { background: repeating-linear-gradient(135deg, #eef0f3 0 6px, #fff 6px 12px); color: #39414b;
  outline: 1px dashed #9aa3ad; }
.v-unsupported, .v-skipped { background: var(--unsup-bg); color: var(--unsup); font-weight: 400; }
.v-not_run { color: #b0b6be; font-weight: 400; }
.why { font-size: 12px; color: #5b1a1a; font-weight: 400; margin-top: 2px; }
.legend span { margin-right: 10px; } .said { font-size: 11px; color: #5b6270; margin-top: 2px; } .warn { color: var(--fail); }
table.checks { border-collapse: collapse; width: 100%; } table.checks td, table.checks th { border: 1px solid var(--line);
  padding: 5px 7px; vertical-align: top; text-align: left; }
pre { background: #f6f7f9; padding: 8px; overflow-x: auto; font-size: 12px; white-space: pre-wrap; word-break: break-word; }
code { font-family: ui-monospace, monospace; font-size: 12px; }
figure.history { margin: 8px 0 18px; } figure.history img { max-width: 100%; border: 1px solid var(--line); }
figure.history figcaption { font-size: 12px; color: #5b6270; } a.figref { font-size: 12px; color: var(--fail); margin-left: 6px; }
.hl { font-size: 11px; color: #39414b; margin-top: 2px; font-variant-numeric: tabular-nums; }
details#variants { margin-top: 18px; } details#variants summary { cursor: pointer; padding: 6px 0; }
"""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def render_index(matrix: dict[str, Any]) -> str:
    every = matrix["targets"]
    targets = [t for t in every if t.get("group") != VARIANTS_GROUP]
    variants = [t for t in every if t.get("group") == VARIANTS_GROUP]
    parts = [f"<h1>Scenario suite: comparison of {len(targets)} targets</h1>"]
    parts.append(
        f"<div class=\"sub\">Target contract v{matrix['contract']} · generated {_when(matrix['generated'])} · "
        "each cell links to its evidence</div>"
    )
    if matrix["ok"]:
        parts.append('<div class="status ok" id="overall">comparison passed</div>')
    else:
        parts.append(f'<div class="status bad" id="overall">comparison failed: {len(matrix["problems"])} problem(s)</div>')
        parts.append('<ul class="problems">' + "".join(f"<li>{escape(p)}</li>" for p in matrix["problems"]) + "</ul>")
    parts.append(
        '<p class="legend">'
        + "".join(
            f'<span class="cell v-{v}" style="display:inline">{escape(LABELS[v] if v != "not_run" else "· not run")}</span> '
            for v in matrix["verdicts"]
        )
        + "· known deviation: a failure the target's manifest lists, with its reason</p>"
    )
    head = ['<th class="case">case</th>']
    seen: dict[tuple[str, ...], str] = {}  # a declaration already shown, by the first target that made it
    for t in targets:
        same = seen.setdefault(tuple(t["declared"]), t["name"])
        if same != t["name"]:
            caps = f"<span>same as {escape(same)}</span>"
        else:
            caps = "".join(f"<span>{escape(c)}</span>" for c in t["declared"]) or "<span>(declares nothing)</span>"
        counts = ", ".join(f"{n} {escape(LABELS.get(v, v))}" for v, n in t["counts"].items())
        shown = t["note"] and t["note"].lower() not in t["description"].lower()
        note = f'<div class="why">{escape(t["note"])}</div>' if shown else ""
        crashed = '<div class="why">the run crashed: no results</div>' if t["crashed"] else ""
        head.append(
            f'<th data-target="{escape(t["name"])}"><div class="tname">{escape(t["name"])}</div>'
            f'<div class="tdesc">{escape(t["description"])}</div>{note}{crashed}'
            f'<div class="caps">declares: {caps}</div><div class="counts">{counts}</div></th>'
        )
    rows = []
    for group in matrix["groups"]:
        rows.append(f'<tr class="seed"><th colspan="{len(targets) + 1}">{escape(group["seed"] or "(no seed)")}</th></tr>')
        for row in group["rows"]:
            tds = [f'<th class="case">{escape(row["case"])}</th>']
            for t in targets:
                cell = _cell_html(row["cells"][t["name"]], t["name"], row["case"])
                if row["scenario"] == "contract_probe" and row["cells"][t["name"]]["verdict"] != "not_run":
                    cap = row["case"].partition("[")[2].rstrip("]")
                    said = "owed by every target" if cap == "core" else ("declared" if cap in t["declared"] else "not declared")
                    cell = cell.replace("</td>", f'<div class="said">{said}</div></td>')
                tds.append(cell)
            rows.append(f'<tr data-case="{escape(row["case"])}">' + "".join(tds) + "</tr>")
    groups = ['<th class="group"></th>']  # consecutive targets of one folder share a header: a target and its variants
    for name, members in itertools.groupby(targets, key=lambda t: t.get("group", "")):
        span = len(list(members))
        groups.append(f'<th class="group" colspan="{span}" data-group="{escape(name)}">{escape(name)}</th>')
    parts.append(
        '<table class="matrix"><thead><tr class="groups">' + "".join(groups) + "</tr><tr>" + "".join(head)
        + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    if variants:
        parts.append(_variants_html(matrix, variants))
    parts.append(
        "<h2>What each target declared</h2><ul>"
        + "".join(
            f"<li><b>{escape(t['name'])}</b> (<code>{escape(t['manifest'])}</code>): "
            f"{escape(', '.join(t['declared']) or 'nothing')}"
            + (f"; known failures: {escape(json.dumps(t['known_failures']))}" if t["known_failures"] else "")
            + (
                f"; which must fail by: {escape(json.dumps(t['known_failure_checks']))}"
                if t.get("known_failure_checks") else ""
            )
            + (
                f'; <span class="warn">known failures naming no case of this run: '
                f"{escape(', '.join(t['known_failures_unmatched']))}</span>"
                if t.get("known_failures_unmatched") else ""
            )
            + (f"; ran only {escape(', '.join(t['selection']))}" if t["selection"] else "")
            + "</li>"
            for t in every
        )
        + "</ul>"
    )
    return _page("Scenario comparison", "\n".join(parts))


def _variants_html(matrix: dict[str, Any], variants: list[dict[str, Any]]) -> str:
    """The broken variants, folded: a row each (its bug, the case it must fail, its verdict and the
    check it failed by), so the matrix above stays the width of the real targets."""
    rows = []
    caught = 0
    for t in variants:
        for group in matrix["groups"]:
            for row in group["rows"]:
                cell = row["cells"].get(t["name"])
                if cell is None or cell["verdict"] == "not_run":
                    continue
                caught += cell["verdict"] == "known_deviation"
                rows.append(
                    f'<tr data-variant="{escape(t["name"])}"><th class="case">{escape(t["name"].removeprefix("variant-"))}</th>'
                    f'<td>{escape(t["note"].removeprefix("broken on purpose: "))}</td><th class="case">{escape(row["case"])}</th>'
                    + _cell_html(cell, t["name"], row["case"]) + "</tr>"
                )
    return (
        f'<details id="variants"><summary><b>Broken on purpose</b>: {len(variants)} variants of the reference '
        f"(tests/variants), {caught} caught by their scenario as a known deviation</summary>"
        '<table class="matrix"><thead><tr><th class="case">variant</th><th>its bug</th><th class="case">case</th>'
        "<th>verdict</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></details>"
    )


def _cell_html(cell: dict[str, Any], target: str, case: str) -> str:
    verdict = cell["verdict"]
    label = LABELS[verdict] + (" (stale)" if cell.get("stale") else "")
    timed = cell.get("duration_s") is not None and verdict not in ("not_run", "unsupported")
    duration = f"<small>{cell['duration_s']:.2f}s</small>" if timed else ""
    title = "; ".join(cell["failed_checks"]) or cell["message"]
    attrs = f'class="cell v-{verdict}" data-verdict="{verdict}" title="{escape(title)}"'
    inner = f"{escape(label)}{duration}"
    body = f'<a {attrs} href="{escape(cell["link"])}">{inner}</a>' if cell.get("link") else f"<span {attrs}>{inner}</span>"
    why = ""
    if verdict == "inconclusive":
        cond = cell.get("conditions") or {}
        why = (
            f'<div class="why">machine busy: other processes used {cond.get("noise_cpus_max")} CPUs'
            f' in a second</div>'
        )
    elif verdict in ("failed", "error", "known_deviation"):
        reason = cell["failed_checks"][0] if cell["failed_checks"] else cell["message"]
        if reason:
            why = f'<div class="why">{escape(reason[:140])}</div>'
    headline = f'<div class="hl">{escape(cell["headline"])}</div>' if cell.get("headline") else ""
    return f"<td>{body}{headline}{why}</td>"


def render_case(
    target: str, record: dict[str, Any], evidence: dict[str, Any] | None, *, index_href: str,
    images: dict[str, bytes] | None = None,
) -> str:
    """One target's evidence page for one case; ``images``: the PNG of each figure, by figure id."""
    verdict = record.get("verdict", "error")
    parts = [
        f'<p><a href="{escape(index_href)}">← comparison</a></p>',
        f"<h1>{escape(record.get('case') or record['id'])} on {escape(target)}</h1>",
        f'<div class="sub">seed: {escape(record.get("seed", ""))} · test <code>{escape(record.get("test", ""))}</code></div>',
        f'<span class="cell v-{verdict}" style="display:inline-block">{escape(LABELS.get(verdict, verdict))}'
        f"<small>{record.get('duration_s', 0):.2f}s</small></span>",
    ]
    figures = (evidence or {}).get("figures") or []
    if figures:  # the history first: where it went wrong, then the words
        parts.append(_figures_html(figures, images or {}))
    if record.get("message"):
        parts.append(f"<h2>Message</h2><pre>{escape(record['message'])}</pre>")
    if evidence is not None:
        marked: dict[str, list[str]] = {}  # check name -> ids of the figures that mark it
        for fig in figures:
            for m in fig.get("marks") or []:
                if m.get("check") and fig["id"] not in marked.setdefault(m["check"], []):
                    marked[m["check"]].append(fig["id"])
        rows = []
        for check in evidence.get("checks", []):
            mark = "passed" if check["passed"] else "failed"
            details = json.dumps(check.get("details") or {}, indent=1, default=str)
            where = "".join(
                f' <a class="figref" href="#fig-{escape(fid)}">marked in the figure</a>'
                for fid in marked.get(check["name"], []) if not check["passed"]
            )
            rows.append(
                f'<tr><td><span class="cell v-{mark}">{mark}</span></td><td>{escape(check["name"])}{where}</td>'
                f"<td><code>{escape(_j(check.get('expected')))}</code></td><td><code>{escape(_j(check.get('observed')))}</code></td>"
                f"<td><pre>{escape(details[:3000])}</pre></td></tr>"
            )
        parts.append(
            f"<h2>Checks ({len(rows)})</h2><table class=\"checks\"><tr><th></th><th>check</th><th>expected</th>"
            "<th>observed</th><th>details (history excerpts)</th></tr>" + "".join(rows) + "</table>"
        )
        facts = evidence.get("facts") or {}
        if facts:
            parts.append(f"<h2>Facts recorded</h2><pre>{escape(json.dumps(facts, indent=1, default=str)[:20000])}</pre>")
    else:
        parts.append("<p>No evidence was recorded for this case (it did not run its checks).</p>")
    logs = record.get("log_excerpt") or {}
    parts.append("<h2>Target log excerpt</h2>")
    if logs:
        for name, lines in logs.items():
            parts.append(f"<h3><code>{escape(name)}</code> (last {len(lines)} lines written during the case)</h3>")
            parts.append(f"<pre>{escape(chr(10).join(lines))}</pre>")
    else:
        parts.append("<p>The target logged nothing during this case.</p>")
    return _page(f"{record.get('case')} on {target}", "\n".join(parts))


def _figures_html(figures: list[dict[str, Any]], images: dict[str, bytes]) -> str:
    """The figures of the history (PNG as data: URIs, so the page works offline), above the checks."""
    out = ["<h2>History</h2>"]
    for fig in figures:
        fid = escape(fig["id"])
        png = images.get(fig["id"])
        if png:
            src = "data:image/png;base64," + base64.b64encode(png).decode()
            out.append(f'<figure id="fig-{fid}" class="history"><img alt="{escape(fig.get("title", ""))}" src="{src}">'
                       f"<figcaption>{escape(fig.get('title', ''))} (data: <code>figures</code> in the evidence JSON, "
                       f"id <code>{fid}</code>)</figcaption></figure>")
        else:
            out.append(f'<p id="fig-{fid}">The figure <code>{fid}</code> could not be drawn; its data is in the evidence JSON.</p>')
    return "".join(out)


def _j(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 800 else text[:800] + "..."
