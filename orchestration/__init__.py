"""The end-to-end orchestration: the one package that may import every stage.

``terraloom.orchestration.demo`` runs the whole mission (world -> plan -> build -> tokenizers ->
encode -> train -> TiM -> evaluate -> generate -> report) on the embedded synthetic world; it is
what ``make demo`` and ``terraloom-demo`` run. Stage packages never import this one.
"""

__all__: list[str] = []
