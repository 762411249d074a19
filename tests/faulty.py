"""`python tests/faulty.py N:SIGNAME[,M:SIGNAME] ARGS...`: `solver ARGS...` that sends itself
SIGNAME once its Nth batch is journaled, so tests kill, Ctrl-C or pause (SIGSTOP) a run at
a known point instead of racing it with a timer. `exit:SIGNAME`: once the command is over,
from the interpreter's exit handlers (a Ctrl-C that lands as the libraries tear down).
The fault is injected here, from the test side, around the journal's write and at exit:
the run loop carries no hook for it."""

import atexit
import os
import signal
import sys

from core.journal import Journal
from solver.cli import main

plan = {n if n == "exit" else int(n): getattr(signal, name)
        for n, name in (item.split(":") for item in sys.argv[1].split(","))}


def signal_at_exit():
    os.kill(os.getpid(), plan["exit"])
    sum(range(1000))  # Python code runs on, as in a library's finalizer: the signal is handled here


if "exit" in plan:  # registered first, so it runs last: after every library's own exit handler
    atexit.register(signal_at_exit)
written = Journal.add


def add_then_signal(self, predictions):
    written(self, predictions)
    self.batches = getattr(self, "batches", 0) + 1
    if self.batches in plan:
        os.kill(os.getpid(), plan[self.batches])


Journal.add = add_then_signal
sys.argv = ["solver", *sys.argv[2:]]
sys.exit(main())
