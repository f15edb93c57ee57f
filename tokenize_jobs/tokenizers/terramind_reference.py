"""terratorch's own TerraMind modules, loaded from the pinned wheel's files only.

The parity tests (and anyone checking a conversion) compare terraloom against terratorch's
TerraMind code itself, not a re-implementation. Installing terratorch pulls a large
dependency tree, so, as ``bench/train_step.py`` does, the few model files are read out of
the terratorch 1.2.11 wheel into a private package directory and imported from there;
they need only torch and einops. Nothing is downloaded here: ``make install`` fetches the
wheel (``pip download --no-deps``) into ``.whl/``.

Loaded: the encoder-decoder (``TerraMind``), the backbone (``TerraMindViT``), their
embeddings and ``MODALITY_INFO``, and the tokenizers' ViT encoder and FSQ quantizer (the
tokenizer class ``VQ`` imports diffusers for its decoders, so its ``encode`` is composed
from these parts exactly as ``VQ.encode`` does).
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType

TT_VERSION = "1.2.11"
WHEEL_ENV = "TERRALOOM_TERRATORCH_WHEEL"
_BASE = "terratorch/models/backbones/terramind/"
_FILES = (
    "utils.py",
    "model/terramind.py",
    "model/terramind_vit.py",
    "model/tm_utils.py",
    "model/encoder_embeddings.py",
    "model/decoder_embeddings.py",
    "model/modality_info.py",
    "tokenizer/models/vit_models.py",
    "tokenizer/quantizers/quantize_finite_scalar.py",
)
_PACKAGES = (
    "terratorch",
    "terratorch/models",
    "terratorch/models/backbones",
    "terratorch/models/backbones/terramind",
    "terratorch/models/backbones/terramind/model",
    "terratorch/models/backbones/terramind/tokenizer",
    "terratorch/models/backbones/terramind/tokenizer/models",
    "terratorch/models/backbones/terramind/tokenizer/quantizers",
)
_loaded: Path | None = None


def find_wheel() -> Path | None:
    """``$TERRALOOM_TERRATORCH_WHEEL``, else ``terratorch-1.2.11-*.whl`` in the checkout's
    ``.whl/`` (where ``make install`` puts it) or ``.gpu/wheels/``; None if absent."""
    env = os.environ.get(WHEEL_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    root = Path(__file__).resolve().parents[2]
    for d in (root / ".whl", root / ".gpu" / "wheels"):
        found = sorted(d.glob(f"terratorch-{TT_VERSION}-*.whl"))
        if found:
            return found[0]
    return None


def load(wheel: str | os.PathLike[str] | None = None) -> Path:
    """Extract the model files once per process and put them first on ``sys.path``."""
    global _loaded
    if _loaded is not None:
        return _loaded
    w = Path(wheel) if wheel else find_wheel()
    if w is None or not w.is_file():
        raise FileNotFoundError(
            f"terratorch {TT_VERSION} wheel not found (run `make install`, or set {WHEEL_ENV})"
        )
    root = Path(tempfile.mkdtemp(prefix="terratorch_ref_"))
    for d in _PACKAGES:
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d / "__init__.py").write_text("")
    with zipfile.ZipFile(w) as z:
        for f in _FILES:
            src = z.read(_BASE + f).decode()
            # utils.py imports torchvision for a helper TerraMind's model never calls
            src = src.replace("import torchvision.transforms.functional as TF", "TF = None")
            (root / _BASE / f).write_text(src)
    if "terratorch" in sys.modules:
        raise RuntimeError("a terratorch package is already imported; the reference needs its own")
    sys.path.insert(0, str(root))
    _loaded = root
    return root


def module(name: str) -> ModuleType:
    """``module("model.terramind")`` -> terratorch's ``...terramind.model.terramind``."""
    load()
    return importlib.import_module("terratorch.models.backbones.terramind." + name)
