"""Run the scenario suite over several targets and write the comparison (the I/O around :mod:`.matrix`).

Each target runs in its own ``pytest`` process, exactly as a user would run
it (``pytest scenarios/ --target M``), with its own report directory under
``<out>/compare/<name>/``. Its ``results.json`` is then read, each case gets
an evidence page under ``<out>/cases/<name>/``, and the matrix is written as
``<out>/index.json`` and ``<out>/index.html``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..harness import sharing
from ..harness.manifest import ManifestError, load_manifest
from . import draw, html, matrix

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Entry:
    """One column: a manifest, and which scenarios to run (empty: the whole suite)."""

    manifest: Path
    select: list[str] = field(default_factory=list)
    note: str = ""


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "x"


def run_entry(
    entry: Entry,
    out: Path,
    *,
    pytest_args: Sequence[str] = (),
    timeout: float = 1800,
    suffix: str = "",
    pages: bool = True,
    share: Path | None = None,
) -> matrix.RunResult:
    """Run one target's scenarios in a child pytest; its results, and its evidence pages written
    (``pages``). ``suffix``: a report folder of its own (a second run of some cases). ``share``:
    the directory of the runs sharing the machine (:mod:`..harness.sharing`), given to the child."""
    try:
        manifest = load_manifest(entry.manifest)
    except ManifestError as exc:
        return matrix.RunResult(str(entry.manifest), str(entry.manifest), None, exit_code=None, output_tail=str(exc), note=entry.note)
    name = manifest.name
    report_dir = out / "compare" / (safe(name) + suffix)
    shutil.rmtree(report_dir / "latest", ignore_errors=True)
    command = [
        sys.executable, "-m", "pytest", *(entry.select or ["scenarios/"]),
        "--target", str(manifest.path), "--report-dir", str(report_dir), "-q", "-p", "no:cacheprovider", *pytest_args,
    ]
    try:
        env = {**os.environ, sharing.ENV: str(share)} if share is not None else None
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
        code, output = proc.returncode, proc.stdout[-4000:] + proc.stderr[-2000:]
    except subprocess.TimeoutExpired as exc:
        code, output = None, f"timed out after {timeout}s: {str(exc.stdout or '')[-3000:]}"
    path = report_dir / "latest" / "results.json"
    results = json.loads(path.read_text()) if path.exists() else None
    run = matrix.RunResult(name, str(manifest.path), results, exit_code=code, selection=entry.select, output_tail=output, note=entry.note)
    if results is not None and pages:
        run.links = write_case_pages(name, results, out)
    return run


def figure_images(evidence_path: Path, evidence: dict) -> dict[str, bytes]:
    """The PNG of each figure of a case, by figure id: drawn beside the run (``draw.Drawer``), or now
    if it is missing (a figure that cannot be drawn is left out, and the page says so)."""
    images: dict[str, bytes] = {}
    failed = {c["name"] for c in evidence.get("checks", []) if not c.get("passed")}
    for fig in evidence.get("figures") or []:
        path = draw.png_path(evidence_path, fig["id"])
        try:
            images[fig["id"]] = path.read_bytes() if path.exists() else draw.draw(fig, failed)
        except Exception:
            continue
    return images


def write_case_pages(name: str, results: dict, out: Path) -> dict[str, str]:
    """One evidence page per case that ran; their paths relative to ``out``, by case key."""
    links: dict[str, str] = {}
    folder = out / "cases" / safe(name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    for record in results.get("scenarios", []):
        if record.get("verdict") == "unsupported":
            continue
        key = record.get("case") or record["id"]
        evidence = None
        if record.get("evidence"):
            try:
                evidence = json.loads(Path(record["evidence"]).read_text())
            except (OSError, ValueError):
                evidence = None
        page = folder / f"{safe(key)}.html"
        images = figure_images(Path(record["evidence"]), evidence) if evidence else {}
        page.write_text(html.render_case(name, record, evidence, index_href="../../index.html", images=images))
        links[key] = page.relative_to(out).as_posix()
    return links


def compare(
    entries: list[Entry],
    out: Path,
    *,
    pytest_args: Sequence[str] = (),
    jobs: int = 1,
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict:
    """Run every entry, then write ``index.json`` and ``index.html`` under ``out``; the matrix.

    ``jobs`` > 1 runs that many entries at once. A case marked ``heavy`` then waits until it can
    run alone among them (:mod:`..harness.sharing`). Each run's harness sees the others as noise
    (contract 11.4), so a case whose timing checks failed beside them is ``inconclusive``: every
    such case is run again alone afterwards, and its second result is the one reported.
    """
    out.mkdir(parents=True, exist_ok=True)

    def one(i: int, entry: Entry, share: Path | None) -> matrix.RunResult:
        started = time.monotonic()
        progress(f"[{i}/{len(entries)}] {entry.manifest} {' '.join(entry.select) or '(whole suite)'}")
        run = run_entry(entry, out, pytest_args=pytest_args, share=share)
        counts = (run.results or {}).get("summary", {})
        progress(f"      {run.name}: {counts or 'no results'} in {time.monotonic() - started:.0f}s")
        return run

    with tempfile.TemporaryDirectory(prefix="scenario-share-") as shared, ThreadPoolExecutor(max(1, jobs)) as pool:
        share = Path(shared) if jobs > 1 else None
        runs = list(pool.map(one, range(1, len(entries) + 1), entries, [share] * len(entries)))
    if jobs > 1:
        for entry, run in zip(entries, runs, strict=True):
            rerun_inconclusive_alone(entry, run, out, pytest_args=pytest_args, progress=progress)
    doc = matrix.build(runs, generated=time.time())
    write(doc, out)
    return doc


def rerun_inconclusive_alone(
    entry: Entry, run: matrix.RunResult, out: Path, *, pytest_args: Sequence[str], progress: Callable[[str], None],
) -> None:
    """Run the cases of ``run`` that were inconclusive again, alone; their new records replace the old."""
    records = (run.results or {}).get("scenarios", [])
    tests = sorted({r["test"] for r in records if r.get("verdict") == "inconclusive"})
    if not tests or run.results is None:
        return
    progress(f"      {run.name}: {len(tests)} inconclusive beside the other runs; again alone: {', '.join(tests)}")
    again = run_entry(Entry(entry.manifest, tests, entry.note), out, pytest_args=pytest_args, suffix="-alone", pages=False)
    fresh = {r["case"]: r for r in (again.results or {}).get("scenarios", [])}
    run.results["scenarios"] = [fresh.get(r["case"], r) for r in records]
    counts: dict[str, int] = {}
    for r in run.results["scenarios"]:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    run.results["summary"] = counts
    run.links = write_case_pages(run.name, run.results, out)


def write(doc: dict, out: Path) -> None:
    (out / "index.json").write_text(json.dumps(doc, indent=1))
    (out / "index.html").write_text(html.render_index(doc))
