"""Entry point of the grading sandbox's child process (copied into the sandbox folder and run there).

Usage: ``python -I door_runner.py FOLDER`` (inside bubblewrap as root). First, before anything of the
submission is imported, it confines itself (``door_sandbox.confine`` with ``FOLDER/spec.json``:
IPC, resource limits, Landlock, then an unprivileged uid) and answers with a hello that carries the
confinement report. Then it reads call requests on stdin and answers on the original stdout; the
submission's own prints go to stderr (a log file), so they do not mix with the answers. Code that
writes to the answer pipe itself can send no more than a return value could: the trusted side reads
it under the size and time limits of ``grading.codec``.
"""

import json
import os
import sys

folder = sys.argv[1]
sys.path.insert(0, folder)
requests = os.fdopen(os.dup(0), "rb")
replies = os.fdopen(os.dup(1), "wb")
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
os.dup2(2, 1)
sys.stdin = open(os.devnull)

import door_sandbox  # noqa: E402  (the trusted copies beside this file)

with open(os.path.join(folder, "spec.json")) as f:
    spec = json.load(f)
try:
    report = door_sandbox.confine(spec)
except Exception as err:  # refuse to run student code half confined
    print(f"sandbox: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    os._exit(71)
os.chdir(spec.get("work") or folder)

import door_codec as codec  # noqa: E402

replies.write(codec.frame(codec.encode({"ready": True, "confinement": report})))
replies.flush()

from course_lib import exercises  # noqa: E402

while True:
    try:
        message = codec.read_message(requests)
    except EOFError:
        break
    try:  # a model in the request is built here, from the submission's course_lib where it is theirs
        request = codec.decode(message, models=True)
        entry = exercises.entry_point(exercises.find(request["name"]))
        reply = codec.encode({"ok": True, "value": entry(*request["args"], **request["kwargs"])})
    except BaseException as err:  # SystemExit and KeyboardInterrupt included: they are results too
        reply = codec.encode({"ok": False, "type": type(err).__name__, "message": str(err)[:4000]})
    replies.write(codec.frame(reply))
    replies.flush()
