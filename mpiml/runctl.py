"""Watch and steer a running job through its run directory.

Layout of ``--run-dir DIR``::

    DIR/control/     commands, one JSON file each (``mpiml ctl DIR ...`` writes them)
    DIR/responses/   one JSON file per command: applied at step N, or rejected because ...
    DIR/status.json  the job's state (step, epoch, loss, lr, samples/s, ranks), rank 0
    DIR/metrics.jsonl  one record per epoch and one per control event
    DIR/checkpoints/ checkpoints, unless --checkpoint-dir says otherwise

Why files: the run directory sits on the shared file system every rank and the
login node see, so ``mpiml ctl`` works from any node of a Slurm cluster with no port
to open; a command is written to a temporary name and renamed, so the job never
reads half a command. Rank 0 looks at the directory at step boundaries, at most
every :data:`POLL_SECONDS` (a ``stat`` of the directory: its modification time
changes when a command arrives), and raises a control word in the step's own
Allreduce; at that boundary every rank receives the commands by one broadcast from
rank 0 and applies them at the same step.
"""
import json
import math
import os
import re
import stat
import time
import uuid

__all__ = ["RunDir", "parse_command", "send_command", "read_status", "POLL_SECONDS",
           "SETTABLE"]

POLL_SECONDS = 0.1
STATUS_SECONDS = 1.0

# what `set` may change, with its check; name -> (type, test, description)
SETTABLE = {
    "lr": (float, lambda v: 0 < v <= 1e6, "a positive number, at most 1e6"),
    "momentum": (float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "alpha": (float, lambda v: 0 <= v <= 1e6, "a number >= 0, at most 1e6"),
    "batch_size": (int, lambda v: 1 <= v < 2 ** 31, "a positive integer below 2^31"),
}
MAX_COMMAND_BYTES = 65536       # a command file larger than this is refused unread
MAX_DEPTH = 8                   # and one nested deeper than this
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
COMMANDS = ("set", "pause", "resume", "checkpoint", "stop", "status")


class CommandError(ValueError):
    pass


def parse_command(words):
    """``["set", "lr=0.01", "batch_size=512"]`` -> ("set", {"lr": 0.01, ...}); other
    commands -> (name, {}). Raises CommandError with the reason."""
    if not words:
        raise CommandError("empty command")
    name, args = words[0], words[1:]
    if name not in COMMANDS:
        raise CommandError(f"unknown command {name!r}; commands: {', '.join(COMMANDS)}")
    if name != "set":
        if args:
            raise CommandError(f"{name} takes no arguments")
        return name, {}
    if not args:
        raise CommandError("set needs NAME=VALUE arguments, e.g. set lr=0.01")
    values = {}
    for a in args:
        key, eq, text = a.partition("=")
        if not eq or key not in SETTABLE:
            raise CommandError(f"cannot set {a!r}: settable are "
                               + ", ".join(f"{k}=<{v[2]}>" for k, v in SETTABLE.items()))
        typ, ok, what = SETTABLE[key]
        try:
            v = typ(text)
        except ValueError:
            raise CommandError(f"{key}={text!r}: must be {what}") from None
        if typ is float and not math.isfinite(v) or not ok(v):
            raise CommandError(f"{key}={text!r}: must be {what}")
        values[key] = v
    return name, values


_EXCL = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def _atomic_json(path, obj):
    """Write ``obj`` to ``path`` through a temporary created exclusively (never through a
    planted link; unique per process and call), renamed over ``path``."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, _EXCL, 0o644)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh)
    os.replace(tmp, path)


def _depth(obj, limit):
    """Raise CommandError if ``obj`` nests deeper than ``limit``."""
    if limit < 0:
        raise CommandError(f"the command nests deeper than {MAX_DEPTH} levels")
    if isinstance(obj, dict):
        for v in obj.values():
            _depth(v, limit - 1)
    elif isinstance(obj, list):
        for v in obj:
            _depth(v, limit - 1)


def _read_command(full):
    """A command file's message; only a regular file (no link, FIFO, device or
    directory) of bounded size and nesting is read."""
    st = os.lstat(full)
    if not stat.S_ISREG(st.st_mode):
        raise CommandError("not a regular file")
    if st.st_size > MAX_COMMAND_BYTES:
        raise CommandError(f"larger than {MAX_COMMAND_BYTES} bytes")
    fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd) as fh:
        text = fh.read(MAX_COMMAND_BYTES + 1)
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CommandError(f"malformed command file ({exc})") from None
    _depth(msg, MAX_DEPTH)
    if not isinstance(msg, dict):
        raise CommandError("a command file holds a JSON object")
    words = msg.get("command")
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise CommandError("'command' must be a list of words")
    cid = msg.get("id")
    if cid is not None and (not isinstance(cid, str) or not _NAME.match(cid)):
        raise CommandError("'id' must be a plain name (letters, digits, '.', '_', '-')")
    return msg, words


class RunDir:
    """The job side (every rank holds one; rank 0 does the file work)."""

    def __init__(self, path, rank):
        self.path = os.fspath(path)
        self.rank = rank
        self.control = os.path.join(self.path, "control")
        self.responses = os.path.join(self.path, "responses")
        self.metrics = os.path.join(self.path, "metrics.jsonl")
        self.status_path = os.path.join(self.path, "status.json")
        self._next_poll = 0.0
        self._mtime = None
        self._next_status = 0.0
        self.status = {}
        self.rejected = os.path.join(self.control, "rejected")
        if rank == 0:
            for d in (self.path, self.control, self.responses, self.rejected):
                os.makedirs(d, exist_ok=True)

    def start(self):
        """Rank 0, when a run starts in this directory: commands left over from an earlier
        run are answered and set aside, never applied to this one."""
        if self.rank != 0:
            return
        self.write_status(force=True, state="starting")
        for e in os.scandir(self.control):
            if e.name.endswith(".json"):
                self._set_aside(e.name, "sent before this run started (to an earlier run)")

    # ------------------------------------------------------------ rank 0, cheap
    def commands_waiting(self):
        """Rank 0: is a command waiting? (a directory stat at most every POLL_SECONDS)"""
        now = time.monotonic()
        if now < self._next_poll:
            return False
        self._next_poll = now + POLL_SECONDS
        try:
            mtime = os.stat(self.control).st_mtime_ns
        except OSError:
            return False
        if mtime == self._mtime:
            return False
        waiting = any(e.name.endswith(".json") for e in os.scandir(self.control))
        if not waiting:
            self._mtime = mtime
        return waiting

    def take_commands(self):
        """Rank 0: read and remove the waiting commands, oldest first. A file that is
        not a valid command is answered (rejected) here and not returned."""
        out = []
        names = sorted(e.name for e in os.scandir(self.control) if e.name.endswith(".json"))
        for name in names:
            full = os.path.join(self.control, name)
            try:
                msg, words = _read_command(full)
                cmd = parse_command(words)
            except (OSError, CommandError) as exc:
                self._set_aside(name, str(exc))
                continue
            out.append((msg.get("id") or name[:-5], " ".join(words), cmd))
            try:
                os.unlink(full)
            except OSError:
                pass
        return out

    def _set_aside(self, name, reason):
        """Answer a command file once (rejected) and move it out of the queue."""
        cid = name[:-5] if _NAME.match(name[:-5]) else None
        if cid is not None:
            self.respond(cid, "rejected", None, reason)
        self.log({"event": "command", "command": name, "status": "rejected", "reason": reason})
        try:
            os.replace(os.path.join(self.control, name),
                       os.path.join(self.rejected, f"{uuid.uuid4().hex[:8]}-{name}"))
        except OSError:
            pass

    def respond(self, cid, status, step, message=""):
        _atomic_json(os.path.join(self.responses, f"{cid}.json"),
                     {"id": cid, "status": status, "step": step, "message": message,
                      "time": time.time()})

    def log(self, record):
        if self.rank == 0:
            # appended, never through a planted link
            fd = os.open(self.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT |
                         getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def write_status(self, force=False, **fields):
        if self.rank != 0:
            return
        self.status.update(fields)
        now = time.monotonic()
        if force or now >= self._next_status:
            self._next_status = now + STATUS_SECONDS
            self.status["updated"] = time.time()
            _atomic_json(self.status_path, self.status)


# ------------------------------------------------------------------------------ client side
def send_command(run_dir, words, timeout=30.0):
    """Write a command for the job in ``run_dir`` and wait for its response (a dict),
    or raise TimeoutError. ``status`` is answered from status.json without the job."""
    parse_command(words)                       # refuse locally what the job would refuse
    if words[0] == "status":
        return read_status(run_dir)
    with_status = os.path.join(run_dir, "status.json")
    if os.path.exists(with_status) and read_status(run_dir).get("state") == "finished":
        raise CommandError(f"the run in {run_dir} has finished: nothing to {words[0]}")
    control = os.path.join(run_dir, "control")
    if not os.path.isdir(control):
        raise FileNotFoundError(f"{run_dir} is not a run directory (no control/ in it): start "
                                "the job with --run-dir")
    cid = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    _atomic_json(os.path.join(control, f"{cid}.json"), {"id": cid, "command": list(words)})
    resp = os.path.join(run_dir, "responses", f"{cid}.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(resp):
            with open(resp) as fh:
                return json.load(fh)
        time.sleep(0.05)
    raise TimeoutError(f"no response from the job in {run_dir} within {timeout:g} s (is it "
                       "running? the command stays queued in control/)")


def read_status(run_dir):
    path = os.path.join(run_dir, "status.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no status in {run_dir} yet (status.json)")
    with open(path) as fh:
        return json.load(fh)
