"""Saving and loading tokenizers: one directory per modality with a ``config.json``.

``config.json`` carries the format version, modality, kind, the full model config
(levels, normalisation, architecture) and the identity
``{"id", "version", "sha256"}`` that the encode job stores next to the tokens. The
weights are ``model.safetensors`` (image tokenizers, EMA weights) or ``tokenizer.json``
(CAPTION); GEO has none. Loading re-hashes the weights and refuses a directory whose
files no longer match its identity.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from terraloom.schemas.modalities import TokenizerKind, get_modality
from terraloom.storage.location import Location
from terraloom.storage.transfer import cache_dir, download_tree
from terraloom.tokenize_jobs.protocol import TOKENIZER_FORMAT_VERSION
from terraloom.tokenize_jobs.tokenizers.caption import CaptionTokenizer
from terraloom.tokenize_jobs.tokenizers.geo import GeoTokenizer
from terraloom.tokenize_jobs.tokenizers.image import FSQVAE, FSQImageTokenizer, FSQVAEConfig

TOKENIZER_FORMAT = "terraloom-tokenizer"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CAPTION_NAME = "tokenizer.json"

Tokenizer = FSQImageTokenizer | GeoTokenizer | CaptionTokenizer


def tokenizer_dir(root: str | os.PathLike[str], modality: str) -> Path:
    """Conventional directory of a modality's tokenizer under a root (``root/s2l2a``)."""
    return Path(root) / get_modality(modality).name.lower()


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _header(
    modality: str, kind: str, identity: dict[str, str], training: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "format": TOKENIZER_FORMAT,
        "format_version": TOKENIZER_FORMAT_VERSION,
        "modality": modality,
        "kind": kind,
        "identity": identity,
        "training": training,
    }


def save_image_tokenizer(
    model: FSQVAE, out: str | os.PathLike[str], training: dict[str, Any] | None = None
) -> dict[str, str]:
    """Write ``model.safetensors`` + ``config.json``; return the identity."""
    from terraloom.storage.files import save_safetensors

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_NAME + ".tmp")
    save_safetensors(state, tmp, metadata={"modality": cfg.modality, "version": cfg.version})
    os.replace(tmp, out / WEIGHTS_NAME)
    identity = {
        "id": f"{cfg.modality}-fsqvae",
        "version": cfg.version,
        "sha256": sha256_file(out / WEIGHTS_NAME),
    }
    config = _header(cfg.modality, cfg.kind, identity, training)
    config.update(
        weights=WEIGHTS_NAME,
        levels=list(cfg.levels),
        vocab_size=cfg.vocab_size,
        patch_size=cfg.patch_size,
        normalization={
            "mean": list(cfg.mean),
            "std": list(cfg.std),
            "nodata": cfg.to_dict()["nodata"],
        },
        model=cfg.to_dict(),
    )
    _write_json(out / CONFIG_NAME, config)
    return identity


def save_geo_tokenizer(tok: GeoTokenizer, out: str | os.PathLike[str]) -> dict[str, str]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = _header("GEO", str(TokenizerKind.GEO_BINS), tok.identity, None)
    config.update(weights=None, vocab_size=tok.vocab_size, model=tok.config_dict())
    _write_json(out / CONFIG_NAME, config)
    return tok.identity


def save_caption_tokenizer(
    tok: CaptionTokenizer, out: str | os.PathLike[str], training: dict[str, Any] | None = None
) -> dict[str, str]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sha = tok.save(out / CAPTION_NAME)
    identity = {
        "id": "CAPTION-wordpiece",
        "version": f"{TOKENIZER_FORMAT_VERSION}.{sha[:12]}",
        "sha256": sha,
    }
    tok.identity = identity
    config = _header("CAPTION", str(TokenizerKind.WORDPIECE), identity, training)
    config.update(
        weights=CAPTION_NAME,
        vocab_size=tok.vocab_size,
        trained_vocab_size=tok.trained_vocab_size,
        model={"vocab_size": tok.vocab_size, "n_sentinels": tok.n_sentinels},
        special_tokens={"pad": tok.pad_id, "unk": tok.unk_id, "sos": tok.sos_id, "eos": tok.eos_id},
    )
    _write_json(out / CONFIG_NAME, config)
    return identity


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a tokenizer directory (or the file itself)."""
    p = Path(path)
    cfg_path = p if p.is_file() else p / CONFIG_NAME
    if not cfg_path.exists():
        raise FileNotFoundError(f"no tokenizer config at {cfg_path}")
    config: dict[str, Any] = json.loads(cfg_path.read_text(encoding="utf-8"))
    if config.get("format") != TOKENIZER_FORMAT:
        raise ValueError(
            f"{cfg_path} is not a terraloom tokenizer config (format {config.get('format')!r})"
        )
    if config.get("format_version") != TOKENIZER_FORMAT_VERSION:
        raise ValueError(
            f"{cfg_path}: tokenizer format version {config.get('format_version')} is not supported "
            f"(this code reads version {TOKENIZER_FORMAT_VERSION})"
        )
    return config


def _check_sha(path: Path, identity: dict[str, str]) -> str:
    sha = sha256_file(path)
    if sha != identity.get("sha256"):
        raise ValueError(
            f"{path} does not match its config identity (sha256 {sha} != {identity.get('sha256')})"
        )
    return sha


def load_tokenizer(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Tokenizer:
    """Load any tokenizer directory written by ``train``: image (FSQ-VAE), GEO or CAPTION.

    Image tokenizers come back in eval mode on ``device`` with ``encode(pixels) ->
    codes`` and ``decode(codes) -> pixels``; GEO and CAPTION with ``encode_batch`` /
    ``decode_batch``.
    """
    root = Path(path)
    root = root.parent if root.is_file() else root
    config = read_config(root)
    kind = config["kind"]
    identity = dict(config["identity"])
    if kind in (str(TokenizerKind.FSQ_VAE), str(TokenizerKind.FSQ_VAE_CLASSES)):
        from safetensors.torch import load_file

        weights = root / config["weights"]
        _check_sha(weights, identity)
        cfg = FSQVAEConfig.from_dict(config["model"])
        if cfg.version != identity.get("version"):
            raise ValueError(
                f"{root}: model config hash {cfg.version} != identity version {identity.get('version')}"
            )
        model = FSQVAE(cfg)
        model.load_state_dict(load_file(str(weights)))
        return FSQImageTokenizer(model, identity).to(device)
    if kind == "terramind_vit_fsq":  # TerraMind v1's own tokenizer encoders (interop)
        from terraloom.tokenize_jobs.tokenizers.terramind import load_terramind_tokenizer

        _check_sha(root / config["weights"], identity)
        return load_terramind_tokenizer(root, config, device)  # type: ignore[return-value]
    if kind == str(TokenizerKind.GEO_BINS):
        return GeoTokenizer(float(config["model"]["bin_deg"]))
    if kind == str(TokenizerKind.WORDPIECE):
        weights = root / config["weights"]
        _check_sha(weights, identity)
        m = config["model"]
        return CaptionTokenizer.from_file(weights, int(m["vocab_size"]), int(m["n_sentinels"]))
    raise ValueError(f"{root}: unknown tokenizer kind {kind!r}")


class MissingTokenizerError(FileNotFoundError):
    """No tokenizer directory where one is needed (its message is the one-line reason)."""


def local_tokenizers(root: str | os.PathLike[str] | Location, names: Sequence[str]) -> Path:
    """A tokenizer root as a local path: itself when local, else a read-through copy of the
    named modalities' folders (``config.json`` + weights, small) in the local cache. Loading
    re-hashes the weights against ``config.json``'s identity, so a stale copy is refused,
    never used; files are copied again whenever their remote size differs."""
    loc = Location.parse(root)
    if loc.is_local:
        return loc.local_path
    if not loc.exists():
        raise MissingTokenizerError(f"tokenizer directory {loc} does not exist")
    dest = cache_dir(loc, "tokenizers")
    wanted = {get_modality(n).name.lower() for n in names}
    download_tree(loc, dest, include=lambda rel: rel.split("/", 1)[0] in wanted)
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def load_tokenizers(
    root: str | os.PathLike[str] | Location,
    names: Sequence[str],
    device: torch.device | str = "cpu",
) -> dict[str, Tokenizer]:
    """``root/<modality lowercase>/`` tokenizers by modality name: the one loader of a
    tokenizer root, for the encode job, generation and evaluation alike.

    Raises :class:`MissingTokenizerError` when ``root`` or a modality's directory is missing
    (a caller may skip optional modalities on it) and ``ValueError`` when one cannot be loaded.
    """
    base = local_tokenizers(root, names)
    if not base.is_dir():
        raise MissingTokenizerError(f"tokenizer directory {base} does not exist")
    out: dict[str, Tokenizer] = {}
    for raw in names:
        name = get_modality(raw).name
        path = tokenizer_dir(base, name)
        if not path.is_dir():
            raise MissingTokenizerError(
                f"no {name} tokenizer at {path} (train it with `terraloom-tokenize train`)"
            )
        try:
            out[name] = load_tokenizer(path, device=device)
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"cannot load the {name} tokenizer from {path}: {exc}") from exc
    return out
