"""Peer baselines on llama.cpp: llama-cpp-python's own generation, run on the engine's GGUF file in the
same process, with the engine's prompt ids, counted like our methods (``--backend llamacpp``).

* ``llama-generate``: ``Llama.generate`` greedy (plain decoding as llama-cpp-python users run it);
* ``llama-pld``: the same with its built-in prompt lookup (``LlamaPromptLookupDecoding``, its defaults).
"""

from __future__ import annotations

import time

from ..errors import QuickdraftError
from .generation import Generation

LLAMA_PEERS: dict[str, str] = {
    "llama-generate": "llama-cpp-python Llama.generate (plain decoding, its own context)",
    "llama-pld": "llama-cpp-python with its prompt lookup (LlamaPromptLookupDecoding defaults: 10 tokens, 2-grams)",
}
PEER_CONTEXT = 4096  # tokens: llama-pld keeps logits for every position (context x vocabulary floats)


def _counting_llama():
    from llama_cpp import Llama

    class CountingLlama(Llama):
        """``Llama`` counting its evaluation passes (each emits at least one token, the first with the prompt)."""

        passes = 0

        def eval(self, tokens):  # noqa: A003 - llama-cpp-python's name
            self.passes += 1
            return super().eval(tokens)

    return CountingLlama


class LlamaPeer:
    """A llama-cpp-python baseline on the engine's GGUF file and threads (greedy only)."""

    def __init__(self, engine, name: str) -> None:
        if name not in LLAMA_PEERS:
            raise QuickdraftError(f"unknown llama.cpp peer {name!r}; available: {', '.join(LLAMA_PEERS)}")
        target = engine.target
        if getattr(target, "backend", None) != "llamacpp":
            raise QuickdraftError(f"{name} runs beside the llama.cpp backend: add --backend llamacpp")
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        self.engine, self.name, self.lossless = engine, name, True
        draft = LlamaPromptLookupDecoding() if name == "llama-pld" else None
        self.llm = _counting_llama()(
            model_path=str(target.path), n_ctx=min(PEER_CONTEXT, target.max_context), n_threads=target.threads,
            n_threads_batch=target.threads, draft_model=draft, logits_all=draft is not None, verbose=False,
        )

    def generate(self, messages: list[dict[str, str]], *, max_new_tokens: int, settings) -> Generation:
        if not settings.greedy:
            raise QuickdraftError(f"{self.name} is measured greedy only (its sampler is not ours)")
        target = self.engine.target
        prompt_ids = list(self.engine.prepare(messages, max_new_tokens=max_new_tokens).prompt_ids)
        room = min(max_new_tokens, self.llm.n_ctx() - len(prompt_ids))
        self.llm.reset()  # no prompt reused from the previous answer: every prompt is prefilled, as ours are
        self.llm.passes = 0
        new: list[int] = []
        start = time.perf_counter()
        for token in self.llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            new.append(int(token))
            if token in target.eos_ids or len(new) >= room:
                break
        wall = time.perf_counter() - start
        finish = "stop" if new and new[-1] in target.eos_ids else "length"
        return Generation(token_ids=new, wall_s=wall, steps=self.llm.passes, finish_reason=finish)
