"""Reading and writing Grok-1's `ckpt-0` format.

`tensor_file` is one file (allow-list unpickling, byte-range reads, the release's writer);
`store` is the directory (layout, validation, the sharded loader, random weights).
"""

from grok.checkpoint.store import (
    ConfigMismatchError, TensorSpec, checkpoint_layout, check_tensor, load_checkpoint, quantize_tensors, random_params,
    random_tensors, read_checkpoint_tensors, save_checkpoint, stack_params)
from grok.checkpoint.tensor_file import CheckpointError

__all__ = ["CheckpointError", "ConfigMismatchError", "TensorSpec", "checkpoint_layout", "check_tensor",
           "load_checkpoint", "quantize_tensors", "random_params", "random_tensors",
           "read_checkpoint_tensors", "save_checkpoint", "stack_params"]
