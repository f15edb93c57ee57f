"""schemas/config.py: typed frozen dataclasses from plain data, files and overrides."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from terraloom.schemas.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    parse_override,
    read_config_file,
    to_dict,
)


@dataclass(frozen=True)
class Inner:
    rate: float = 1.0
    names: tuple[str, ...] = ("a",)


@dataclass(frozen=True)
class Outer:
    name: str
    n: int = 2
    flag: bool = False
    inner: Inner = Inner()
    maybe: tuple[str, ...] | None = None
    pairs: tuple[tuple[str, tuple[str, ...]], ...] = ()
    table: Mapping[str, str] = field(default_factory=dict)


def test_round_trip_and_coercions() -> None:
    cfg = from_dict(
        Outer,
        {
            "name": "x",
            "n": "3",
            "flag": "yes",
            "inner": {"rate": 2, "names": "b,c"},
            "maybe": ["p"],
            "pairs": {"S2L2A": ["B02", "B03"]},
            "table": {"k": "v"},
        },
    )
    assert cfg == Outer(
        "x", 3, True, Inner(2.0, ("b", "c")), ("p",), (("S2L2A", ("B02", "B03")),), {"k": "v"}
    )
    assert from_dict(Outer, to_dict(cfg)) == cfg
    assert from_dict(Outer, {"name": "x", "maybe": None}).maybe is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "m": 1}, "unknown keys ['m']"),
        ({"name": "x", "n": 1.5}, "n: expected int"),
        ({"name": "x", "n": True}, "n: expected int"),
        ({"name": "x", "flag": "perhaps"}, "flag: not a boolean"),
        ({"name": "x", "inner": 3}, "inner: expected a mapping"),
        ({"name": "x", "inner": {"rat": 1}}, "inner: unknown keys ['rat']"),
        ({}, "Outer: missing name"),
    ],
)
def test_bad_values_are_config_errors(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_dict(Outer, data)


def test_overrides_and_files(tmp_path: Path) -> None:
    assert parse_override("inner.names=[a, b]") == ("inner.names", ["a", "b"])
    with pytest.raises(ConfigError, match="not of the form"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"n": 1}, ["n.x=2"])
    path = tmp_path / "c.yaml"
    path.write_text("name: y\ninner: {rate: 0.5}\n")
    assert load_config(Outer, path, ["inner.rate=0.25", "n=5"]) == Outer("y", 5, inner=Inner(0.25))
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    (tmp_path / "code.yaml").write_text("!!python/object/apply:os.system ['true']\n")
    for name, message in (
        ("missing.yaml", "does not exist"),
        ("list.yaml", "must hold a mapping"),
        ("bad.yaml", "not YAML"),
        ("code.yaml", "not YAML"),  # safe_load: nothing in a config file is executed
    ):
        with pytest.raises(ConfigError, match=message):
            read_config_file(tmp_path / name)


def test_model_presets_through_the_generic_loader() -> None:
    from terraloom.model.config import MODEL_PRESETS, ModelConfig

    got = from_dict(ModelConfig, {"size": "base", "dec_attn": "dense"})
    assert got.dim == MODEL_PRESETS["base"].dim and got.dec_attn == "dense"
