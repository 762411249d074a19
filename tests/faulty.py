"""`python tests/faulty.py N:SIGNAME[,M:SIGNAME] ARGS...`: `solver ARGS...` that sends itself
SIGNAME once its Nth batch is journaled, so tests kill, Ctrl-C or pause (SIGSTOP) a run at
a known point instead of racing it with a timer. The fault is injected here, from the
test side, around the journal's write: the run loop carries no hook for it."""

import os
import signal
import sys

from solver.cli import main
from solver.journal import Journal

plan = {int(n): getattr(signal, name) for n, name in (item.split(":") for item in sys.argv[1].split(","))}
written = Journal.add


def add_then_signal(self, predictions):
    written(self, predictions)
    self.batches = getattr(self, "batches", 0) + 1
    if self.batches in plan:
        os.kill(os.getpid(), plan[self.batches])


Journal.add = add_then_signal
sys.argv = ["solver", *sys.argv[2:]]
sys.exit(main())
