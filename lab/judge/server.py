"""A local OpenAI-compatible judge: llama-cpp-python's server for a GGUF, on localhost only."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from lab.core.errors import BadInput, EmlabError
from lab.core.io import emlab_home

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})  # a local judge binds only here

_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def _check_llama_cpp_server() -> None:
    missing = [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise EmlabError(f"a local judge needs llama-cpp-python's server ({', '.join(missing)} not installed): "
                         f"pip install 'llama-cpp-python[server]'  (or: pip install 'emlab[judge]')")


def _port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # as servers do: lingering TIME_WAIT connections of a stopped server must not count
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def serve_local_judge(gguf_path: str | Path, port: int, host: str = "127.0.0.1", n_ctx: int = 2048,
                      wait_s: float = 120.0, log_path: Path | None = None) -> subprocess.Popen:
    """Start llama-cpp-python's OpenAI-compatible server for a GGUF judge; return the process.

    Runs `python -m llama_cpp.server --model X --host 127.0.0.1 --port P --n_ctx 2048
    --n_threads 1 --n_threads_batch 1` (one thread: the judge shares the machine with
    the model under study), and waits at most `wait_s` until `/v1/models` answers.
    The server binds to this machine only. Its output goes to `log_path` (default
    `emlab_home()/logs/judge-server-<port>.log`). Stop it with `stop_local_judge`.
    Point a `JudgeConfig(base_url=f"http://{host}:{port}/v1", model=<file name>)` at it.
    """
    if host not in LOCAL_HOSTS:
        raise BadInput(f"the local judge only binds to this machine (127.0.0.1, localhost, ::1), not {host!r}")
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise BadInput(f"{gguf_path}: no such GGUF file")
    _check_llama_cpp_server()
    if not _port_is_free(host, port):
        # otherwise the readiness probe could succeed against whatever already listens there
        raise BadInput(f"port {port} on {host} is already in use")
    log_path = Path(log_path) if log_path else emlab_home() / "logs" / f"judge-server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--host", host,
           "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "1", "--n_threads_batch", "1"]
    with open(log_path, "ab") as log_file:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url_host = f"[{host}]" if ":" in host else host
    url = f"http://{url_host}:{port}/v1/models"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmlabError(f"local judge server exited with code {proc.returncode}: {_log_tail(log_path)}")
        if _answers(url):
            return proc
        time.sleep(0.25)
    stop_local_judge(proc)
    raise EmlabError(f"local judge server did not answer {url} within {wait_s:.0f}s (log: {log_path})")


def stop_local_judge(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Terminate a server started by `serve_local_judge`; kill it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
