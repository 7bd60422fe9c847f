"""Entry point of the grading sandbox's child process (copied into the sandbox folder and run there).

Usage: ``python -I door_runner.py FOLDER``. Reads call requests on stdin, answers on the original
stdout; the submission's own prints go to stderr (a log file), so they cannot forge an answer.
"""

import ctypes
import os
import signal
import sys

# Die with the grader: if the process that started us is killed, so are we (Linux prctl).
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass

folder = sys.argv[1]
sys.path.insert(0, folder)
requests = os.fdopen(os.dup(0), "rb")
replies = os.fdopen(os.dup(1), "wb")
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
os.dup2(2, 1)
sys.stdin = open(os.devnull)

import door_codec as codec  # noqa: E402  (the trusted copy beside this file)
from course_lib import exercises  # noqa: E402

while True:
    try:
        request = codec.decode(codec.read_message(requests))
    except EOFError:
        break
    try:
        entry = exercises.entry_point(exercises.find(request["name"]))
        reply = codec.encode({"ok": True, "value": entry(*request["args"], **request["kwargs"])})
    except BaseException as err:  # SystemExit and KeyboardInterrupt included: they are results too
        reply = codec.encode({"ok": False, "type": type(err).__name__, "message": str(err)[:4000]})
    replies.write(codec.frame(reply))
    replies.flush()
