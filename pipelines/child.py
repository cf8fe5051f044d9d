"""Run a stage in a fresh interpreter, so that its peak memory is its own.

A process's resident memory does not go back down to what it needs: after Beam's ingest and
metrics stages, `revenue run` still holds a few hundred MB (modules, allocator arenas), and the
next stage's peak lands on top of it. A stage run by ``run_in_child`` starts from a new
interpreter (``spawn``: no copy of the parent's pages, no threads inherited half-way through
something), returns its value or raises its error in the parent, and takes its memory with it.
"""

from __future__ import annotations

import signal

from pipelines.logs import configure_logging, debugging
from transforms.errors import RevenueError


def die_with_parent() -> None:
    """Linux: the kernel sends this process SIGKILL when the thread that started it ends, so a parent
    killed with -9 takes its children with it (call from the child; start the child from the parent's
    main thread). Safe for our stages: commits are whole or absent, the warehouse is replaced
    atomically, and the next run removes what a killed one left."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class StageCrashed(RuntimeError):
    """A bug (not a RevenueError) stopped the child; its traceback is in the message."""


def call_reporting(fn, *args, **kwargs) -> tuple[str, object]:
    """``fn(*args, **kwargs)`` as an outcome a parent process can receive (see ``unwrap``): ``("ok",
    value)``, ``("error", RevenueError)``, or ``("crash", the error and its traceback as text)``."""
    try:
        return "ok", fn(*args, **kwargs)
    except RevenueError as exc:  # an error the CLI turns into its exit status: raised again in the parent
        return "error", exc
    except BaseException as exc:  # noqa: BLE001 - a bug or an interrupt: its traceback goes to the parent
        import traceback

        return "crash", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"


def send_outcome(conn, outcome: tuple[str, object], fn) -> None:
    try:
        conn.send(outcome)
    except Exception as exc:  # noqa: BLE001 - an unpicklable value or error is a bug: say which
        conn.send(("crash", f"cannot send the result of {getattr(fn, '__name__', fn)} back: {exc!r}"))


def unwrap(kind: str, value, name: str):
    """In the parent: the value of an ``("ok", value)`` outcome; an error raised again; a crash as
    StageCrashed."""
    if kind == "ok":
        return value
    if kind == "error":
        raise value
    raise StageCrashed(f"the {name} process failed: {value}")


def _child_main(conn, debug, fn, args, kwargs) -> None:
    die_with_parent()
    configure_logging(debug)
    try:
        send_outcome(conn, call_reporting(fn, *args, **kwargs), fn)
    finally:
        conn.close()


def run_in_child(fn, *args, name: str = "stage", **kwargs):
    """``fn(*args, **kwargs)`` in a spawned interpreter (``fn``, the arguments, the value and its errors
    must pickle). A RevenueError raised there is raised here; a crash raises StageCrashed with the
    child's traceback. Ctrl-C reaches the child too (same process group): the parent waits for it to
    clean up, then raises KeyboardInterrupt."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(sender, debugging(), fn, args, kwargs), name=f"revenue-{name}")
    process.start()
    sender.close()
    try:
        kind, value = receiver.recv()
    except EOFError:  # killed (OOM killer, kill -9) before it could answer
        process.join()
        raise StageCrashed(f"the {name} process died (exit {process.exitcode})") from None
    except KeyboardInterrupt:
        process.join(timeout=60)  # it got the same Ctrl-C: let it remove its scratch files
        if process.is_alive():
            process.kill()
            process.join()
        raise
    finally:
        receiver.close()
    process.join()
    return unwrap(kind, value, name)
