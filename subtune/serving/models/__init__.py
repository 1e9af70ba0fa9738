"""The python-backend models a repository holds, copied in as `<model>/1/model.py`.

They run inside Triton's backend stub, in the serve environment (numpy<2, ONNX Runtime, Pillow),
and import nothing from subtune: a repository is self-contained."""

from pathlib import Path

GRAPH_MODEL = Path(__file__).with_name("graph_model.py")
PREPROCESS_MODEL = Path(__file__).with_name("preprocess_model.py")
