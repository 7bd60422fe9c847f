"""``./course formgrader``: nbgrader's web UI for this course (manual grading, per-student Autograde,
feedback), started the way it works.

It starts JupyterLab from the repository root, so that nbgrader reads ``nbgrader_config.py``, with
what formgrader needs and what a first try misses:

- the server's root folder holds the course folder (``$COURSE_GRADING_DIR``, default ``_grading/``):
  the repository when the course folder lies inside it, else the course folder itself (formgrader
  fails on every page when the course folder lies outside the server's root);
- ``--allow-root`` when the instructor is root (Jupyter refuses to start otherwise);
- bound to 127.0.0.1 unless ``--ip`` says otherwise, with a token ($JUPYTER_TOKEN, or a fresh
  random one, passed in the environment rather than on the command line, where ``ps`` would show it);
- MathJax fetched for the grading view and the feedback pages (``scripts/fetch_mathjax.sh``), and
  this module loaded as a server extension: formgrader builds the grading view's exporter with its
  own template folders only, ahead of ``nbgrader_config.py``, so :func:`_start_jupyter_server_extension`
  puts the course's templates (``grading/templates``, MathJax without a CDN) first once it exists.

It prints the formgrader's address with the token and then runs in the foreground (Ctrl-C stops it).
Under this configuration the Autograde button grades in the confined kernel and the sandbox
(:mod:`grading.nbgrader_autograde`).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

from grading.autograde import ROOT, course_folder
from grading.mathjax import TEMPLATES


def server_root(course: Path) -> Path:
    """The folder the server serves: the repository if it holds ``course``, else ``course``."""
    return ROOT if course.is_relative_to(ROOT) else course


def free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:  # a host name
        return ip == "localhost"


def command(course: Path, ip: str, port: int) -> list[str]:
    """The JupyterLab command line that serves formgrader for ``course``."""
    args = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.ip={ip}", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", f"--ServerApp.root_dir={server_root(course)}",
            "--ServerApp.jpserver_extensions=grading.formgrader=True"]
    if os.geteuid() == 0:
        args.append("--allow-root")
    return args


# -- the server extension ---------------------------------------------------------------------------
def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "grading.formgrader"}]


def _load_jupyter_server_extension(serverapp) -> None:
    """Nothing to set up while the extensions load (formgrader's exporter does not exist yet)."""


async def _start_jupyter_server_extension(serverapp) -> None:
    """With every extension loaded: the course's templates first for formgrader's grading view."""
    exporter = serverapp.web_app.settings.get("nbgrader_exporter")
    if exporter is None:
        serverapp.log.warning("grading.formgrader: nbgrader's formgrader is not loaded; nothing to configure")
        return
    serverapp.web_app.settings["nbgrader_exporter"] = type(exporter)(
        config=exporter.config, extra_template_basedirs=[str(TEMPLATES), *exporter.extra_template_basedirs])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./course formgrader", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ip", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; reach it from elsewhere through an SSH tunnel)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    args = parser.parse_args(argv)

    fetched = subprocess.run(["bash", str(ROOT / "scripts" / "fetch_mathjax.sh")])
    if fetched.returncode != 0:
        print("formgrader: MathJax could not be fetched (see above); the grading view and the feedback pages need it",
              file=sys.stderr)
        return 1
    course = course_folder()
    course.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port(args.ip)
    token = os.environ.get("JUPYTER_TOKEN") or secrets.token_urlsafe(24)
    host = f"[{args.ip}]" if ":" in args.ip else args.ip
    if not _loopback(args.ip):
        print(f"formgrader: listening on {args.ip}: anyone who can reach it and has the token can grade", file=sys.stderr)
    print(f"formgrader for the course folder {course}\n"
          f"  open  http://{host}:{port}/formgrader?token={token}\n"
          f"  (JupyterLab with the Formgrader panel: http://{host}:{port}/lab?token={token})\n"
          "  stop with Ctrl-C", flush=True)
    os.chdir(ROOT)
    os.execve(sys.executable, command(course, args.ip, port), {**os.environ, "JUPYTER_TOKEN": token})


if __name__ == "__main__":
    sys.exit(main())
