"""``terraloom-schemas``: print the modality table, export JSON Schemas, validate stores."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from terraloom.schemas.cliargs import add_version
from terraloom.schemas.jsonschema import JSON_DIR, export, out_of_sync
from terraloom.schemas.layouts import validate_corpus, validate_tokens
from terraloom.schemas.modalities import REGISTRY


def modality_table() -> str:
    """The registry as a Markdown table (the README and ``make demo`` print it)."""
    head = "| name | source | bands | dtype | nodata | resampling | scales | tokenizer (vocab) |"
    rows = [head, "|" + "---|" * 8]
    for m in REGISTRY:
        src = ", ".join(m.collections) or "derived from " + ", ".join(m.derived_from or ("sample",))
        scales = " + ".join(
            s for s, on in (("pixels", m.has_pixels), ("tokens", m.has_tokens)) if on
        )
        tok = f"{m.tokenizer.value} ({m.vocab_size})" if m.tokenizer else "-"
        rows.append(
            f"| {m.name} | {src} | {m.n_bands} | {m.dtype} | {m.nodata} | {m.resampling.value} | {scales} | {tok} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="terraloom-schemas",
        description="terraloom contracts: print the modality table, export the JSON Schemas and "
        "store layouts, validate a corpus or token store against its layout.",
    )
    add_version(parser)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("modalities", help="print the modality registry as a table")
    p = sub.add_parser("export", help="write the JSON Schema / layout exports")
    p.add_argument("--out", type=Path, default=JSON_DIR)
    p = sub.add_parser("check", help="exit 1 if the committed JSON exports are out of sync")
    p.add_argument("--dir", type=Path, default=JSON_DIR)
    p = sub.add_parser("validate", help="validate a corpus or token split store against its layout")
    p.add_argument("kind", choices=["corpus", "tokens"])
    p.add_argument("path", type=Path)
    args = parser.parse_args(argv)

    if args.cmd == "modalities":
        print(modality_table())
        return 0
    if args.cmd == "export":
        for path in export(args.out):
            print(path)
        return 0
    if args.cmd == "check":
        stale = out_of_sync(args.dir)
        for name in stale:
            print(f"out of sync: {name} (run `terraloom-schemas export`)", file=sys.stderr)
        return 1 if stale else 0
    if not args.path.exists():
        parser.error(f"{args.path} does not exist")
    findings = (validate_corpus if args.kind == "corpus" else validate_tokens)(args.path)
    for f in findings:
        print(f)
    print("valid" if not findings else f"{len(findings)} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
