"""What still held memory when an agent run under memray ended (``bench.agent_soak --memray``): the live
allocations by thread, then the biggest stacks, the allocator's own frames left out.

A soak's growth shows here as a stack with many allocations that lasted from the middle of the run to its
end. If nothing grows here while the RSS does, the growth is the allocator's (pages it keeps), not objects.

    python -m bench.memray_leaks CAPTURE [--top N]

Run it with a Python that has memray (the agent's: memray is no dependency of Moorage); it imports nothing
else of the project.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

#: Frames that only say "an allocation happened": the first frame after them says who asked.
ALLOCATOR = ("malloc", "calloc", "realloc", "_PyObject_", "PyObject_", "_PyMem_", "PyMem_", "gpr_malloc")

KIB = 1024


def who_asked(stack: Iterable[tuple[str, str, int]], depth: int) -> list[str]:
    """The first frames past the allocator, then the first Python ones: the C call and the code behind it."""
    frames = [(fn, path, line) for fn, path, line in stack if not fn.startswith(ALLOCATOR)]
    python = [f for f in frames if f[1].endswith(".py")]
    chosen = [f for f in frames if not f[1].endswith(".py")][:depth] + python[:depth]
    return [f"{fn} ({os.path.basename(path)}:{line})" for fn, path, line in chosen]


def thread(record: Any) -> str:
    return str(record.thread_name) or ("the main thread" if record.tid == 1 else f"thread {record.tid}")


def report(capture: str, top: int, depth: int = 3) -> list[str]:
    memray = importlib.import_module("memray")
    records: list[Any] = list(memray.FileReader(capture).get_leaked_allocation_records(merge_threads=False))
    by_thread: Counter[str] = Counter()
    for r in records:
        by_thread[thread(r)] += r.size
    lines = [
        f"still allocated at the end of the run: {sum(by_thread.values()) / KIB / KIB:.1f} MiB, by thread:"
    ]
    lines += [f"  {size / KIB:9.0f} KiB  {name}" for name, size in by_thread.most_common()]
    lines.append(f"the {top} biggest stacks:")
    for r in sorted(records, key=lambda r: -r.size)[:top]:
        lines.append(f"  {r.size / KIB:9.0f} KiB in {r.n_allocations} blocks, {thread(r)}")
        lines += [f"      {frame}" for frame in who_asked(r.hybrid_stack_trace(), depth)]
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memray_leaks")
    parser.add_argument("capture", help="memray's capture file (memray run --native --aggregate)")
    parser.add_argument("--top", type=int, default=15, help="how many stacks (15)")
    args = parser.parse_args(argv)
    print("\n".join(report(args.capture, args.top)))


if __name__ == "__main__":
    main()
