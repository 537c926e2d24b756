"""Match user regexes against module names with `re`'s own semantics, but never hang.

`re` backtracks: `(.|.)*Z` or twenty `.*` in a row take hours on one 40-character name, and a match holds the
GIL, so no thread can stop it. So each pattern is first bounded statically: `backtrack_paths` counts the
choices `re` can try on a name of the longest length (a product over sequences, a sum over alternatives, a
power over repeats of a body that itself chooses). A pattern under `SAFE_PATHS` is matched here, directly.
Any other pattern, whatever its shape, is matched by `re` in a worker process that is killed when it has used
`WORKER_CPU_SECONDS` of CPU time on it: the result is `re`'s when it finishes, and a one-line refusal when it
does not. CPU time, not wall time: on a loaded machine an ordinary pattern still needs only milliseconds of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import IO

import psutil

from .network_args import NetworkArgsError, short

# Paths per name that `re` walks in well under a millisecond (`.*x.*` on a 60-character name is 3,600).
SAFE_PATHS = 100_000
WORKER_CPU_SECONDS = 2.0  # per pattern in the worker; ordinary patterns need microseconds
WORKER_WALL_SECONDS = (
    120.0  # a safety net only (a worker starved of CPU that long): start-up and each pattern
)

_CAP = 10**18  # counts stop growing here: the answer is "too many" either way


def backtrack_paths(pattern: str, max_len: int) -> int:
    """An upper bound on the match attempts `re.fullmatch(pattern, s)` can make for any s of <= max_len chars
    (capped at 1e18). A pattern of `re`'s regular subset with no ambiguous repetition is polynomial here."""
    import re._constants as c  # noqa: PLC0415 (private, but the only parse tree of `re`)
    import re._parser as parser  # noqa: PLC0415

    repeats = (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT)

    def seq(items) -> int:
        total = 1
        for op, arg in items:
            total = min(_CAP, total * node(op, arg))
        return total

    def node(op, arg) -> int:
        if op in repeats:
            low, high, body = arg
            per = seq(body)
            most = min(high, max_len + 1)  # each iteration takes a character; sre stops empty ones
            if per == 1:
                return max(1, most - low + 1)
            return _capped_pow(per, most + 1)  # every choice in every iteration: sum of per**k, k <= most
        if op == c.BRANCH:
            return min(_CAP, sum(seq(alt) for alt in arg[1]))
        if op == c.GROUPREF_EXISTS:
            return min(_CAP, seq(arg[1]) + (seq(arg[2]) if arg[2] else 1))
        # Any other node with sub-patterns (groups, atomic groups, lookarounds, ops of later Pythons):
        # the product of what it holds is an upper bound. Leaves (a literal, a class, a backreference): 1.
        total = 1
        for sub in _subpatterns(arg, parser.SubPattern):
            total = min(_CAP, total * seq(sub))
        return total

    return seq(parser.parse(pattern))


def _capped_pow(base: int, exponent: int) -> int:
    if exponent * math.log10(base) >= 18:
        return _CAP
    return base**exponent


def _subpatterns(arg, subpattern_type) -> list:
    """Every SubPattern inside a node's argument, however the node nests them (tuples, lists)."""
    if isinstance(arg, subpattern_type):
        return [arg]
    if isinstance(arg, (tuple, list)):
        return [sub for item in arg for sub in _subpatterns(item, subpattern_type)]
    return []


def is_provably_fast(pattern: str, names: Sequence[str], search: bool = False) -> bool:
    """True when `re` is known to match `pattern` over `names` quickly (search: at every start position)."""
    longest = max((len(n) for n in names), default=0)
    try:
        return backtrack_paths(pattern, longest) * ((longest + 1) if search else 1) <= SAFE_PATHS
    except RecursionError:  # nesting deeper than this count can follow: no proof, so the worker matches it
        return False


def match_sets(keyed: Iterable[tuple[str, str]], names: Sequence[str]) -> dict[str, frozenset[str]]:
    """For each (key, pattern): the names `re.fullmatch(pattern, name)` accepts.

    key names the option in a refusal. Raises NetworkArgsError (one line) for a pattern that `re` could not
    match within WORKER_SECONDS in the worker.
    """
    result: dict[str, frozenset[str]] = {}
    slow: dict[str, str] = {}  # pattern -> the first key that gave it
    for key, pattern in keyed:
        if pattern in result or pattern in slow:
            continue
        if is_provably_fast(pattern, names):
            compiled = re.compile(pattern)
            result[pattern] = frozenset(n for n in names if compiled.fullmatch(n))
        else:
            slow[pattern] = key
    if slow:
        result.update(_match_in_worker([(k, p) for p, k in slow.items()], names))
    return result


# The worker: stdin gets the names (one JSON line), then one pattern per line; stdout answers "ready", then
# per pattern the JSON list of the indices of the names it fully matches. Only re and json are imported.
_WORKER = """
import json, re, sys
names = json.loads(sys.stdin.readline())
print("ready", flush=True)
for line in sys.stdin:
    rx = re.compile(json.loads(line))
    print(json.dumps([i for i, n in enumerate(names) if rx.fullmatch(n)]), flush=True)
"""


def _match_in_worker(keyed: list[tuple[str, str]], names: Sequence[str]) -> dict[str, frozenset[str]]:
    # -I -S: no site-packages, no environment, no current folder on sys.path: the worker starts in milliseconds
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None and stdout is not None  # both are PIPEs; Popen types them Optional
    try:
        worker: psutil.Process | None = psutil.Process(proc.pid)
    except psutil.Error:  # gone already: the queue says so
        worker = None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(stdout, lines), daemon=True).start()
    try:
        _send(stdin, json.dumps(list(names)))
        if _answer(lines, None) != "ready":  # never seen: a broken Python install
            raise RuntimeError("the regex worker process did not start")
        result = {}
        for key, pattern in keyed:
            _send(stdin, json.dumps(pattern))
            answer = _answer(lines, worker, WORKER_CPU_SECONDS)
            if answer == "":
                raise NetworkArgsError(
                    f"network_args {key}: regex {short(repr(pattern))}: matching it ended the regex worker "
                    "(out of memory?); refused"
                )
            if answer is None:
                raise NetworkArgsError(
                    f"network_args {key}: regex {short(repr(pattern))} did not finish matching {len(names)} "
                    f"module names in {WORKER_CPU_SECONDS:g} s of CPU time: its repetitions can match the same "
                    "text in many ways (like (.|.)* or many .* in a row), so Python's re backtracks for hours; "
                    "refused, write it without the ambiguous repetition"
                )
            result[pattern] = frozenset(names[i] for i in json.loads(answer))
        return result
    finally:
        proc.kill()  # a runaway match really stops: the process ends, whatever re is doing
        proc.wait()
        with contextlib.suppress(OSError):
            stdin.close()


def _send(stdin: IO[str], line: str) -> None:
    try:
        stdin.write(line + "\n")
        stdin.flush()
    except BrokenPipeError:
        pass  # the worker died (out of memory on a pattern): _answer reports it


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    with stream:
        for line in stream:
            lines.put(line.strip())
    lines.put("")  # end of output: the worker is gone


def _answer(lines: queue.Queue, worker: psutil.Process | None, cpu_seconds: float = 0.0) -> str | None:
    """The worker's next line; "" when the worker has ended; None when it has spent `cpu_seconds` of CPU time
    waiting for it, or WORKER_WALL_SECONDS of wall time (without a worker to watch: wall time only)."""
    spent = _cpu(worker)
    start = time.monotonic()
    while True:
        try:
            return lines.get(timeout=0.02 if worker else WORKER_WALL_SECONDS)
        except queue.Empty:
            if worker is None or time.monotonic() - start > WORKER_WALL_SECONDS:
                return None
            if _cpu(worker) - spent > cpu_seconds:
                return None


def _cpu(worker: psutil.Process | None) -> float:
    try:
        times = worker.cpu_times() if worker is not None else None
    except psutil.Error:  # it ended: its last line (or the end) is in the queue
        return 0.0
    return times.user + times.system if times is not None else 0.0
