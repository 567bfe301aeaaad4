"""``python -m mpiml``: run a user script, or the CLI.

``python -m mpiml script.py [args]`` (or ``-m module [args]``) runs the script
like ``python script.py`` but aborts the whole MPI job if any rank raises an
uncaught exception, instead of leaving the other ranks waiting in a collective
(the behaviour of ``python -m mpi4py``). ``python -m mpiml VERB ...`` is the same
as the ``mpiml`` command.
"""
import os
import runpy
import sys


def _run_user_code(kind, target, argv):
    from .comm import abort_on_exception

    sys.argv = [target] + argv
    try:
        if kind == "module":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
            runpy.run_path(target, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code not in (None, 0):
            # a non-zero exit on one rank would leave the others waiting: end the job
            from mpi4py import MPI
            if MPI.COMM_WORLD.Get_size() > 1:
                sys.stderr.write(f"mpiml: rank {MPI.COMM_WORLD.Get_rank()}: exit({code!r}), "
                                 "aborting the job\n")
                sys.stderr.flush()
                MPI.COMM_WORLD.Abort(code if isinstance(code, int) else 1)
        raise
    except BaseException:  # noqa: BLE001
        abort_on_exception(*sys.exc_info())


def main():
    args = sys.argv[1:]
    if args and args[0] == "-m" and len(args) >= 2:
        return _run_user_code("module", args[1], args[2:])
    if args and (args[0].endswith(".py") or (os.path.isfile(args[0]) and not args[0].startswith("-"))):
        return _run_user_code("path", args[0], args[1:])
    if args[:1] in (["train"], ["tune"]):
        from ._stopsignals import hold
        hold()      # as the `mpiml` command does (see mpiml._stopsignals)
    from .cli import main as cli_main
    sys.exit(cli_main(args))


if __name__ == "__main__":
    main()
