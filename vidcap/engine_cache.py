"""Where an engine writes its compile caches: a folder only one engine uses at a time.

vLLM (``VLLM_CACHE_ROOT``: torch.compile artefacts), TorchInductor (``TORCHINDUCTOR_CACHE_DIR``) and
Triton (``TRITON_CACHE_DIR``) default to one folder per user. Caption jobs that start together on one
node then compile into the same files, which has corrupted caches elsewhere (NeMo Curator #1514,
vllm#38962). A GPU slot is held by one job at a time, so a cache folder per slot is private *and*
warm: the next job on that GPU finds what the previous one compiled. Where no slot lock is taken (a
Slurm job given exactly its GPUs; no GPUs) the folder is the job's own and removed when it ends.
A variable the user set (in the environment or ``engine.env``) is left alone: sharing is then theirs.

One part of vLLM's folder is shared all the same: ``modelinfos``, what vLLM learnt about a model class
(small JSON files keyed by the hash of the model's source, each written whole and renamed). They are no
compile artefact, and without them vLLM imports the model class again in a subprocess at every engine
start: about 8 s on 2 CPU cores, paid by every job whose folder is its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

CACHE_VARS = {
    "VLLM_CACHE_ROOT": "vllm",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "TRITON_CACHE_DIR": "triton",
}


@contextlib.contextmanager
def private_caches(root: Path | None = None):
    """Point every cache variable not set already at a folder under ``root`` for the block.

    ``root`` None: a new folder of this job, removed on leaving. Yields the folder (None when the user
    set every variable).
    """
    unset = [name for name in CACHE_VARS if name not in os.environ]
    if not unset:
        yield None
        return
    own = root is None
    folder = Path(tempfile.mkdtemp(prefix="vidcap-engine-cache-")) if own else root
    for name in unset:
        path = folder / CACHE_VARS[name]
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.environ[name] = str(path)
    if "VLLM_CACHE_ROOT" in unset:
        _share_model_infos(folder / CACHE_VARS["VLLM_CACHE_ROOT"])
    try:
        yield folder
    finally:
        for name in unset:
            os.environ.pop(name, None)
        if own:
            shutil.rmtree(folder, ignore_errors=True)


def _share_model_infos(vllm_root: Path) -> None:
    """Link ``vllm_root/modelinfos`` to the user's own (vLLM's default place, which vLLM fills itself)."""
    shared = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vllm" / "modelinfos"
    link = vllm_root / "modelinfos"
    try:
        shared.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink() and not link.exists():
            link.symlink_to(shared, target_is_directory=True)
    except OSError:
        pass  # e.g. a read-only home: vLLM inspects the model class itself, as before
