"""Test hooks: failure injection and recording, parsed once, handed to the code under test.

The reliability tests make one rank fail in a precise way (skip a collective, signal
itself after an update, die half-way through a checkpoint, raise after loading) to
check that mpiml ends the job cleanly. Library code never reads the environment for
these: a fit session (and the few other places that can fail on purpose) receive a
:class:`TestHooks` object, whose fields are all ``None`` / ``False`` in production, so
the hot paths test one attribute at most.

Where the hooks come from:

* a test that launches ``mpiexec`` sets ``MPIML_TEST_*`` variables in the child's
  environment; :func:`current` parses them once per process (a malformed value is a
  :class:`~mpiml.errors.ConfigError`, not a silent no-op);
* an in-process test changes them for a block: ``with hooks.injected(record_servers=True):``.

The variables (all world ranks, update numbers counted globally):

``MPIML_TEST_SKIP_COLLECTIVE=R:T``      rank R skips the step collective of update T
``MPIML_TEST_SIGNAL=R:T:SIGNAME``       rank R sends itself SIGNAME after update T
``MPIML_TEST_KILL_IN_CHECKPOINT=T``     the writer dies half-way through the first
                                        checkpoint at update T or later
``MPIML_TEST_RAISE=R``                  ``mpiml train`` raises on rank R after loading
``MPIML_TEST_SLOW_WORKER=R:SECONDS``    parameter-server worker R sleeps after each push
``MPIML_TEST_TUNE_SIGNAL=R:PAIRS:SIG``  ``tune`` rank R signals itself after PAIRS pairs
``MPIML_TEST_RECORD_SERVERS=1``         parameter servers keep a log of every update
``MPIML_TEST_ERROR_CLASS=1``            ``mpiml`` names the error's class in its message
"""
import contextlib
import dataclasses
import os
import signal
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["TestHooks", "NO_HOOKS", "current", "injected", "from_environ"]


@dataclass(frozen=True)
class TestHooks:
    __test__ = False                  # not a pytest test class
    skip_collective: tuple = None     # (world rank, update)
    signal: tuple = None              # (world rank, update, signal number)
    kill_in_checkpoint: int = None    # update
    raise_on_rank: int = None         # world rank
    slow_worker: tuple = None         # (world rank, seconds)
    tune_signal: tuple = None         # (world rank, pairs, signal number)
    record_servers: bool = False
    error_class: bool = False

    @property
    def in_step(self):
        """A hook acts inside the step loop (the loop then takes its slower path)."""
        return self.skip_collective is not None or self.signal is not None

    def slow_seconds(self, rank):
        return self.slow_worker[1] if self.slow_worker and self.slow_worker[0] == rank else 0.0

    def checkpoint_kill_due(self, t):
        return self.kill_in_checkpoint is not None and t >= self.kill_in_checkpoint


NO_HOOKS = TestHooks()

_FIELDS = {   # variable -> (field, parser of its ':'-separated parts)
    "MPIML_TEST_SKIP_COLLECTIVE": ("skip_collective", (int, int)),
    "MPIML_TEST_SIGNAL": ("signal", (int, int, "signal")),
    "MPIML_TEST_KILL_IN_CHECKPOINT": ("kill_in_checkpoint", (int,)),
    "MPIML_TEST_RAISE": ("raise_on_rank", (int,)),
    "MPIML_TEST_SLOW_WORKER": ("slow_worker", (int, float)),
    "MPIML_TEST_TUNE_SIGNAL": ("tune_signal", (int, int, "signal")),
    "MPIML_TEST_RECORD_SERVERS": ("record_servers", (bool,)),
    "MPIML_TEST_ERROR_CLASS": ("error_class", (bool,)),
}


def _parse(name, raw, kinds):
    parts = raw.split(":")
    if len(parts) != len(kinds):
        raise ConfigError(f"{name}={raw!r}: expected {len(kinds)} ':'-separated fields")
    out = []
    for part, kind in zip(parts, kinds):
        try:
            if kind == "signal":
                out.append(signal.Signals[part])
            elif kind is bool:
                out.append(part not in ("", "0"))
            else:
                out.append(kind(part))
        except (KeyError, ValueError):
            raise ConfigError(f"{name}={raw!r}: cannot read {part!r}") from None
    return out[0] if len(out) == 1 else tuple(out)


def from_environ(environ=None):
    """The hooks the ``MPIML_TEST_*`` variables of ``environ`` ask for."""
    environ = os.environ if environ is None else environ
    values = {field: _parse(name, environ[name], kinds)
              for name, (field, kinds) in _FIELDS.items() if environ.get(name, "") != ""}
    return TestHooks(**values) if values else NO_HOOKS


_parsed = None
_injected = []


def current():
    """The hooks of this process: an injected object, else the environment's (parsed on
    the first call only)."""
    global _parsed
    if _injected:
        return _injected[-1]
    if _parsed is None:
        _parsed = from_environ()
    return _parsed


@contextlib.contextmanager
def injected(hooks=None, **changes):
    """Use ``hooks`` (default: the current ones) with ``changes`` made, in this process,
    for the duration of the block (in-process tests): ``injected(record_servers=True)``
    keeps what the environment asked for and adds the server logs."""
    use = hooks if hooks is not None else current()
    if changes:
        use = dataclasses.replace(use, **changes)
    _injected.append(use)
    try:
        yield use
    finally:
        _injected.pop()
