"""grok.LLM's constructor takes every runtime choice the command line has."""

import dataclasses
import inspect

from grok.llm import LLM
from grok.loading import ModelOptions

# ModelOptions field -> LLM's argument for it (where the names differ).
LLM_NAME = {"slots": "max_slots"}
# ModelOptions fields LLM sets itself: any LLM.generate call may carry a response_format, so
# it always builds the grammar tokenizer while the model loads.
SET_BY_LLM = {"prebuild_grammar_tokenizer"}


def test_llm_accepts_every_model_option():
    params = set(inspect.signature(LLM.__init__).parameters)
    fields = {LLM_NAME.get(f.name, f.name) for f in dataclasses.fields(ModelOptions)
              if f.name not in SET_BY_LLM}
    assert fields - params == set()
