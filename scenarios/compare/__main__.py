"""``python -m scenarios.compare``: run the suite over several targets, write the matrix.

    python -m scenarios.compare                         # reference, targets/*/*.toml installed here, every broken variant
    python -m scenarios.compare my/target.toml reference_server/target.toml
    python -m scenarios.compare my.toml@scenarios/test_heartbeat.py   # only some scenarios
    python -m scenarios.compare --variants sid_reuse,heartbeat_counts_pushes

Writes ``reports/index.html`` and ``reports/index.json`` (``--out``). Exit code
0 when every case passed, is unsupported, or is a listed known deviation; 1
otherwise (a failure, an error, a crashed run, a stale known failure).
Options after ``--`` go to each pytest run (e.g. ``-- --broker redis-server``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..harness.manifest import load_manifest
from .runner import REPO, Entry, compare


def default_manifests() -> list[Path]:
    """The reference, then every manifest under targets/, a target's manifests side by side
    (its own first, then its seed variants, ``naive-*.toml``).

    A target that cannot start here (its manifest's ``[install]`` check fails, e.g. PHP or
    the Swoole extension is missing) is left out, with a line saying how to install it.
    """
    found = [REPO / "reference_server" / "target.toml"]
    for path in sorted((REPO / "targets").glob("*/*.toml"), key=lambda p: (p.parent.name, p.stem != "target", p.stem.startswith("naive"), p.stem)):
        problem = load_manifest(path).install_problem()
        if problem:
            print(f"left out: {problem}")
            continue
        found.append(path)
    return found


def variant_entries(names: str, folder: Path) -> list[Entry]:
    """The broken variants of ``tests/variants`` as targets: each runs only the scenario it breaks."""
    try:
        from tests.variants import BY_NAME, VARIANTS, write_manifest
    except ImportError:
        sys.exit("--variants needs the repository's tests/ (run from a checkout)")
    chosen = VARIANTS if names == "all" else []
    if names != "all":
        for name in names.split(","):
            if name not in BY_NAME:
                sys.exit(f"--variants: no variant {name!r} (known: {', '.join(BY_NAME)})")
            chosen.append(BY_NAME[name])
    return [
        Entry(write_manifest(v.name, folder, known_failure=True), [v.scenario], note=f"broken on purpose: {v.bug}")
        for v in chosen
    ]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, pytest_args = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(prog="python -m scenarios.compare", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="manifests, each optionally MANIFEST@SELECTION (pytest node ids, comma-separated)")
    parser.add_argument("--variants", default=None, help="'all', 'none', or names of broken variants (default: all when no manifest is given)")
    parser.add_argument("--out", default=str(REPO / "reports"), help="where index.html, index.json and the evidence pages go")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1); a case inconclusive beside the "
                        "others is run again alone")
    args = parser.parse_args(argv)
    entries: list[Entry] = []
    for spec in args.targets or [str(p) for p in default_manifests()]:
        path, _, select = spec.partition("@")
        manifest = Path(path).resolve()
        if not manifest.is_file():
            parser.error(f"no manifest at {path}")
        entries.append(Entry(manifest, [s for s in select.split(",") if s]))
    variants = args.variants if args.variants is not None else ("none" if args.targets else "all")
    out = Path(args.out).resolve()
    if variants != "none":
        folder = out / "compare" / "variant-manifests"
        folder.mkdir(parents=True, exist_ok=True)
        entries += variant_entries(variants, folder)
    doc = compare(entries, out, pytest_args=pytest_args, jobs=args.jobs)
    print(f"comparison {'passed' if doc['ok'] else 'FAILED'}: {out / 'index.html'}")
    for problem in doc["problems"]:
        print(f"  {problem}")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
