"""TerraMind v1 (terratorch 1.2.11) state dicts <-> terraloom weights, an exact mapping.

The two models compute the same function; their weights differ only in layout:

* names: ``encoder.*`` / ``decoder.*`` blocks and norms match one to one,
  ``decoder_proj_context`` is ``context_proj``;
* SwiGLU (base/large): TerraMind's ``fc1`` (gate input) and ``fc3`` (value) are
  terraloom's ``fc1`` split in two halves (``silu(a) * g``);
* pixel patch embeddings: TerraMind flattens a patch as (ph pw c), terraloom as (c ph pw);
* tables: terraloom's one input token table holds each token modality's
  ``token_emb`` at an offset (row 0 is a zero padding row); modality embeddings are rows
  of ``inputs.modality`` / ``queries.modality``; ``queries.tokens`` row 0 is ``mask_token``;
  output heads are the decoders' ``to_logits`` (tied to their ``token_emb``);
* sin-cos position tables are the same formula (checked on import, rebuilt on export);
  base/large LayerNorms without bias hold a zero ``bias`` buffer in TerraMind.

Not carried: coordinates and captions (TerraMind's 30,000-id vocabularies do not map onto
terraloom's GEO bins and caption vocabulary; listed in the report, never silently dropped)
and register tokens (v1 has none). Nothing here imports terratorch: a state dict is data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from terraloom.model.config import (
    PIXEL_SUFFIX,
    TOKEN_SUFFIX,
    Kind,
    ModelConfig,
    modality_specs,
    model_preset,
)
from terraloom.model.embeddings import _key as patch_key
from terraloom.model.embeddings import _position_table
from terraloom.schemas.modalities import (
    TERRAMIND_V1,
    terramind_key_to_modality,
    terramind_modality,
)

VARIANTS = ("tiny", "small", "base", "large")
#: Position-table tolerance: both sides build the same sin-cos formula (float32 vs float64).
POS_TOL = 1e-5


class InteropError(ValueError):
    """A state dict that does not map exactly (bad input: one line, exit 2)."""


@dataclass(frozen=True)
class ImportReport:
    """What an import carried over and what it left out, with the reason."""

    variant: str
    pixel_inputs: tuple[str, ...]
    token_inputs: tuple[str, ...]
    targets: tuple[str, ...]
    #: TerraMind modality key -> why it is not carried over.
    skipped: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"variant {self.variant}: pixel inputs {', '.join(self.pixel_inputs) or '-'}; "
            f"token inputs {', '.join(self.token_inputs) or '-'}; targets {', '.join(self.targets) or '-'}"
        ]
        out += [f"left out {k}: {why}" for k, why in sorted(self.skipped.items())]
        return out


def terramind_config(
    variant: str,
    pixel_inputs: tuple[str, ...],
    token_inputs: tuple[str, ...],
    targets: tuple[str, ...],
    **overrides: Any,
) -> ModelConfig:
    """The terraloom config of a TerraMind v1 size: the preset plus the context-projection
    bias and shared modality embeddings TerraMind has."""
    if variant not in VARIANTS:
        raise InteropError(f"unknown TerraMind variant {variant!r}; valid: {', '.join(VARIANTS)}")
    return model_preset(
        variant,
        pixel_inputs=pixel_inputs,
        token_inputs=token_inputs,
        targets=targets,
        context_bias=True,
        norm_bias=False,
        tie_modality_emb=True,
        **overrides,
    )


def _modality_keys(sd: Mapping[str, Any], prefix: str) -> list[str]:
    keys: list[str] = []
    for k in sd:
        if k.startswith(prefix):
            name = k[len(prefix) :].split(".", 1)[0]
            if name not in keys:
                keys.append(name)
    return keys


def _registry_order(names: list[str], pixel: bool) -> tuple[str, ...]:
    order = [t.modality for t in TERRAMIND_V1 if (t.pixel_key if pixel else t.token_key)]
    return tuple(n for n in order if n in names)


def detect_modalities(sd: Mapping[str, Any]) -> ImportReport:
    """Which registry modalities a TerraMind state dict holds (``variant`` left blank)."""
    skipped: dict[str, str] = {}
    px: list[str] = []
    tok: list[str] = []
    tgt: list[str] = []
    for key in _modality_keys(sd, "encoder_embeddings."):
        hit = terramind_key_to_modality(key)
        if hit is None:
            skipped[key] = _why_unmapped(key)
        elif hit[1]:
            px.append(hit[0])
        else:
            tok.append(hit[0])
    for key in _modality_keys(sd, "decoder_embeddings."):
        hit = terramind_key_to_modality(key)
        if hit is None or hit[1]:
            skipped.setdefault(key, _why_unmapped(key))
        else:
            tgt.append(hit[0])
    return ImportReport(
        "",
        _registry_order(px, True),
        _registry_order(tok, False),
        _registry_order(tgt, False),
        skipped,
    )


def _why_unmapped(key: str) -> str:
    if key in ("coords", "caption"):
        return "TerraMind's 30,000-id WordPiece vocabulary does not map onto terraloom's " + (
            "GEO bins" if key == "coords" else "caption vocabulary"
        )
    return "no registry modality corresponds to this TerraMind modality"


def infer_variant(sd: Mapping[str, Any]) -> str:
    """The v1 size whose width and depths match the state dict."""
    dim = int(sd["encoder_norm.weight"].shape[0])
    enc = len({k.split(".")[1] for k in sd if k.startswith("encoder.")})
    dec = len({k.split(".")[1] for k in sd if k.startswith("decoder.")})
    for v in VARIANTS:
        p = model_preset(v)
        if (p.dim, p.enc_depth, p.dec_depth) == (dim, enc, dec):
            return v
    raise InteropError(
        f"no TerraMind v1 size has width {dim}, {enc} encoder and {dec} decoder blocks"
    )


# --------------------------------------------------------------------------- block mapping


def _block_pairs(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(terraloom name, TerraMind name) of every block/norm tensor except the MLP fc1."""
    lin = ["weight", "bias"] if cfg.bias else ["weight"]
    nrm = ["weight", "bias"] if _norm_bias(cfg) else ["weight"]
    pairs: list[tuple[str, str]] = []

    def linear(ours: str, theirs: str) -> None:
        pairs.extend((f"{ours}.{p}", f"{theirs}.{p}") for p in lin)

    def norm(name: str) -> None:
        pairs.extend((f"{name}.{p}", f"{name}.{p}") for p in nrm)

    for i in range(cfg.enc_depth):
        b = f"encoder.{i}"
        for n in ("norm1", "norm2"):
            norm(f"{b}.{n}")
        for n in ("attn.qkv", "attn.proj", "mlp.fc2"):
            linear(f"{b}.{n}", f"{b}.{n}")
    for i in range(cfg.dec_depth):
        b = f"decoder.{i}"
        for n in ("norm1", "query_norm", "context_norm", "norm2"):
            norm(f"{b}.{n}")
        for n in (
            "self_attn.qkv",
            "self_attn.proj",
            "cross_attn.q",
            "cross_attn.kv",
            "cross_attn.proj",
            "mlp.fc2",
        ):
            linear(f"{b}.{n}", f"{b}.{n}")
    norm("encoder_norm")
    norm("decoder_norm")
    return pairs


def _norm_bias(cfg: ModelConfig) -> bool:
    return cfg.bias if cfg.norm_bias is None else cfg.norm_bias


def _norm_names(cfg: ModelConfig) -> list[str]:
    names = ["encoder_norm", "decoder_norm"]
    names += [f"encoder.{i}.{n}" for i in range(cfg.enc_depth) for n in ("norm1", "norm2")]
    names += [
        f"decoder.{i}.{n}"
        for i in range(cfg.dec_depth)
        for n in ("norm1", "query_norm", "context_norm", "norm2")
    ]
    return names


def _mlp_blocks(cfg: ModelConfig) -> list[str]:
    return [f"encoder.{i}.mlp" for i in range(cfg.enc_depth)] + [
        f"decoder.{i}.mlp" for i in range(cfg.dec_depth)
    ]


def patch_to_terramind(w: torch.Tensor, channels: int, patch: int) -> torch.Tensor:
    """(D, C*P*P) with (c ph pw) columns -> (D, P*P*C) with (ph pw c) columns."""
    d = w.shape[0]
    return w.reshape(d, channels, patch, patch).permute(0, 2, 3, 1).reshape(d, -1)


def patch_from_terramind(w: torch.Tensor, channels: int, patch: int) -> torch.Tensor:
    """Inverse of :func:`patch_to_terramind`."""
    d = w.shape[0]
    return w.reshape(d, patch, patch, channels).permute(0, 3, 1, 2).reshape(d, -1)


# --------------------------------------------------------------------------- import


def _take(sd: Mapping[str, torch.Tensor], key: str, used: set[str]) -> torch.Tensor:
    if key not in sd:
        raise InteropError(f"TerraMind state dict has no {key!r}")
    used.add(key)
    return sd[key].detach().to("cpu", torch.float32)


def import_terramind(
    sd: Mapping[str, torch.Tensor], variant: str | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor], ImportReport]:
    """A TerraMind v1 encoder-decoder state dict -> (terraloom config, state dict, report).

    Every TerraMind tensor is either mapped or belongs to a modality named in the report's
    ``skipped``; every terraloom tensor is produced. Raises :class:`InteropError` when a
    tensor that should map does not (shape, a non-zero bias where terraloom has none, a
    position table that is not the sin-cos one).
    """
    found = detect_modalities(sd)
    v = variant or infer_variant(sd)
    if variant is not None and infer_variant(sd) != variant:
        raise InteropError(
            f"the checkpoint is TerraMind v1 {infer_variant(sd)}, not {variant} (its shapes say so)"
        )
    if not found.targets:
        raise InteropError("the state dict has no decoder modality that terraloom can map")
    cfg = terramind_config(v, found.pixel_inputs, found.token_inputs, found.targets)
    specs = modality_specs(cfg)
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}

    for ours, theirs in _block_pairs(cfg):
        out[ours] = _take(sd, theirs, used)
    if not _norm_bias(cfg):  # TerraMind's bias-free LayerNorm keeps a zero buffer
        for n in _norm_names(cfg):
            b = _take(sd, f"{n}.bias", used)
            if bool(b.any()):
                raise InteropError(f"{n}.bias is not zero; TerraMind v1 norms have no bias")
    for m in _mlp_blocks(cfg):
        fc1 = _take(sd, f"{m}.fc1.weight", used)
        if cfg.mlp == "swiglu":
            out[f"{m}.fc1.weight"] = torch.cat([fc1, _take(sd, f"{m}.fc3.weight", used)], 0)
            if cfg.bias:
                out[f"{m}.fc1.bias"] = torch.cat(
                    [_take(sd, f"{m}.fc1.bias", used), _take(sd, f"{m}.fc3.bias", used)], 0
                )
        else:
            out[f"{m}.fc1.weight"] = fc1
            if cfg.bias:
                out[f"{m}.fc1.bias"] = _take(sd, f"{m}.fc1.bias", used)
    out["context_proj.weight"] = _take(sd, "decoder_proj_context.weight", used)
    out["context_proj.bias"] = _take(sd, "decoder_proj_context.bias", used)

    pos = _position_table(specs, cfg.dim)[: specs.n_image_positions]
    d = cfg.dim
    rows = [torch.zeros(1, d)]
    mod_in = []
    for s in specs.inputs:
        t = terramind_modality(s.modality)
        key = t.pixel_key if s.kind is Kind.PIXELS else t.token_key
        p = f"encoder_embeddings.{key}"
        _check_pos(_take(sd, f"{p}.pos_emb", used), pos, f"{p}.pos_emb")
        mod_in.append(_take(sd, f"{p}.mod_emb", used).reshape(d))
        if s.kind is Kind.PIXELS:
            w = _take(sd, f"{p}.proj.weight", used)
            if w.shape != (d, s.patch_dim):
                raise InteropError(
                    f"{p}.proj.weight is {tuple(w.shape)}, expected {(d, s.patch_dim)}"
                )
            out[f"inputs.patch.{patch_key(s.key)}.weight"] = patch_from_terramind(
                w, s.channels, cfg.patch_px
            )
        else:
            w = _take(sd, f"{p}.token_emb.weight", used)
            if w.shape != (s.vocab, d):
                raise InteropError(
                    f"{p}.token_emb.weight is {tuple(w.shape)}, expected {(s.vocab, d)}"
                )
            rows.append(w)
    out["inputs.tokens.weight"] = torch.cat(rows, 0)
    out["inputs.modality.weight"] = torch.stack(mod_in)

    mod_t = []
    for j, tg in enumerate(specs.targets):
        p = f"decoder_embeddings.{terramind_modality(tg.modality).token_key}"
        _check_pos(_take(sd, f"{p}.pos_emb", used), pos, f"{p}.pos_emb")
        mod_t.append(_take(sd, f"{p}.mod_emb", used).reshape(d))
        head = _take(sd, f"{p}.to_logits.weight", used)
        if f"{p}.token_emb.weight" in sd:  # tied to to_logits in TerraMind
            used.add(f"{p}.token_emb.weight")
        if head.shape != (tg.vocab, d):
            raise InteropError(
                f"{p}.to_logits.weight is {tuple(head.shape)}, expected {(tg.vocab, d)}"
            )
        out[f"heads.{j}.weight"] = head
    out["queries.modality.weight"] = torch.stack(mod_t)
    out["queries.tokens.weight"] = _take(sd, "mask_token", used).reshape(1, d)

    skipped_prefixes = tuple(
        f"{side}_embeddings.{k}." for side in ("encoder", "decoder") for k in found.skipped
    )
    left = [k for k in sd if k not in used and not k.startswith(skipped_prefixes)]
    if left:
        raise InteropError(
            f"{len(left)} TerraMind tensors have no terraloom counterpart, e.g. {left[:3]}"
        )
    return cfg, out, replace(found, variant=v)


def _check_pos(theirs: torch.Tensor, ours: torch.Tensor, name: str) -> None:
    t = theirs.reshape(-1, theirs.shape[-1])
    if t.shape != ours.shape or float((t - ours).abs().max()) > POS_TOL:
        raise InteropError(f"{name} is not the fixed 2-D sin-cos table terraloom uses")


# --------------------------------------------------------------------------- export


def export_terramind(
    state: Mapping[str, torch.Tensor], cfg: ModelConfig, *, backbone: bool = False
) -> dict[str, torch.Tensor]:
    """terraloom weights -> the state dict terratorch's TerraMind v1 loads with ``strict=True``.

    ``backbone=False``: the encoder-decoder layout of the released ``TerraMind_v1_*.pt``
    (loads into ``TerraMind`` built with the same modalities); ``backbone=True``: only the
    encoder side, which the ``terramind_v1_*`` backbone (``TerraMindViT``) built with
    ``pretrained=False`` and the same modalities loads strictly.
    """
    _check_exportable(cfg)
    specs = modality_specs(cfg)
    d = cfg.dim
    st = {k: v.detach().to("cpu", torch.float32) for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _block_pairs(cfg):
        if backbone and not theirs.startswith(("encoder.", "encoder_norm.")):
            continue
        out[theirs] = st[ours].clone()
    for m in _mlp_blocks(cfg):
        if backbone and not m.startswith("encoder."):
            continue
        fc1 = st[f"{m}.fc1.weight"]
        if cfg.mlp == "swiglu":
            a, g = fc1.chunk(2, 0)
            out[f"{m}.fc1.weight"], out[f"{m}.fc3.weight"] = a.clone(), g.clone()
            if cfg.bias:
                ab, gb = st[f"{m}.fc1.bias"].chunk(2, 0)
                out[f"{m}.fc1.bias"], out[f"{m}.fc3.bias"] = ab.clone(), gb.clone()
        else:
            out[f"{m}.fc1.weight"] = fc1.clone()
            if cfg.bias:
                out[f"{m}.fc1.bias"] = st[f"{m}.fc1.bias"].clone()
    if not _norm_bias(cfg):
        for n in _norm_names(cfg):
            if backbone and not n.startswith(("encoder.", "encoder_norm")):
                continue
            out[f"{n}.bias"] = torch.zeros(d)
    pos = _position_table(specs, d)[: specs.n_image_positions][None].contiguous()
    rows = st["inputs.tokens.weight"]
    if bool(rows[0].any()):
        raise InteropError("inputs.tokens row 0 (the padding row pixel slots read) is not zero")
    at = 1
    for i, s in enumerate(specs.inputs):
        t = terramind_modality(s.modality)
        p = f"encoder_embeddings.{t.pixel_key if s.kind is Kind.PIXELS else t.token_key}"
        out[f"{p}.pos_emb"] = pos.clone()
        out[f"{p}.mod_emb"] = st["inputs.modality.weight"][i].reshape(1, 1, d).clone()
        if s.kind is Kind.PIXELS:
            w = st[f"inputs.patch.{patch_key(s.key)}.weight"]
            out[f"{p}.proj.weight"] = patch_to_terramind(w, s.channels, cfg.patch_px)
        else:
            out[f"{p}.token_emb.weight"] = rows[at : at + s.vocab].clone()
            at += s.vocab
    if backbone:
        return out
    out["decoder_proj_context.weight"] = st["context_proj.weight"].clone()
    out["decoder_proj_context.bias"] = st["context_proj.bias"].clone()
    out["mask_token"] = st["queries.tokens.weight"][0].reshape(1, 1, d).clone()
    for j, tg in enumerate(specs.targets):
        p = f"decoder_embeddings.{terramind_modality(tg.modality).token_key}"
        out[f"{p}.pos_emb"] = pos.clone()
        out[f"{p}.mod_emb"] = st["queries.modality.weight"][j].reshape(1, 1, d).clone()
        head = st[f"heads.{j}.weight"].clone()
        out[f"{p}.to_logits.weight"] = head
        out[f"{p}.token_emb.weight"] = head  # tied in TerraMind: one tensor, two names
    return out


def _check_exportable(cfg: ModelConfig) -> None:
    """Refuse configs TerraMind cannot express (one line saying why)."""
    why: list[str] = []
    specs = modality_specs(cfg)
    seq = [s.modality for s in specs.inputs if s.kind is Kind.SEQUENCE]
    seq += [t.modality for t in specs.targets if t.kind is Kind.SEQUENCE]
    if seq:
        why.append(
            f"sequence modalities {sorted(set(seq))} (TerraMind's coords/caption vocabularies differ)"
        )
    if not cfg.tie_modality_emb and any(
        s.modality + TOKEN_SUFFIX in {i.key for i in specs.inputs} for s in specs.targets
    ):
        why.append("untied modality embeddings (set model.tie_modality_emb=true)")
    if _norm_bias(cfg):
        why.append("LayerNorm biases (TerraMind v1 norms have none; set model.norm_bias=false)")
    if not (cfg.context_bias or (cfg.context_bias is None and cfg.bias)):
        why.append("no context-projection bias (set model.context_bias=true)")
    preset = next(
        (
            n
            for n in VARIANTS
            if (p := model_preset(n)).dim == cfg.dim
            and (p.mlp, p.hidden, p.bias, p.heads) == (cfg.mlp, cfg.hidden, cfg.bias, cfg.heads)
        ),
        None,
    )
    if preset is None:
        why.append("a width/MLP/bias/heads combination that is no TerraMind v1 size")
    if (cfg.image_px, cfg.patch_px, cfg.norm_eps) != (224, 16, 1e-6):
        why.append("image 224 px, patch 16 and LayerNorm eps 1e-6 are TerraMind's")
    for name in {*cfg.pixel_inputs, *cfg.token_inputs, *cfg.targets}:
        if name not in {t.modality for t in TERRAMIND_V1}:
            why.append(f"{name} has no TerraMind counterpart")
    if why:
        raise InteropError("cannot export to TerraMind: " + "; ".join(why))


def terramind_keys(cfg: ModelConfig) -> dict[str, str]:
    """Registry name + scale suffix -> TerraMind MODALITY_INFO key, for the config's inputs."""
    out = {}
    for s in modality_specs(cfg).inputs:
        t = terramind_modality(s.modality)
        out[s.key] = (t.pixel_key if s.key.endswith(PIXEL_SUFFIX) else t.token_key) or ""
    return out
