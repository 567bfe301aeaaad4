"""Progress you can see: rank 0 shows how far a long verb has come, as a live bar on the
user's terminal or as plain lines in a batch log.

Every long verb (``train``, ``tune``, ``predict``, ``convert``, ``explain``) makes one
:class:`Progress` and tells it the count it has already reached: epochs, fits, rows,
megabytes, features. Nothing here communicates: a verb reports what rank 0 already knows
(its own share, scaled to the global total, or a counter it already reads), so progress
adds no collective to any step, block or fit.

Modes (``mpiml VERB --progress MODE``; the Python API: :func:`configured`, or the
``progress=`` argument of the library functions):

``bar``     a tqdm bar on rank 0's stderr, redrawn in place;
``lines``   a line on rank 0's stderr when the work starts, then at most every
            ``interval`` seconds (``--progress-interval``, default 10; 0: at every
            update), e.g. ``progress: tune 3/12 fits  0.4 fits/s  ETA 22 s``, and one
            when it ends;
``none``    nothing;
``auto``    ``bar`` when the user sees a terminal, ``lines`` otherwise (see
            :func:`interactive`).

Progress goes to stderr in every mode: stdout keeps the results (epoch lines, tables,
the final summary line, JSON), exactly as without progress. A Slurm job log, or a
``2>&1``, holds both streams.
"""
import contextlib
import functools
import math
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass

__all__ = ["MODES", "DEFAULT_INTERVAL", "Settings", "current", "configured", "resolve_mode",
           "interactive", "Progress"]

MODES = ("auto", "bar", "lines", "none")
DEFAULT_INTERVAL = 10.0

# process names (/proc/PID/comm, at most 15 characters) of MPI launchers: the process
# whose stderr the user looks at when a rank's own stderr is a pipe to the launcher
LAUNCHERS = frozenset({"mpiexec", "mpirun", "mpiexec.hydra", "mpiexec.mpich", "mpirun.mpich",
                       "mpiexec.openmpi", "mpirun.openmpi", "orterun", "prterun", "srun"})
# ancestors beyond which no launcher of this job can be: a Slurm step, a remote login
# (a rank on another node than mpiexec), the init process
BOUNDARIES = frozenset({"slurmstepd", "sshd", "systemd", "init"})


@dataclass(frozen=True)
class Settings:
    """What the command line asked for; ``mode=None``: nothing was asked (the Python API:
    library functions stay quiet, a fit follows its ``verbose``)."""
    mode: str = None
    interval: float = DEFAULT_INTERVAL


_current = Settings()


def current():
    """The settings in force (see :func:`configured`)."""
    return _current


@contextlib.contextmanager
def configured(mode=None, interval=None):
    """Progress settings for a block: ``with configured("lines", 5): ...``. The ``mpiml``
    verbs run inside one, from ``--progress`` and ``--progress-interval``."""
    global _current
    if mode is not None and mode not in MODES:
        raise ValueError(f"progress must be one of {', '.join(MODES)}, not {mode!r}")
    interval = DEFAULT_INTERVAL if interval is None else float(interval)
    if not interval >= 0:
        raise ValueError(f"the progress interval must be a number of seconds >= 0, not "
                         f"{interval!r}")
    before, _current = _current, Settings(mode, interval)
    try:
        yield _current
    finally:
        _current = before


def resolve_mode(mode, rank=0):
    """``bar``, ``lines`` or ``none``: what this rank shows (only rank 0 shows anything)."""
    if mode is None:
        mode = current().mode or "none"
    if mode not in MODES:
        raise ValueError(f"progress must be one of {', '.join(MODES)}, not {mode!r}")
    if rank != 0 or mode == "none":
        return "none"
    if mode == "auto":
        return "bar" if interactive()[0] else "lines"
    return mode


# ---------------------------------------------------------------- is anyone watching?
@functools.lru_cache(maxsize=1)
def interactive():
    """``(is_terminal, columns)``: whether a bar on this process's stderr reaches a
    terminal the user sees.

    Rank 0's own stderr is a terminal when it runs alone, or under ``srun --pty``. Under
    ``mpiexec`` it is a pipe to the launcher, which copies it to its own stderr: then
    the parent processes are walked through ``/proc`` (past ``hydra_pmi_proxy``,
    wrappers such as ``sh`` or ``timeout``) up to the launcher, and the launcher's
    stderr is what counts. A Slurm step (``slurmstepd``), a remote login (``sshd``: a
    rank on another node than ``mpiexec``), a stderr redirected to a file, or anything
    unreadable means: no terminal, plain lines."""
    try:
        fd = sys.stderr.fileno()
        if os.isatty(fd):
            return True, _columns(fd)
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return False, None
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return False, None               # a file: the user reads it later
    launcher = _launcher_pid()
    return _tty_of(launcher) if launcher else (False, None)


def _parent(pid):
    """``(name, parent pid)`` of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        text = fh.read().decode("utf-8", "replace")
    # the name is in parentheses and may hold spaces or parentheses itself
    name = text[text.index("(") + 1:text.rindex(")")]
    return name, int(text[text.rindex(")") + 1:].split()[1])


def _launcher_pid(depth=12):
    try:
        pid = os.getppid()
        for _ in range(depth):
            if pid <= 1:
                return None
            name, parent = _parent(pid)
            if name in LAUNCHERS:
                return pid
            if name in BOUNDARIES:
                return None
            pid = parent
    except (OSError, ValueError, IndexError):
        pass
    return None


def _tty_of(pid):
    try:
        fd = os.open(f"/proc/{pid}/fd/2", os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False, None
    try:
        return (True, _columns(fd)) if os.isatty(fd) else (False, None)
    finally:
        os.close(fd)


def _columns(fd):
    try:
        return os.get_terminal_size(fd).columns or None
    except OSError:
        return None


# ---------------------------------------------------------------- the display
def _duration(seconds):
    s = int(round(seconds))
    if s < 100:
        return f"{max(seconds, 0.0):.0f} s" if seconds >= 10 else f"{max(seconds, 0.0):.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _rate(r):
    return f"{r:,.0f}" if r >= 100 else f"{r:.3g}"


class Progress:
    """Rank 0's progress through ``total`` ``unit`` of ``what`` (see the module doc).

    Parameters
    ----------
    what : str -- the verb or phase, first word of every line (``"tune"``)
    total : float -- the count the work ends at (None: unknown)
    unit : str -- ``"rows"``, ``"fits"``, ``"epochs"``, ``"MB"``, ...
    rank : int -- the caller's rank; only rank 0 shows anything
    mode, interval : as :func:`configured` (None: the settings in force)
    scale : float -- shown count = the count given x ``scale`` (rank 0's share of rows,
        scaled to the global count, when every rank works at the same pace)
    decimals : int -- decimals of the counts shown (0: whole numbers)
    start : float -- the count already reached (a resumed run; not counted in the rate)
    poll : callable, optional -- returns the count (and optionally a note) from a
        counter the work already keeps; a daemon thread reads it between updates, so
        lines keep coming while the main thread is inside one long step
    """

    def __init__(self, what, total=None, unit="rows", *, rank=0, mode=None, interval=None,
                 scale=1.0, decimals=0, start=0.0, poll=None):
        self.what, self.total, self.unit = what, total, unit
        self.scale, self.decimals, self.poll = float(scale), int(decimals), poll
        self.mode = resolve_mode(mode, rank)
        self.interval = current().interval if interval is None else max(0.0, float(interval))
        self.done, self.note = float(start) * self.scale, ""
        self.t0 = time.monotonic()
        self.first = self.done
        self.last_line = self.last_draw = -math.inf
        self.lock = threading.Lock()
        self.bar, self.closed, self._stop, self._thread = None, False, None, None
        if self.mode == "bar":
            self._open_bar()
        elif self.mode == "lines":
            self._line(start=True)
        if poll is not None and self.mode != "none":
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._ticker, name="mpiml-progress",
                                            daemon=True)
            self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(ok=exc_type is None)
        return False

    # ------------------------------------------------------------ updates
    def update(self, done=None, total=None, note=None, force=False):
        """The work has reached ``done`` (x ``scale``); a line is due after ``interval``
        seconds, or now with ``force``."""
        if self.mode == "none" or self.closed:
            return
        with self.lock:
            self._set(done, total, note)
            self._show(force)

    def _set(self, done, total, note):
        if done is not None:
            self.done = float(done) * self.scale
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note

    def _show(self, force):
        if self.bar is not None:
            if force or time.monotonic() - self.last_draw >= 0.2:
                self._draw()
        elif force or time.monotonic() - self.last_line >= self.interval:
            self._line()

    def say(self, text):
        """A phase of the work, as one line (``progress: convert writing out.h5``); also
        after :meth:`close`."""
        if self.mode == "none":
            return
        with self.lock:
            if self.bar is not None and not self.closed:
                self.bar.write(f"progress: {self.what} {text}", file=sys.stderr)
            else:
                _err(f"progress: {self.what} {text}")

    def write(self, text, file=None):
        """A message on stdout (or ``file``) that leaves the bar intact."""
        with self.lock:
            if self.bar is not None:
                self.bar.write(text, file=file or sys.stdout)
            else:
                print(text, file=file or sys.stdout, flush=True)

    def close(self, ok=True):
        """End the display: a last line (``lines``) or the full bar, unless ``ok`` is false
        (an error: its message is the last thing the user should read)."""
        if self._stop is not None:
            self._stop.set()
            self._thread.join()
            self._stop = None
        # the poll is often a bound method of the bar's owner, which holds the bar: a
        # reference cycle that kept a fit's rows (through its step control and engine) in
        # memory after the fit until Python's cyclic garbage collector ran
        self.poll = None
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if self.bar is not None:
                if ok:
                    self._draw()
                self.bar.close()
            elif self.mode == "lines" and ok:
                self._line(end=True)

    # ------------------------------------------------------------ the two displays
    def _count(self, x):
        """Rounded down: a count is never shown ahead of the work (1.97 epochs is 1.9)."""
        unit = 10 ** self.decimals
        x = math.floor(x * unit + 1e-6) / unit
        return f"{int(x)}" if self.decimals == 0 else f"{x:.{self.decimals}f}"

    def _speed(self):
        """Units per second since the start (a resumed count is not counted)."""
        dt = time.monotonic() - self.t0
        return (self.done - self.first) / dt if dt > 0 and self.done > self.first else None

    def _line(self, start=False, end=False):
        total = ""
        if self.total is not None:
            whole = float(self.total).is_integer()
            total = f"/{int(self.total)}" if whole else f"/{self._count(self.total)}"
        text = f"progress: {self.what} {self._count(self.done)}{total} {self.unit}"
        rate = None if start else self._speed()
        if rate:
            text += f"  {_rate(rate)} {self.unit}/s"
        if end:
            finished = self.total is None or self.done >= self.total - 1e-9
            text += f"  {'done in' if finished else 'stopped after'} " \
                    f"{_duration(time.monotonic() - self.t0)}"
        elif rate and self.total is not None:
            text += f"  ETA {_duration(max(self.total - self.done, 0.0) / rate)}"
        if self.note:
            text += f"  {self.note}"
        self.last_line = time.monotonic()
        _err(text)

    def _open_bar(self):
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, desc=self.what, unit=self.unit, file=sys.stderr,
                        ncols=interactive()[1] or 80, leave=True, mininterval=0.2,
                        dynamic_ncols=False,
                        initial=round(self.done, self.decimals) if self.decimals
                        else int(round(self.done)))

    def _draw(self):
        unit = 10 ** self.decimals
        n = math.floor(self.done * unit + 1e-6) / unit
        n = n if self.decimals else int(n)
        if self.total is not None and self.bar.total != self.total:
            self.bar.total = self.total
        self.bar.n = n
        if self.note:
            self.bar.set_postfix_str(self.note, refresh=False)
        self.bar.refresh()
        self.last_draw = time.monotonic()

    def _ticker(self):
        """Between updates: read ``poll`` and show it (bar: 4 times a second; lines: as
        ``interval`` allows). Never raises: a failing poll only ends the polling."""
        period = 0.25 if self.bar is not None else min(max(self.interval, 0.2), 1.0)
        while not self._stop.wait(period):
            try:
                got = self.poll()
            except Exception:  # noqa: BLE001 - progress must never end the work
                return
            done, note = got if isinstance(got, tuple) else (got, None)
            with self.lock:
                if self.closed:
                    return
                self._set(done, None, note)
                self._show(False)


def _err(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
