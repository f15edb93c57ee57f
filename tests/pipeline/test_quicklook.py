"""quicklook: one PNG per accepted sample with every modality (colours: tests/render)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import zarr

from terraloom.pipeline.cli import main as cli_main
from terraloom.pipeline.quicklook import decode_caption, render_corpus, sample_panels


def test_decode_caption_strips_padding_and_control_bytes() -> None:
    raw = np.zeros(16, np.uint8)
    raw[:6] = list(b"a $x\x01b")
    assert decode_caption(raw) == "a $x\ufffdb"


def test_render_one_png_per_accepted_sample(tiny_reference: dict[str, Any], tmp_path: Path) -> None:
    out = tiny_reference["out"]
    index = tiny_reference["index"]
    paths = render_corpus(out, tmp_path / "ql", limit=3, progress=False)
    assert [p.name for p in paths] == [f"{r['sample_id']}.png" for r in index[:3]]
    img = mpimg.imread(paths[0])
    assert img.shape[1] > 4 * img.shape[0]  # eight image panels side by side + the mask
    assert img[..., :3].std() > 0.05  # not a blank canvas
    group = zarr.open_group(str(out / f"{index[0]['split']}.zarr"), mode="r")
    panels = sample_panels(group, int(index[0]["row"]))
    assert [p.modality for p in panels][-1] == "cloud_mask"
    assert all(p.values is not None for p in panels)  # an accepted sample has every image
    one = index[-1]
    assert (
        cli_main(
            [
                "quicklook",
                str(out),
                "--out",
                str(tmp_path / "cli"),
                "--sample-id",
                one["sample_id"],
                "--no-progress",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "cli").rglob("*.png")) == [f"{one['sample_id']}.png"]
    assert (
        cli_main(["quicklook", str(out), "--out", str(tmp_path / "x"), "--sample-id", "nope"]) == 2
    )
    assert cli_main(["quicklook", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
