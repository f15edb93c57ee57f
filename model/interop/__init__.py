"""Interop with TerraMind v1 (terratorch): checkpoints in and out, and encoder embeddings."""

from terraloom.model.interop.terramind import (
    ImportReport,
    InteropError,
    export_terramind,
    import_terramind,
    terramind_config,
)
from terraloom.model.interop.weights import (
    init_overrides,
    load_weights,
    read_state_dict,
    weights_dir,
    write_state_dict,
)

__all__ = [
    "ImportReport",
    "InteropError",
    "export_terramind",
    "import_terramind",
    "init_overrides",
    "load_weights",
    "read_state_dict",
    "terramind_config",
    "weights_dir",
    "write_state_dict",
]
