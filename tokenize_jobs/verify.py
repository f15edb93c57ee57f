"""Verify a token store: layout, commits, checksums, content and alignment with the corpus.

Everything is re-read through zarr (the honest decoder, not the reader's fast path) and
compared with what the encode job recorded when it committed each shard, so a flipped
byte, a truncated chunk, a half-written shard or a store that drifted from its corpus
is reported, never silently trained on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from terraloom.schemas.layouts import CAPTION_MAX_TOKENS, validate_tokens
from terraloom.schemas.modalities import SAMPLE_PX, Layout, get_modality
from terraloom.storage.location import Location, LocationError
from terraloom.tokenize_jobs.crops import centre_crop, draw_crops
from terraloom.tokenize_jobs.store import (
    LEN_SUFFIX,
    array_checksum,
    commits_location,
    split_name,
)

MAX_FINDINGS_PER_KIND = 20


@dataclass
class VerifyReport:
    """Findings (problems) and notes (what was or could not be checked) per store."""

    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked_shards: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings


def _split_stores(path: Location) -> list[Location]:
    if (path / "zarr.json").exists():
        return [path]
    return [path / n for n in path.listdir() if n.endswith(".zarr") and (path / n).is_dir()]


def _corpus_split(
    store: Location, attrs: dict[str, Any], corpus: Location | None
) -> Location | None:
    if corpus is not None:
        cand = (
            corpus
            if (corpus / "zarr.json").exists() and corpus.name.endswith(".zarr")
            else corpus / f"{split_name(store)}.zarr"
        )
        return cand
    rel = attrs.get("corpus")
    if isinstance(rel, str) and rel:
        try:  # a URL recorded by a remote encode, or a path relative to the token store
            if "://" in rel or not store.is_local:
                cand = Location.parse(rel)
            else:
                cand = Location.parse(os.path.normpath(os.path.join(store.parent.path, rel)))
        except LocationError:
            return None
        if (cand / "zarr.json").exists():
            return cand
    return None


def verify_store(
    store: Location | str | os.PathLike[str],
    corpus: Location | str | os.PathLike[str] | None = None,
) -> VerifyReport:
    """Check one split store (``tokens/<split>.zarr``); see :func:`verify_tokens`."""
    import zarr

    from terraloom.tokenize_jobs.store import read_commits

    store = Location.parse(store)
    corpus = Location.parse(corpus) if corpus is not None else None
    rep = VerifyReport()
    prefix = f"{store.name}: "
    layout_findings = validate_tokens(store)
    if layout_findings:
        rep.findings += [prefix + f for f in layout_findings]
        return rep
    group: Any = zarr.open_group(store.zarr_store(read_only=True), mode="r")
    attrs: dict[str, Any] = dict(group.attrs)
    n, k, s = int(attrs["n_samples"]), int(attrs["n_crops"]), int(attrs["shard_samples"])
    crop_px = int(attrs["crop_px"])
    mods = tuple(attrs["modalities"])
    n_shards = -(-n // s) if n else 0
    toks = attrs.get("tokenizers") or {}
    for m in mods:
        ident = toks.get(m)
        if not isinstance(ident, dict) or not {"id", "version", "sha256"} <= set(ident):
            rep.findings.append(
                prefix + f"attribute tokenizers[{m!r}] lacks id/version/sha256: {ident!r}"
            )

    # -- commits
    cdir = commits_location(store)
    commits = read_commits(store)
    for fname in cdir.listdir():
        if not (fname.startswith("shard-") and fname.endswith(".json")):
            continue
        try:
            shard_no = int(fname[: -len(".json")].split("-")[1])
        except (IndexError, ValueError):
            rep.findings.append(prefix + f"stray file in the commits folder: {fname}")
            continue
        if shard_no not in commits:
            rep.findings.append(prefix + f"commit marker {fname} is unreadable")
    missing = [i for i in range(n_shards) if i not in commits]
    if missing:
        rep.findings.append(
            prefix
            + f"{len(missing)} of {n_shards} shards not committed (first: {missing[:10]}); re-run encode to finish the store"
        )

    names = sorted(group.array_keys())
    arrays: dict[str, Any] = {name: group[name] for name in names}
    vocab = {
        m: int(arrays[m].attrs.get("vocab_size") or get_modality(m).vocab_size or 65536)
        for m in mods
    }
    sha_by_mod = {m: str((toks.get(m) or {}).get("sha256")) for m in mods}

    # -- corpus
    csplit = _corpus_split(store, attrs, corpus)
    cgroup: Any = None
    keys = None
    if csplit is None:
        rep.notes.append(
            prefix + "corpus not found: alignment and crops not checked (pass --corpus)"
        )
    elif not (csplit / "zarr.json").exists():
        rep.findings.append(prefix + f"corpus split {csplit} does not exist")
    else:
        from terraloom.tokenize_jobs.encode import sample_keys

        cgroup = zarr.open_group(csplit.zarr_store(read_only=True), mode="r")
        ca: dict[str, Any] = dict(cgroup.attrs)
        if int(ca.get("n_samples", -1)) != n:
            rep.findings.append(
                prefix + f"{n} rows but the corpus {csplit.name} has {ca.get('n_samples')}"
            )
            cgroup = None
        elif int(ca.get("shard_samples", -1)) != s:
            rep.findings.append(
                prefix + f"shard of {s} rows but the corpus shard is {ca.get('shard_samples')}"
            )
        if cgroup is not None:
            keys = sample_keys(csplit.parent, split_name(store), n)

    seed = attrs.get("crop_seed")
    for shard in sorted(c for c in commits if 0 <= c < n_shards):
        rec = commits[shard]
        lo, hi = shard * s, min((shard + 1) * s, n)
        sp = f"{prefix}shard {shard} (rows {lo}..{hi - 1}): "
        if list(rec.get("rows", [])) != [lo, hi]:
            rep.findings.append(sp + f"marker rows {rec.get('rows')} != {[lo, hi]}")
        if rec.get("tokenizers") != sha_by_mod:
            rep.findings.append(sp + "marker tokenizers differ from the store attributes")
        if rec.get("crop_seed") != seed:
            rep.findings.append(
                sp + f"marker crop seed {rec.get('crop_seed')} != store crop seed {seed}"
            )
        sums = rec.get("checksums") or {}
        blocks: dict[str, np.ndarray] = {}
        for name in names:
            try:
                blocks[name] = np.asarray(arrays[name][lo:hi])
            except Exception as exc:  # a truncated or garbled chunk is a finding
                rep.findings.append(sp + f"{name} cannot be read: {exc}")
                continue
            if name not in sums:
                rep.findings.append(sp + f"no checksum recorded for {name}")
            elif array_checksum(blocks[name]) != sums[name]:
                rep.findings.append(
                    sp
                    + f"{name} checksum mismatch: the data changed after it was committed (corruption?)"
                )
        if "valid" not in blocks:
            continue
        rep.checked_shards += 1
        valid = blocks["valid"].astype(bool)
        rep.findings += [sp + f for f in _content_findings(blocks, valid, mods, vocab, k, crop_px)]
        if cgroup is not None and keys is not None:
            cvalid = np.asarray(cgroup["valid"][lo:hi], bool)
            if not np.array_equal(cvalid, valid):
                bad = (np.flatnonzero(cvalid != valid) + lo)[:10].tolist()
                rep.findings.append(sp + f"valid differs from the corpus at rows {bad}")
            if "crops" in blocks and valid.any():
                idx = np.flatnonzero(valid)
                want = draw_crops(list(keys[lo + idx]), k, crop_px, SAMPLE_PX, int(seed or 0))
                if not np.array_equal(blocks["crops"][idx], want):
                    rep.findings.append(
                        sp
                        + "crops differ from the ones drawn for the corpus sample ids (misaligned rows?)"
                    )
    if len(rep.findings) > 4 * MAX_FINDINGS_PER_KIND:
        extra = len(rep.findings) - 4 * MAX_FINDINGS_PER_KIND
        rep.findings = rep.findings[: 4 * MAX_FINDINGS_PER_KIND] + [
            prefix + f"... and {extra} more findings"
        ]
    return rep


def _content_findings(
    blocks: dict[str, np.ndarray],
    valid: np.ndarray,
    mods: tuple[str, ...],
    vocab: dict[str, int],
    k: int,
    crop_px: int,
) -> list[str]:
    out: list[str] = []
    inv = ~valid
    for m in mods:
        if m not in blocks:
            continue
        b = blocks[m]
        if valid.any() and int(b[valid].max(initial=0)) >= vocab[m]:
            out.append(f"{m} has ids >= its vocabulary size {vocab[m]}")
        if inv.any() and b[inv].any():
            out.append(f"{m} has tokens in invalid rows")
        if get_modality(m).layout is Layout.TEXT and m + LEN_SUFFIX in blocks:
            lens = blocks[m + LEN_SUFFIX].astype(np.int64)
            if (lens > CAPTION_MAX_TOKENS).any():
                out.append(f"{m}{LEN_SUFFIX} exceeds {CAPTION_MAX_TOKENS}")
            pos = np.arange(b.shape[-1])
            if (b[pos >= lens[..., None]] != 0).any():
                out.append(f"{m} has non-zero ids past its length")
    if "crops" in blocks:
        c = blocks["crops"].astype(np.int64)
        cv = c[valid]
        if cv.size:
            inside = (
                (cv[..., 0] >= 0)
                & (cv[..., 1] >= 0)
                & (cv[..., 0] + cv[..., 2] <= SAMPLE_PX)
                & (cv[..., 1] + cv[..., 3] <= SAMPLE_PX)
            )
            if (
                not inside.all()
                or (cv[..., 2] != crop_px).any()
                or (cv[..., 3] != crop_px).any()
                or (cv[..., 4] < 0).any()
                or (cv[..., 4] > 3).any()
            ):
                out.append("crops out of bounds, of the wrong size, or with an unknown flip")
            if not (cv[:, 0] == centre_crop(crop_px, SAMPLE_PX)).all():
                out.append("crop 0 is not the centred crop")
        if inv.any() and c[inv].any():
            out.append("crops recorded for invalid rows")
    return out


def verify_tokens(
    tokens: str | os.PathLike[str] | Location,
    corpus: str | os.PathLike[str] | Location | None = None,
) -> VerifyReport:
    """Verify every split store under ``tokens/`` (or one ``<split>.zarr``).

    Checks the layout against ``schemas.layouts``, tokenizer identities in the
    attributes, that every shard is committed, each array's checksum per shard against
    its commit marker, id ranges and padding, and, given the corpus (``--corpus`` or the
    relative path the encoder recorded), ``valid`` and the crops against the corpus.
    """
    root = Location.parse(tokens)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    stores = _split_stores(root)
    if not stores:
        raise FileNotFoundError(f"no token stores (<split>.zarr) in {root}")
    report = VerifyReport()
    for st in stores:
        r = verify_store(st, corpus)
        report.findings += r.findings
        report.notes += r.notes
        report.checked_shards += r.checked_shards
    return report
