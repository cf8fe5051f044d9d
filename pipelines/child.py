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


_in_child = False  # this interpreter is a PreparedChild's
_after_answer: list = []


def after_answer(fn) -> None:
    """Run ``fn()`` once this child's answer has gone to its parent: work the parent does not need
    before going on (it reaps the process later), such as rendering Data Docs while the parent renders
    the report. ``fn`` must not raise. Outside a PreparedChild: now."""
    if _in_child:
        _after_answer.append(fn)
    else:
        fn()


def _child_main(conn, debug, warm, interruptible) -> None:
    global _in_child
    _in_child = True
    if not interruptible:  # its parent decides when it stops (and waits for its answer)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    configure_logging(debug)
    try:
        # imports (and helpers such as a waiting dbt) load before the work is known; a failure here is
        # the call's outcome
        warmed = call_reporting(warm) if warm is not None else ("ok", None)
        while True:
            try:
                job = conn.recv()
            except EOFError:  # the parent went away, or closed an unused child
                return
            if job is None:
                return
            kind, fn, args, kwargs = job
            if kind == "call":
                break
            if warmed[0] == "ok":  # a hint: work ahead of the call (``PreparedChild.hint``)
                _run_hint(fn, args, kwargs)
        send_outcome(conn, call_reporting(fn, *args, **kwargs) if warmed[0] == "ok" else warmed, fn)
    finally:
        conn.close()
    while _after_answer:
        _after_answer.pop(0)()


def _run_hint(fn, args, kwargs) -> None:
    """A hint is work the call would otherwise do itself (see ``PreparedChild.hint``): one that fails
    has done nothing the call relies on, so its error is logged and the call goes on without it."""
    import logging

    try:
        fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - the call redoes the work and reports what really fails
        logging.getLogger(__name__).warning("work ahead of the call (%s) failed; the call does it itself",
                                            getattr(fn, "__name__", fn), exc_info=True)  # fmt: skip


class PreparedChild:
    """A spawned interpreter started ahead of its one call: ``warm()`` (imports, helper processes)
    runs there while the parent does earlier work, then ``call(fn, ...)`` runs ``fn`` in it. Start it
    from the parent's main thread (``die_with_parent``). ``close()`` ends a child never called.

    ``interruptible=False``: Ctrl-C does not reach the child (a parent that finishes its work on the
    first signal). ``daemon=True``: a parent that exits while the call runs ends the child instead of
    waiting for it."""

    def __init__(self, name: str = "stage", warm=None, *, interruptible: bool = True, daemon: bool = False):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.name = name
        self._conn, child_conn = context.Pipe(duplex=True)
        self._process = context.Process(target=_child_main, args=(child_conn, debugging(), warm, interruptible),
                                        name=f"revenue-{name}", daemon=daemon)  # fmt: skip
        self._process.start()
        child_conn.close()

    def hint(self, fn, *args, **kwargs) -> None:
        """Have the child run ``fn(*args, **kwargs)`` once ``warm`` is done, before the call and without
        an answer: work the call can use when it is there and redoes when it is not (a hint that fails
        is logged there, nothing more). A child that has gone away is the call's error, not this one's."""
        try:
            self._conn.send(("hint", fn, args, kwargs))
        except OSError:
            pass

    def call(self, fn, *args, wait: bool = True, **kwargs):
        """``fn(*args, **kwargs)`` in the child (``fn``, the arguments, the value and its errors must
        pickle). A RevenueError raised there is raised here; a crash (in ``warm`` too) raises
        StageCrashed with the child's traceback. Ctrl-C reaches the child too (same process group):
        the parent waits for it to clean up, then raises KeyboardInterrupt. ``wait=False``: return as
        soon as the child has answered, without waiting for its interpreter to shut down (a large one
        takes a second or two): ``close()`` or ``end()`` waits for it, ``exited()`` tells."""
        process, name = self._process, self.name
        try:
            self._conn.send(("call", fn, args, kwargs))
            kind, value = self._conn.recv()
        except (EOFError, OSError):  # killed (OOM killer, kill -9) before it could answer
            process.join()
            raise StageCrashed(f"the {name} process died (exit {process.exitcode})") from None
        except KeyboardInterrupt:
            process.join(timeout=60)  # it got the same Ctrl-C: let it remove its scratch files
            if process.is_alive():
                process.kill()
                process.join()
            raise
        finally:
            self._conn.close()
        if wait:
            process.join()
        return unwrap(kind, value, name)

    def exited(self) -> bool:
        """Whether the process has exited (and then reaped it)."""
        return not self._process.is_alive()

    def end(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the process to exit, then kill it."""
        self._process.join(timeout=timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def close(self) -> None:
        """End a child that was never called (it has done nothing but ``warm``); after ``call``, wait
        for the child to exit."""
        if not self._conn.closed:
            self._conn.close()
            self._process.kill()  # its helpers (a waiting dbt) die with it
        self._process.join()


def run_in_child(fn, *args, name: str = "stage", **kwargs):
    """``fn(*args, **kwargs)`` in a spawned interpreter started for it (see ``PreparedChild.call``)."""
    return PreparedChild(name).call(fn, *args, **kwargs)


def release_memory() -> None:
    """Give the memory a finished stage freed back to the system: Python's garbage, Arrow's pool and
    the C allocator's free lists (glibc keeps freed pages mapped until asked; other libcs: no-op)."""
    import ctypes
    import gc

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
