"""The machinery of the bad-input suite (``tests/tools/test_bad_inputs.py``): a case, the
fork server that runs a tool's script as ``__main__`` in a child forked from a process that
has imported torch and Detectron2 already (same script, ``argv``, exit code, stdout and
stderr as a user gets, a fraction of the cost of a fresh interpreter), fresh interpreters,
and running a table of cases on a few workers in parallel."""
from __future__ import annotations

import json
import os
import queue
import re
import runpy
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence, Union

from tests.helpers import ROOT

FRESH_ALL = os.environ.get("BAD_INPUTS_FRESH") == "1"
# Lines that libraries print on their own at import (torch's C++ logger, e.g. "No CUDA
# runtime is found"); they are not the tool's answer, and the fork server prints them once.
LIBRARY_LOG = re.compile(r"^[WI]\d{4} \d\d:\d\d:\d\d")

Text = Union[str, Callable[[SimpleNamespace, Path], str]]


@dataclass(frozen=True)
class Case:
    """A tool run on one bad input. ``args`` and ``names`` get the shared fixture files
    ``f`` and the case's own scratch folder ``w``; after the run nothing may match the glob
    patterns ``absent`` (relative to ``w``). ``noisy``: the tool legitimately logs before
    failing (a converter names each bad file and shows progress), so only the last stderr
    line is checked to be the one error line."""

    tool: str
    id: str
    args: Callable[[SimpleNamespace, Path], list]
    names: Text
    absent: tuple = ()
    noisy: bool = False
    fresh: bool = False
    timeout: float = 120.0


def case_text(value: Text, f: SimpleNamespace, w: Path) -> str:
    return value(f, w) if callable(value) else value




@dataclass
class Result:
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    how: str = "fork"
    work: Path = field(default_factory=Path)


def serve() -> None:
    """Fork server: import what the tools import, then run each requested script (one JSON
    line on stdin) in a forked child as ``__main__``; answer with its exit code."""
    import detectron2.engine  # noqa: F401

    import maskrcnn_pp.data.prepare  # noqa: F401
    import maskrcnn_pp.engine.train  # noqa: F401
    import maskrcnn_pp.evaluation.visualization  # noqa: F401
    import maskrcnn_pp.studies.model_speed  # noqa: F401

    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_child(request)
        deadline = time.monotonic() + request["timeout"]
        status, timed_out = None, False
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
            elif time.monotonic() > deadline:
                timed_out = True
                os.killpg(pid, signal.SIGKILL)
            else:
                time.sleep(0.02)
        print(json.dumps({"returncode": status, "timed_out": timed_out}), flush=True)


def _run_child(request: dict) -> None:
    """In the forked child: become ``python SCRIPT ARGV...`` and exit as it would."""
    code = 1
    try:
        os.setpgrp()
        for fd, path in ((0, os.devnull), (1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_CREAT)
            os.dup2(target, fd)
            os.close(target)
        sys.argv = [request["script"], *request["argv"]]
        try:
            runpy.run_path(request["script"], run_name="__main__")
            code = 0
        except SystemExit as exit:
            if exit.code is None or isinstance(exit.code, int):
                code = exit.code or 0
            else:
                print(exit.code, file=sys.stderr)
        except BaseException:  # what the interpreter does with an uncaught exception
            traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class ForkServer:
    def __init__(self, env: dict):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.tools.bad_input_harness import serve; serve()"],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, script: str, argv: list[str], work: Path, timeout: float) -> Result:
        out, err = work / "stdout.txt", work / "stderr.txt"
        start = time.monotonic()
        self.proc.stdin.write(json.dumps({"script": str(ROOT / script), "argv": argv,
                                          "stdout": str(out), "stderr": str(err),
                                          "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return Result(answer["returncode"], out.read_text(errors="replace"),
                      err.read_text(errors="replace"), time.monotonic() - start,
                      answer["timed_out"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _run_fresh(script: str, argv: list[str], env: dict, timeout: float) -> Result:
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as expired:
        return Result(None, str(expired.stdout or ""), str(expired.stderr or ""),
                      time.monotonic() - start, True, "fresh")
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start,
                  how="fresh")



def run_cases(cases: Sequence[Case], inputs: SimpleNamespace, scratch: Path, env: dict,
              workers: int) -> tuple[dict[str, Result], str]:
    """Run every case once, on ``workers`` fork servers (or fresh interpreters) in parallel
    threads, slowest first; returns the results by case id and a summary line."""
    use_fork = hasattr(os, "fork") and not FRESH_ALL
    servers: queue.Queue = queue.Queue()
    if use_fork:
        with ThreadPoolExecutor(workers) as pool:
            for server in pool.map(lambda _: ForkServer(env), range(workers)):
                servers.put(server)
    lock = threading.Lock()
    done: dict[str, Result] = {}

    def run(case: Case) -> None:
        work = scratch / case.id
        work.mkdir()
        argv = [str(a) for a in case.args(inputs, work)]
        if case.fresh or not use_fork:
            result = _run_fresh(case.tool, argv, env, case.timeout)
        else:
            server = servers.get()
            try:
                result = server.run(case.tool, argv, work, case.timeout)
            finally:
                servers.put(server)
        result.work = work
        with lock:
            done[case.id] = result

    start = time.monotonic()
    slow_first = sorted(cases, key=lambda c: -c.timeout)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, slow_first))
    while not servers.empty():
        servers.get().close()
    forked = sum(r.how == "fork" for r in done.values())
    line = (f"{len(done)} cases on {len({c.tool for c in slow_first})} tools ({forked} forked, "
            f"{len(done) - forked} fresh interpreters) in {time.monotonic() - start:.0f} s "
            f"with {workers} workers; slowest: "
            + ", ".join(f"{k} {v.seconds:.1f} s" for k, v in
                        sorted(done.items(), key=lambda kv: -kv[1].seconds)[:3]))
    return done, line
