"""The host side of serving, on the engine API (grok.engine.api), in data-flow order:

requests (Request, Cancel) -> admission (checks against the model, tokenizing) ->
scheduler (Scheduler: slots, interleaved chunked prefill, decode, stopping, cancel; `serve`,
the generator protocol) -> text (incremental detokenization, stop strings) -> results
(TokenEvent, Completion). decisions (what process 0 decides per step) and multihost (its
publication and replay over grok.parallel.multihost's channel) make a multi-process job.
"""
