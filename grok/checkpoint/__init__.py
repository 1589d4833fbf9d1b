"""Reading and writing Grok-1's `ckpt-0` format.

One file: `stored_array` (where an array lies, block reads, regular files only), `safe_unpickle`
(the allow-list unpickler), `tensor_file` (locate, read, write). The directory: `layout` (which
file holds what), `validation` (against the config), `loader` (onto devices, checked finite),
`store` (stacking, whole-checkpoint reads and writes, random weights).
"""

from grok.checkpoint.store import (
    ConfigMismatchError, TensorSpec, checkpoint_layout, check_tensor, load_checkpoint,
    quantize_tensors, random_params, random_tensors, read_checkpoint_tensors, save_checkpoint,
    stack_params)
from grok.checkpoint.tensor_file import CheckpointError

__all__ = ["CheckpointError", "ConfigMismatchError", "TensorSpec", "checkpoint_layout",
           "check_tensor", "load_checkpoint", "quantize_tensors", "random_params",
           "random_tensors", "read_checkpoint_tensors", "save_checkpoint", "stack_params"]
