"""What ``ppd`` and ``heads`` training minimise: the frozen model's own next-token distributions.

Both objectives are self-distillation. For an *anchor* position a of a training
sequence and a depth d = 0..D-1, the drafter predicts the token at a + d + 2
from the prefix up to a; its teacher is the target's distribution for that
token, i.e. the target's logits at position a + d + 1 (computed on the real
sequence). The loss is the cross-entropy between the teacher's softmax and the
drafter's log-softmax (equal to the KL divergence up to a constant).

* ``ppd``: the m prompt tokens of many anchors go into ONE forward pass. The
  real tokens run first without gradients (they never see a prompt token, so
  their keys and values are the same as in the combined pass), and the
  prompt tokens follow against that cache with a 4D mask: prompt j of anchor a
  sits at position a + 1 + j and sees tokens 0..a and prompts 0..j of its own
  group. Only the prompt embeddings get gradients.
* ``heads``: the heads read the target's final hidden state at the anchor; the
  hidden states of the training set are computed once and reused every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache

from ..drafters.heads import ResidualHeads
from ..drafters.ppd import TENSOR as PROMPT_TENSOR
from .data import Sequence


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum(softmax(teacher) * log_softmax(student))``; both [N, V]."""
    teacher = torch.softmax(teacher_logits.float(), dim=-1)
    return -(teacher * torch.log_softmax(student_logits.float(), dim=-1)).sum(-1).mean()


def anchor_range(seq: Sequence, depth: int) -> range:
    """Anchors in the answer (from the prompt's last token on) whose D targets lie inside the sequence.

    >>> anchor_range(Sequence(ids=tuple(range(10)), prompt_len=4), depth=3)
    range(3, 6)
    """
    return range(max(seq.prompt_len - 1, 0), len(seq.ids) - depth - 1)


def target_tokens(seq: Sequence, anchors: torch.Tensor, depth: int) -> torch.Tensor:
    """[A, D]: the tokens the drafter should guess, ids[a + d + 2]."""
    ids = torch.tensor(seq.ids)
    return ids[anchors[:, None] + 2 + torch.arange(depth)[None, :]]


def prompt_group_mask(prefix_len: int, anchors: torch.Tensor, m: int) -> torch.Tensor:
    """[A*m, prefix_len + A*m] bool: what each prompt token may attend to.

    Row a*m + j (prompt j of anchor a) sees real tokens 0..anchors[a] and the
    prompt tokens 0..j of its own group.

    >>> prompt_group_mask(3, torch.tensor([0, 2]), 2).int().tolist()
    [[1, 0, 0, 1, 0, 0, 0], [1, 0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 1, 1]]
    """
    count = len(anchors) * m
    anchor_of_row = anchors.repeat_interleave(m)  # [A*m]
    real = torch.arange(prefix_len)[None, :] <= anchor_of_row[:, None]  # [A*m, T]
    group = torch.arange(len(anchors)).repeat_interleave(m)  # [A*m]
    j = torch.arange(m).repeat(len(anchors))  # [A*m]
    own = (group[:, None] == group[None, :]) & (j[None, :] <= j[:, None])  # [A*m, A*m]
    assert real.shape == (count, prefix_len)
    return torch.cat([real, own], dim=1)


class PPDObjective:
    """Trains m prompt-token embeddings (the only parameters) against the frozen model."""

    kind = "ppd"

    def __init__(self, model, *, prompt_tokens: int = 3, seed: int = 0) -> None:
        self.model = model
        table = model.get_input_embeddings().weight.detach().float()  # [V, H]
        generator = torch.Generator().manual_seed(seed)
        # Start near an average token, so the first steps already give the model ordinary input.
        noise = torch.randn(prompt_tokens, table.shape[1], generator=generator) * table.std(0) * 0.5
        self.embeds = nn.Parameter(table.mean(0).expand(prompt_tokens, -1) + noise)  # [m, H] float32
        self.depth = prompt_tokens

    @property
    def hparams(self) -> dict:
        return {"prompt_tokens": self.depth}

    def parameters(self) -> list[nn.Parameter]:
        return [self.embeds]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {PROMPT_TENSOR: self.embeds.detach().clone()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.embeds.copy_(tensors[PROMPT_TENSOR])

    def logits(self, seq: Sequence, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(student [A, m, V], teacher [A, m, V]) for the given anchors of one sequence."""
        model, m = self.model, self.depth
        device, dtype = model.device, model.dtype
        ids = torch.tensor([seq.ids], device=device)  # [1, T]
        prefix = ids.shape[1]
        with torch.no_grad():
            cache = DynamicCache(config=model.config)
            teacher_all = model(input_ids=ids, cache=cache, use_cache=True).logits[0]  # [T, V]
        count = len(anchors) * m
        allowed = prompt_group_mask(prefix, anchors, m).to(device)  # [A*m, T + A*m]
        mask = torch.zeros(1, 1, *allowed.shape, dtype=dtype, device=device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        positions = (anchors[:, None] + 1 + torch.arange(m)[None, :]).reshape(1, count).to(device)
        inputs = self.embeds.to(dtype).repeat(len(anchors), 1)[None]  # [1, A*m, H]
        out = model(inputs_embeds=inputs, cache=cache, use_cache=True, position_ids=positions,
                    attention_mask=mask, cache_position=torch.arange(prefix, prefix + count, device=device))
        student = out.logits[0].view(len(anchors), m, -1)  # [A, m, V]
        teacher = teacher_all[(anchors[:, None] + 1 + torch.arange(m)[None, :]).to(device)]  # [A, m, V]
        return student, teacher

    def loss(self, batch: list[tuple[Sequence, torch.Tensor]]) -> torch.Tensor:
        losses = []
        for seq, anchors in batch:
            student, teacher = self.logits(seq, anchors)
            losses.append(soft_cross_entropy(student.flatten(0, 1), teacher.flatten(0, 1)))
        return torch.stack(losses).mean()

    @torch.no_grad()
    def predict(self, seq: Sequence, anchors: torch.Tensor) -> torch.Tensor:
        """[A, m, V] the drafter's logits."""
        return self.logits(seq, anchors)[0]


class _ReadsHidden:
    """Objectives that train on the frozen model's final hidden states, computed once per sequence."""

    model: nn.Module
    _hidden: dict[tuple[int, ...], torch.Tensor]

    @torch.no_grad()
    def hidden(self, seq: Sequence) -> torch.Tensor:
        """[T, H] in the model's dtype: the final hidden state (the lm_head's input) at every position, cached."""
        if seq.ids not in self._hidden:
            ids = torch.tensor([seq.ids], device=self.model.device)
            self._hidden[seq.ids] = self.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        return self._hidden[seq.ids]


class HeadsObjective(_ReadsHidden):
    """Trains K residual low-rank heads on the frozen model's final hidden states."""

    kind = "heads"

    def __init__(self, model, *, heads: int = 3, rank: int = 128, token_input: bool = False, seed: int = 0) -> None:
        self.model = model
        torch.manual_seed(seed)
        hidden = int(model.get_output_embeddings().weight.shape[1])
        self.heads = ResidualHeads(heads, hidden, rank, token_input=token_input)  # float32 parameters
        self.embed_weight = model.get_input_embeddings().weight.detach()  # [V, H]
        # [V, H] in the model's dtype: in bfloat16 the big vocabulary matmuls are several times faster
        # than in float32, and the teacher's logits are then exactly what decoding computes.
        self.lm_weight = model.get_output_embeddings().weight.detach()
        self.depth = heads
        self._hidden: dict[tuple[int, ...], torch.Tensor] = {}

    @property
    def hparams(self) -> dict:
        return {"heads": self.depth, "rank": int(self.heads.down.shape[1]), "token_input": self.heads.token_input}

    def parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.heads.tensors().items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self.heads.tensors().items():
                param.copy_(tensors[name])

    def logits(self, seq: Sequence, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(student [A, K, V], teacher [A, K, V])."""
        hidden = self.hidden(seq)  # [T, H]
        weight = self.lm_weight.to(hidden.device)
        rows = anchors[:, None] + 1 + torch.arange(self.depth)[None, :]  # [A, K]
        # Contiguous inputs only: for a non-contiguous 3D input, matmul copies the [V, H] weight per row.
        with torch.no_grad():
            teacher = nn.functional.linear(hidden[rows], weight)  # [A, K, V]
        next_embeds = None
        if self.heads.token_input:  # the token after the anchor: at decoding time, the step's bonus token
            next_ids = torch.tensor(seq.ids, device=self.embed_weight.device)[anchors + 1]
            next_embeds = self.embed_weight[next_ids].float()  # [A, H]
        shifted = self.heads(hidden[anchors].float(), next_embeds)  # [K, A, H] float32 (the trained part)
        student = nn.functional.linear(shifted.to(weight.dtype), weight).transpose(0, 1)  # [A, K, V]
        return student, teacher

    def loss(self, batch: list[tuple[Sequence, torch.Tensor]]) -> torch.Tensor:
        students, teachers = zip(*(self.logits(seq, anchors) for seq, anchors in batch))
        student, teacher = torch.cat(students), torch.cat(teachers)
        return soft_cross_entropy(student.flatten(0, 1), teacher.flatten(0, 1))

    @torch.no_grad()
    def predict(self, seq: Sequence, anchors: torch.Tensor) -> torch.Tensor:
        return self.logits(seq, anchors)[0]


@dataclass(frozen=True)
class Accuracy:
    """Held-out accuracy per predicted position: ``top1[d]`` and ``topk[d]`` for the token at +d+2."""

    top1: list[float]
    topk: list[float]
    k: int
    predictions: int

    def to_dict(self) -> dict:
        return {"top1": [round(x, 4) for x in self.top1], f"top{self.k}": [round(x, 4) for x in self.topk],
                "k": self.k, "predictions": self.predictions}


def evaluate(objective, sequences: list[Sequence], *, k: int = 5, chunk: int = 64) -> Accuracy:
    """Top-1 and top-k accuracy of the drafter on every anchor of ``sequences``."""
    depth = objective.depth
    hit1 = np.zeros(depth)
    hitk = np.zeros(depth)
    total = 0
    for seq in sequences:
        anchors_all = torch.tensor(list(anchor_range(seq, depth)), dtype=torch.long)
        for start in range(0, len(anchors_all), chunk):
            anchors = anchors_all[start: start + chunk]
            logits = objective.predict(seq, anchors).float().cpu()  # [A, D, V]
            want = target_tokens(seq, anchors, depth)  # [A, D]
            top = logits.topk(k, dim=-1).indices  # [A, D, k]
            hit1 += (top[..., 0] == want).sum(0).numpy()
            hitk += (top == want[..., None]).any(-1).sum(0).numpy()
            total += len(anchors)
    if total == 0:
        return Accuracy([0.0] * depth, [0.0] * depth, k, 0)
    return Accuracy(list(hit1 / total), list(hitk / total), k, total)


def frequent_tokens(sequences: list[Sequence], limit: int, vocab_size: int) -> torch.Tensor:
    """[<= limit] the token ids used most in ``sequences`` (the eagle drafter's vocabulary), most used first.

    >>> frequent_tokens([Sequence(ids=(5, 5, 7, 2, 5, 7), prompt_len=1)], limit=2, vocab_size=10).tolist()
    [5, 7]
    """
    counts = np.bincount(np.concatenate([np.asarray(s.ids, dtype=np.int64) for s in sequences]), minlength=vocab_size)
    order = np.argsort(-counts, kind="stable")
    used = order[counts[order] > 0][:limit]
    return torch.from_numpy(np.ascontiguousarray(used))


class EagleObjective(_ReadsHidden):
    """Trains an EAGLE-style feature drafter (:mod:`quickdraft.drafters.eagle`) on the frozen model's hidden states.

    At every position i the drafter reads the target's final hidden state f_i
    and the next token's embedding and predicts f_{i+1} (attending to the
    positions before, the prompt's too, as in decoding); at the answer's
    positions (from the prompt's last token on) the loss is the soft cross-entropy
    of the output layer (restricted to the drafter's vocabulary) at the
    predicted feature against the target's own distribution there, plus a
    smooth-L1 term pulling the feature itself towards f_{i+1} (EAGLE's
    regression loss). Inputs get a little Gaussian noise, so the drafter
    tolerates its own imperfect features when it rolls out several tokens.
    """

    kind = "eagle"

    def __init__(self, model, *, sequences: list[Sequence] | None = None, extra: list[Sequence] | None = None,
                 vocab: int = 8192,
                 intermediate: int = 768, depth: int = 3, noise: float = 0.05, seed: int = 0) -> None:
        from ..drafters.eagle import FeatureDrafter

        self.model = model
        torch.manual_seed(seed)
        lm = model.get_output_embeddings().weight.detach()  # [V, H]
        if sequences or extra:  # the model's own answers' tokens first, then the extra text's
            chosen = frequent_tokens(sequences, vocab, lm.shape[0]) if sequences else torch.empty(0, dtype=torch.long)
            if extra and len(chosen) < vocab:
                more = frequent_tokens(extra, vocab, lm.shape[0])
                more = more[~torch.isin(more, chosen)][: vocab - len(chosen)]
                chosen = torch.cat([chosen, more])
        else:  # no data (an untrained adapter for tests): the first ids
            chosen = torch.arange(min(vocab, lm.shape[0]))
        self.drafter = FeatureDrafter(model.config, intermediate=intermediate, vocab=chosen)
        self.embed = model.get_input_embeddings()  # the module, as decoding embeds (some models scale it)
        self.head = lm[chosen].contiguous()  # [V', H] in the model's dtype
        self.depth, self.noise = depth, noise
        self._hidden: dict[tuple[int, ...], torch.Tensor] = {}

    @property
    def hparams(self) -> dict:
        return {"intermediate": self.drafter.intermediate, "vocab": int(self.drafter.vocab.numel())}

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.drafter.parameters() if p.requires_grad]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.drafter.trained_tensors().items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self.drafter.trained_tensors().items():
                if name == "vocab":
                    if not torch.equal(tensors[name].long(), param):
                        raise ValueError("the adapter's vocabulary differs from this run's")
                    continue
                param.copy_(tensors[name])

    def _inputs(self, seq: Sequence, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, next embeddings, positions) of the entries at positions 0 .. T - 2."""
        ids = torch.tensor(seq.ids, device=hidden.device)
        features = hidden[:-1].float()[None]  # [1, T - 1, H]
        with torch.no_grad():
            following = self.embed(ids[1:]).float()[None]  # [1, T - 1, H]
        positions = torch.arange(0, len(seq.ids) - 1, device=hidden.device)[None]
        return features, following, positions

    def loss(self, batch: list[tuple[Sequence, torch.Tensor]]) -> torch.Tensor:
        losses = []
        for seq, anchors in batch:  # every answer position counts (one pass of one layer computes them all)
            hidden = self.hidden(seq)
            features, following, positions = self._inputs(seq, hidden)
            if self.noise:  # drawn from the batch (a pure function of seed and step), so a resumed run is the same
                generator = torch.Generator().manual_seed(int(anchors.sum()) * 1_000_003 + len(seq.ids))
                noise = torch.randn(features.shape, generator=generator).to(features.device)
                features = features + noise * self.noise * features.std()
            first = max(seq.prompt_len - 1, 0)  # the loss is on the answer's positions
            predicted = self.drafter(features, following, positions)[0, first:]  # [n, H]: f_{i+1}
            wanted = hidden[first + 1:].float()  # [n, H]
            student = nn.functional.linear(predicted.to(self.head.dtype), self.head)  # [n, V']
            with torch.no_grad():
                teacher = nn.functional.linear(wanted.to(self.head.dtype), self.head)
            losses.append(soft_cross_entropy(student, teacher) + nn.functional.smooth_l1_loss(predicted, wanted))
        return torch.stack(losses).mean()

    @torch.no_grad()
    def predict(self, seq: Sequence, anchors: torch.Tensor) -> torch.Tensor:
        """[A, D, V] logits (full vocabulary, -inf outside the drafter's): rolled out from each anchor as decoding does."""
        from ..drafters.eagle import rollout

        hidden = self.hidden(seq)
        features, following, positions = self._inputs(seq, hidden)
        head = self.head.float()
        out = torch.full((len(anchors), self.depth, self.embed.weight.shape[0]), float("-inf"))
        for row, anchor in enumerate(anchors.tolist()):
            cache = DynamicCache()
            n = anchor + 1  # entries up to the anchor
            last = self.drafter(features[:, :n], following[:, :n], positions[:, :n], cache=cache)[:, -1:]
            logits = rollout(self.drafter, self.embed, head, last, cache, anchor + 1, self.depth)  # [D, V']
            out[row][:, self.drafter.vocab] = logits
        return out
