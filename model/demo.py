"""The main job: the whole mission on the embedded synthetic world, stage by stage.

Each stage writes its outputs under ``--out`` and a ``.done`` marker last, so a second
``make demo`` skips what is finished and a killed run resumes at the stage it was in.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from schemas.cli import modality_table
from schemas.jsonschema import out_of_sync
from schemas.modalities import REGISTRY


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Path], dict]
    description: str


def stage_registry(out: Path) -> dict:
    """Validate the registry and the exported contracts, print the modality table."""
    stale = out_of_sync()
    if stale:
        raise SystemExit(f"schema exports out of sync: {stale}; run `make schemas`")
    print(modality_table())
    return {"modalities": len(REGISTRY)}


STAGES: tuple[Stage, ...] = (
    Stage("registry", stage_registry, "validate the modality registry and contracts"),
)


def run_stages(
    out: Path, stages: tuple[Stage, ...] = STAGES, force: bool = False
) -> dict[str, dict]:
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for i, stage in enumerate(stages, 1):
        marker = out / f".{stage.name}.done"
        print(f"\n== [{i}/{len(stages)}] {stage.name}: {stage.description}", flush=True)
        if marker.exists() and not force:
            results[stage.name] = json.loads(marker.read_text())
            print(f"   finished earlier, skipped ({marker.name})")
            continue
        t0 = time.perf_counter()
        result = stage.run(out)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str))
        tmp.replace(marker)
        results[stage.name] = result
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="terraloom-demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--force", action="store_true", help="re-run finished stages")
    args = parser.parse_args(argv)
    run_stages(args.out, force=args.force)
    print(
        "\nNot there yet: world -> plan -> build -> tokenizers -> encode -> train -> evaluate -> generate "
        "(their issues are in progress)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
