"""The device mesh's axis names: the leaf that ops/ (collectives over the model axis) and
parallel/ (meshes and partition rules) both name, so neither imports the other for them."""

DATA_AXIS = "data"      # batch rows; Grok-1's weights shard their residual dimension here too
MODEL_AXIS = "model"    # heads, experts' FFN width, the vocabulary
MESH_AXES = (DATA_AXIS, MODEL_AXIS)
