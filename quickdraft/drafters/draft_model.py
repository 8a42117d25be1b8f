"""``draft``: a separate small draft model (Leviathan et al. 2023; Chen et al. 2023).

The draft model (``draft_model`` option, CLI ``--draft-model``: an alias, a
``.gguf`` file, a model directory or a hub id, loaded in the target's dtype)
must share the target's vocabulary: identical, or identical on every ordinary
token with differences only in special/added or padding tokens, which are then
mapped by their text (:func:`vocab_map`). Anything else is refused with the
first differing token named.

The draft keeps its own KV cache in step with the committed tokens (see
:class:`~quickdraft.drafters.lm.DraftSession`). Drafting (chains with an
adaptive or fixed length, or dynamic trees with ``tree=true``) is
:class:`~quickdraft.drafters.model_drafter.ModelDrafter`.
"""

from __future__ import annotations

import numpy as np

from ..errors import QuickdraftError
from .base import Drafter
from .model_drafter import ModelDrafter, TreeShape, VocabMap
from .registry import BuildContext, register

DTYPE_NAMES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids.update(int(i) for i in (getattr(tokenizer, "added_tokens_decoder", None) or {}))
    return ids


def vocab_map(target_tok, draft_tok, *, target_vocab: int, draft_vocab: int,
              target_name: str = "target", draft_name: str = "draft") -> VocabMap:
    """Check two tokenizers are compatible and map target ids to draft ids.

    target_vocab / draft_vocab: the models' output sizes (embedding rows may
    exceed the tokenizer's entries: padding rows, never mapped).

    Raises QuickdraftError naming the first token id where an ordinary (not
    special or added) token differs.
    """
    t_vocab, d_vocab = target_tok.get_vocab(), draft_tok.get_vocab()  # token text -> id
    if t_vocab == d_vocab and target_vocab == draft_vocab:
        return VocabMap(None, draft_vocab)
    t_text = {i: s for s, i in t_vocab.items()}
    d_text = {i: s for s, i in d_vocab.items()}
    t_special, d_special = _special_ids(target_tok), _special_ids(draft_tok)
    ordinary = sorted({i for i in t_text if i not in t_special} | {i for i in d_text if i not in d_special})
    for i in ordinary:
        t, d = t_text.get(i), d_text.get(i)
        if t != d or i in t_special or i in d_special:
            def show(text, special):
                return "nothing" if text is None else repr(text) + (" (special)" if special else "")
            raise QuickdraftError(
                f"the draft model {draft_name} does not share the vocabulary of {target_name}: token id {i} is "
                f"{show(t, i in t_special)} in the target but {show(d, i in d_special)} in the draft"
            )
    to_draft = np.full(target_vocab, -1, dtype=np.int64)
    for text, i in t_vocab.items():
        j = d_vocab.get(text)
        if i < target_vocab and j is not None and j < draft_vocab:
            to_draft[i] = j
    if target_vocab == draft_vocab and np.array_equal(to_draft, np.arange(target_vocab)):
        return VocabMap(None, draft_vocab)
    return VocabMap(to_draft, draft_vocab)


def parse_bool(value) -> bool:
    """Options from the command line arrive as text: ``true``/``false``/``1``/``0``."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def drafter_settings(ctx: BuildContext, *, tree: bool = False) -> dict:
    """ModelDrafter keyword arguments from the shared options: k, max_k, cost, tree, width, depth, nodes.

    tree: the default of the ``tree`` option. A tree without a ``nodes`` option
    gets its node budget per step from the machine's latency profile.
    """
    opts = ctx.pick("k", "max_k", "cost", "tree", "width", "depth", "nodes")
    out = {}
    for name in ("k", "max_k"):
        if name in opts:
            out[name] = int(opts[name])
    if "cost" in opts:
        out["cost"] = float(opts["cost"])
    if parse_bool(opts.get("tree", tree)):
        shape = {name: int(opts[name]) for name in ("width", "depth", "nodes") if name in opts}
        out["tree"] = TreeShape(**shape)
        if "nodes" not in opts:
            from ..sizing import adaptive_node_budget

            out["node_budget"] = adaptive_node_budget(ctx.target)
    elif any(name in opts for name in ("width", "depth", "nodes")):
        raise ValueError("width, depth and nodes are tree settings: add tree=true")
    return out


class DraftModelDrafter(ModelDrafter):
    """A :class:`ModelDrafter` over a separate draft model (kept for ``isinstance`` checks and repr)."""


@register("draft", order=7, source={"sized": False, "needs": "draft_model"},
          description="a separate small draft model (--draft-model): chains of adaptive length")
def build(ctx: BuildContext) -> Drafter:
    return build_draft(ctx, tree=False)


@register("draft-tree", order=7.5,
          description="a separate small draft model (--draft-model): dynamic trees (EAGLE-2 style)")
def build_tree(ctx: BuildContext) -> Drafter:
    return build_draft(ctx, tree=True)


def build_draft(ctx: BuildContext, *, tree: bool) -> Drafter:
    """A :class:`DraftModelDrafter` for the ``draft_model`` option, on the target's backend (the target
    itself if it names the target)."""
    from ..backends import load_target

    target = ctx.target
    spec = ctx.options.get("draft_model")
    if not spec:
        raise QuickdraftError("this method needs a draft model: --draft-model NAME (or options={'draft_model': ...})")
    backend = getattr(target, "backend", "transformers")
    if tree and backend != "transformers":
        raise QuickdraftError(f"draft-tree runs on the transformers backend; on {backend} use `draft` (draft chains)")
    if spec == target.name and backend == "transformers":
        draft = target  # the target drafts for itself
    else:
        draft = load_target(str(spec), backend=backend, dtype=DTYPE_NAMES.get(str(target.dtype), "auto"),
                            device=str(target.device), threads=getattr(target, "threads", None))
    lm = draft.draft_lm()
    tokenizer, name = draft.tokenizer, draft.name
    vocab = vocab_map(target.tokenizer, tokenizer, target_vocab=target.vocab_size, draft_vocab=lm.vocab_size,
                      target_name=target.name, draft_name=name)
    settings = {"cost": draft.pass_weights / target.pass_weights, **drafter_settings(ctx, tree=tree)}
    fallback = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return DraftModelDrafter(lm, vocab=vocab, fallback_id=int(fallback), **settings)
