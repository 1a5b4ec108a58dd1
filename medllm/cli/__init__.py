"""The ``medllm`` command line: one module per command group, each a thin layer over the
library. Importing this package must not import torch, transformers or chromadb."""
