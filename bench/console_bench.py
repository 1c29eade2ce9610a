"""Web console page cost with many components: one page (paged) vs every row (unpaged).

    .venv/bin/python bench/console_bench.py [--components 1000,5000,20000] [--repeat 20]

Renders the components page as ``/console/components`` does (sort, capability counts,
one page of ``PAGE_SIZE`` rows) and, side by side, the same table with every component
on one page — what a page without paging (the supervisor's plain ``/`` list) renders.
Pure view functions, no sockets: the cost the reactor thread pays per request.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ccnet.console import views  # noqa: E402
from ccnet.mplane.state import Component  # noqa: E402


def render(components: dict[str, Component], caps: dict[str, int], size: int) -> str:
    ordered = sorted(components.values(), key=lambda c: c.identity)
    return views.components_page(views.paged(ordered, 2, size), caps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", default="1000,5000,20000")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"{'components':>10} {'paged ms':>9} {'paged KB':>9} {'unpaged ms':>11} {'unpaged KB':>11}")
    for n in (int(x) for x in args.components.split(",")):
        components = {f"probe-{i:06d}.example": Component(f"probe-{i:06d}.example", f"/O=ccnet/CN=probe-{i}",
                                                           True, 1.8e9, 1.8e9) for i in range(n)}
        caps = {name: 2 for name in components}
        row = []
        for size in (views.PAGE_SIZE, n):
            started = time.perf_counter()
            for _ in range(args.repeat):
                page = render(components, caps, size)
            row += [(time.perf_counter() - started) / args.repeat * 1000, len(page) / 1024]
        print(f"{n:>10} {row[0]:>9.2f} {row[1]:>9.1f} {row[2]:>11.2f} {row[3]:>11.1f}")


if __name__ == "__main__":
    main()
