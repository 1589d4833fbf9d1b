"""The device side of serving: the engine API (api.py) and its JAX implementation.

api.py (the typed seam: Prefix, SlotArm, SampleParams, TokenOutput, Engine) <- state.py
(DecodeState, prefix capacities, shardings, packing) <- steps.py (the pure device functions)
<- engine.py (JaxEngine: compiled, cached by shape; its mixins precompile.py, compiling
ahead of time, and speculative.py, the verify step) <- runner.py (ModelRunner,
InferenceRunner: the reference-shaped facade). sampling.py: the pure sampling functions;
live_lengths.py: the host-side slot lengths that pick each decode step's kv_len variant.
"""
