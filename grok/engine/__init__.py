"""The device side of serving: compiled prefill and decode over per-slot KV memory, sampling."""
