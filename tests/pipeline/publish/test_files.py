"""files: every file of a version is written under its final name and hashed on the way."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from terraloom.pipeline.publish.files import VersionFiles, hash_location
from terraloom.storage.location import Location


@pytest.mark.parametrize("where", ["local", "memory"])
def test_streams_tars_and_copies_trees_with_their_digests(
    tmp_path: Path, memory_root: str, where: str
) -> None:
    root = Location.parse(tmp_path / "v" if where == "local" else memory_root)
    files = VersionFiles(root)
    with files.open("a/s.tar") as f, tarfile.open(fileobj=f, mode="w") as tf:  # type: ignore[call-overload]
        info = tarfile.TarInfo("k.zarr.zip")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    src = tmp_path / "src"
    (src / "g" / "c").mkdir(parents=True)
    (src / "g" / "zarr.json").write_text('{"attributes": {}}')
    (src / "g" / "c" / "0").write_bytes(b"\0" * 100)
    files.copy_tree(
        Location.parse(src / "g"),
        "store",
        transform=lambda rel, data: b'{"attributes": {"corpus": "x"}}',
    )
    assert sorted(files.digests) == ["a/s.tar", "store/c/0", "store/zarr.json"]
    for rel, digest in files.digests.items():
        assert hash_location(root / rel) == digest
        assert files.sizes[rel] == (root / rel).size()
    assert (root / "store/zarr.json").read_bytes() == b'{"attributes": {"corpus": "x"}}'
    with tarfile.open(fileobj=io.BytesIO((root / "a/s.tar").read_bytes())) as tf:
        assert tf.extractfile("k.zarr.zip").read() == b"abc"  # type: ignore[union-attr]
    assert files.digests["store/c/0"] == hashlib.sha256(b"\0" * 100).hexdigest()
    with pytest.raises(ValueError, match="written twice"):
        files.write_bytes("a/s.tar", b"")
