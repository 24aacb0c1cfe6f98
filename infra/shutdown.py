"""Leaving a command-line process the way CPython does, minus the native libraries' teardown.

pyarrow's and delta-rs's C++ thread pools can still hold a joinable ``std::thread`` when the interpreter tears its
modules down; the destructor then calls ``std::terminate`` and the process dies with SIGABRT ("terminate called
without an active exception", exit -6) after its work and output were complete (delta-io/delta-rs#2184,
apache/arrow#34314). CI saw it once, on the soak's `lakeloop lineage model champion`. A command's exit status
must say whether its work succeeded, so :func:`exit_process` does the Python half of finalization itself (join the
non-daemon threads, run the ``atexit`` handlers: Kafka producers flush, MLflow ends its runs, logging flushes, then
flush stdout and stderr) and leaves with ``os._exit``, skipping only the native teardown the OS does anyway.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def exit_code(code: object) -> int:
    """A ``SystemExit.code`` as the status the process leaves with (None = 0; a message = 1, printed to stderr)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_process(code: int) -> NoReturn:
    """Finish the Python side of the process and exit with ``code`` without running native static destructors."""
    shutdown = getattr(threading, "_shutdown", None)  # what Py_FinalizeEx calls first: thread-pool atexits, then joins
    if shutdown is not None and threading.current_thread() is threading.main_thread():
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`lakeloop ... | head`) or a closed stream: nothing more to say
            pass
    os._exit(code)
