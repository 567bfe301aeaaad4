"""Collective watchdog: a training loop that stops making progress ends the job
with a report of where every rank is, instead of hanging.

The training loop does nothing for it: a daemon thread on every rank reads the
update counter (``StepControl.progress``, the kernel's ``t``) a few times a
second, so the watchdog costs nothing per step. When it has not moved for
``timeout`` seconds (a collective that does not complete: another rank is
stopped, hung, dead without the launcher noticing, or on a different code
path), the thread asks every other rank's watchdog where it is, over a
communicator of its own, waits a few seconds for answers, and the lowest stalled
rank prints one report and calls ``MPI_Abort``. A rank that does not answer is
stopped or hung outside MPI.

The threads talk to each other with point-to-point messages while the main
threads may sit in a blocking collective, so this needs MPI_THREAD_MULTIPLE
(what mpi4py asks for by default). Without it the watchdog still aborts, with a
report of the local rank only.
"""
import contextlib
import os
import sys
import threading
import time

from mpi4py import MPI

__all__ = ["Watchdog", "watching", "EXIT_WATCHDOG"]

EXIT_WATCHDOG = 70        # exit code of a job ended by the watchdog (sysexits' EX_SOFTWARE)
_QUERY, _ANSWER = 7401, 7402


class Watchdog:
    """One rank's watchdog thread for one training run (see the module doc)."""

    def __init__(self, comm, timeout, control, poll=None):
        self.comm = comm
        self.timeout = float(timeout)
        self.control = control
        self.poll = poll or min(0.25, self.timeout / 8)
        self.answer_wait = min(5.0, max(1.0, self.timeout / 2))
        self.multiple = MPI.Query_thread() >= MPI.THREAD_MULTIPLE
        self.wcomm = _watch_comm(comm)
        self.rank, self.size = self.wcomm.Get_rank(), self.wcomm.Get_size()
        self._stop = threading.Event()
        self._last = (control.progress, time.monotonic())
        self._thread = threading.Thread(target=self._run, name="mpiml-watchdog", daemon=True)

    def start(self):
        self._query = self.wcomm.irecv(source=MPI.ANY_SOURCE, tag=_QUERY) if self.multiple else None
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()
        if self._query is not None:
            self._query.Cancel()
            self._query.Wait()

    # ---------------------------------------------------------------- the thread
    def status(self):
        progress, since = self._last
        return {"rank": self.rank, "host": MPI.Get_processor_name(), "pid": os.getpid(),
                "where": self.control.where, "step": progress,
                "stalled": time.monotonic() - since}

    def _serve(self):
        """Answer the other watchdogs' questions."""
        if self._query is None:
            return
        while True:
            done, asker = self._query.test()
            if not done:
                return
            self.wcomm.isend(self.status(), dest=asker, tag=_ANSWER)
            self._query = self.wcomm.irecv(source=MPI.ANY_SOURCE, tag=_QUERY)

    def _run(self):
        while not self._stop.wait(self.poll):
            progress = self.control.progress
            if progress != self._last[0] or getattr(self.control, "paused", False):
                # a paused run (mpiml ctl pause) is waiting on purpose
                self._last = (progress, time.monotonic())
            self._serve()
            if time.monotonic() - self._last[1] > self.timeout:
                self._report()
                return

    def _report(self):
        answers = {self.rank: self.status()}
        pending = {}
        if self.multiple:
            for r in range(self.size):
                if r != self.rank:
                    self.wcomm.isend(self.rank, dest=r, tag=_QUERY)
                    pending[r] = self.wcomm.irecv(source=r, tag=_ANSWER)
            deadline = time.monotonic() + self.answer_wait
            while pending and time.monotonic() < deadline:
                self._serve()
                for r, req in list(pending.items()):
                    done, msg = req.test()
                    if done:
                        answers[r] = msg
                        del pending[r]
                time.sleep(0.02)
        stalled = sorted(r for r, a in answers.items() if a["stalled"] >= self.timeout / 2)
        if stalled and stalled[0] != self.rank:
            # a lower rank reports; give it time, then make sure the job ends anyway
            end = time.monotonic() + 2 * self.answer_wait
            while time.monotonic() < end:
                self._serve()
                time.sleep(0.05)
            _abort()
        silent = sorted(pending) if self.multiple else []
        lines = [f"mpiml: watchdog: no progress for {self.timeout:g} s (--comm-timeout); "
                 "a collective did not complete. Ending the job."]
        if stalled:
            first = answers[stalled[0]]
            lines.append(f"  waiting in {first['where']}, step {first['step']}: "
                         f"rank {_ranges(stalled)}")
        moving = sorted(r for r in answers if r not in stalled)
        for r in moving:
            a = answers[r]
            lines.append(f"  rank {r} elsewhere: {a['where']}, step {a['step']} "
                         f"(host {a['host']}, pid {a['pid']})")
        if silent:
            lines.append(f"  not answering (stopped, or hung outside MPI): rank {_ranges(silent)}")
        if not self.multiple:
            lines.append("  (MPI is not in MPI_THREAD_MULTIPLE mode: other ranks were not asked)")
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
        # give the launcher time to forward the report before MPI_Abort tears the job down
        time.sleep(1.0)
        _abort()


def _abort():
    MPI.COMM_WORLD.Abort(EXIT_WATCHDOG)
    os._exit(EXIT_WATCHDOG)


def _ranges(ranks):
    return ", ".join(map(str, ranks))


def _watch_comm(comm):
    """The watchdogs' own communicator (a Dup made once per mpiml Comm)."""
    wcomm = getattr(comm, "_watch_comm", None)
    if wcomm is None:
        wcomm = comm.mpi.Dup()
        comm._watch_comm = wcomm
    return wcomm


@contextlib.contextmanager
def watching(comm, timeout, control):
    """Run the body under a watchdog (collective; no-op on one rank or without timeout)."""
    if not timeout or comm.size == 1:
        yield None
        return
    dog = Watchdog(comm, timeout, control)
    dog.start()
    try:
        yield dog
    finally:
        dog.stop()
