"""The python-backend models a repository holds, copied in as `<model>/1/model.py`.

They run inside Triton's backend stub, in the serve environment (numpy<2, ONNX Runtime, Pillow),
and import nothing from subtune: a repository is self-contained."""

from pathlib import Path

GRAPH_MODEL = Path(__file__).with_name("graph_model.py")
# What the graph model reads the graph's metadata with (subtune/graph_metadata.py and its definition):
# copied beside it, the one reader Python and the server share.
GRAPH_MODEL_SUPPORT = (Path(__file__).parents[2] / "graph_metadata.py",
                       Path(__file__).parents[2] / "graph_metadata.schema.json")
PREPROCESS_MODEL = Path(__file__).with_name("preprocess_model.py")
# A --task-select graph's image ensemble: Triton's ensembles ask the graph for every output, this
# python model asks for the ones the client named (so the graph computes only those tasks).
TASK_SELECT_ENSEMBLE = Path(__file__).with_name("task_select_ensemble.py")
