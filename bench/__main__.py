"""Run serq's benchmarks: ``python -m bench [NAME ...] [-- ARGS]`` (``./run bench`` does the same).

Discovers every module in ``bench/`` that defines ``main(argv=None)`` and runs the
selected ones (all by default) one after another, so they do not compete for the
cores. ``ARGS`` after ``--`` are passed to each. A benchmark that fails is
reported and the others still run; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback

import bench


def discover() -> dict[str, object]:
    """``name -> main`` for every module of this package that defines ``main``."""
    found = {}
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if callable(getattr(module, "main", None)):
            found[info.name] = module.main
    return found


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)

    benchmarks = discover()
    if args.list:
        for name, fn in benchmarks.items():
            doc = (sys.modules[fn.__module__].__doc__ or "").strip().splitlines()
            print(f"{name:<12} {doc[0] if doc else ''}")
        return 0
    unknown = [n for n in args.names if n not in benchmarks]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(benchmarks)}")

    summary: list[tuple[str, str, float]] = []
    for name in args.names or list(benchmarks):
        print(f"\n===== bench.{name} =====", flush=True)
        started = time.monotonic()
        try:
            result = benchmarks[name](passthrough)
            status = "failed" if isinstance(result, int) and not isinstance(result, bool) and result != 0 else "ok"
        except SystemExit as exc:  # argparse errors, "corpus not found"...
            status = "ok" if exc.code in (0, None) else f"failed ({exc.code})"
        except Exception:
            traceback.print_exc()
            status = "failed (exception)"
        summary.append((name, status, time.monotonic() - started))

    print("\n===== summary =====")
    for name, status, seconds in summary:
        print(f"{name:<12} {status:<20} {seconds:7.1f} s")
    return 0 if all(status == "ok" for _, status, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
