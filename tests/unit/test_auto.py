"""``auto``'s choices on synthetic sources, with a fake clock and a scripted target (no model).

The target emits ``REFERENCE`` token by token (greedy decoding of a known
text); a step accepts the longest draft path that matches it, plus one token.
Sources are small drafters with known accuracy; their drafting time and the
verify latency are charged to a fake clock, so costs are exact and the tests
never time anything.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quickdraft import QuickdraftError
from quickdraft.drafters import Draft, DraftContext, Drafter, StepOutcome, get_method
from quickdraft.drafters.auto import Auto, SourceSpec, source_names
from quickdraft.drafters.registry import BuildContext
from quickdraft.engine import accept
from quickdraft.sampling import Draws, SamplingParams
from quickdraft.selection import LatencyModel, resolve
from quickdraft.verify import Verdict
from tests.unit.test_tree_sampling import DRAFT_MODEL, MARKOV, ROOT, chi2_critical, chi2_statistic, markov_joint

VOCAB = 50
REFERENCE = [int(t) for t in np.random.default_rng(0).integers(0, VOCAB, 20_000)]
PROMPT = [1, 2, 3]
CHEAP = lambda n: 0.020 + 0.0004 * n  # noqa: E731  (verify seconds for n nodes: wide passes nearly free)
STEEP = lambda n: 0.020 * (1 + n)  # noqa: E731  (every node costs a whole pass)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class World:
    """What the scripted sources may know: the clock, and a switch the test flips."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.flipped = False
        self.committed = 0  # tokens committed before the step being observed


class Scripted(Drafter):
    """A chain of up to k tokens: the reference's next tokens where ``right(world)``, else wrong ones."""

    def __init__(self, world: World, *, k: int = 8, cost: float = 0.0, right=lambda world: True, probs=False):
        self.world, self.k, self.cost, self.right, self.probs = world, k, cost, right, probs
        self.proposals = 0  # asked for nodes
        self.keep_ups = 0  # proposed with nodes=0
        self.observed = 0

    def propose(self, context: DraftContext) -> Draft:
        if context.nodes == 0:
            self.keep_ups += 1
            return Draft()
        self.proposals += 1
        self.world.clock.now += self.cost
        done = len(context.tokens) - len(PROMPT)
        k = min(self.k, context.budget, context.nodes if context.nodes is not None else self.k)
        truth = REFERENCE[done: done + k]
        tokens = tuple(truth) if self.right(self.world) else tuple((t + 1) % VOCAB for t in truth)
        draft_probs = None
        if self.probs:
            draft_probs = torch.full((len(tokens), VOCAB), 0.5 / (VOCAB - 1))
            draft_probs[torch.arange(len(tokens)), torch.tensor(tokens)] = 0.5
        return Draft(tokens=tokens, draft_probs=draft_probs)

    def observe(self, outcome: StepOutcome) -> None:
        self.observed += 1


def make_auto(world: World, sources: dict[str, Drafter], latency=CHEAP, learns=(), **kwargs) -> Auto:
    specs = [(SourceSpec(name, learns=name in learns), drafter) for name, drafter in sources.items()]
    return Auto(specs, LatencyModel(latency, max_nodes=32), clock=world.clock, **kwargs)


def run(auto: Auto, world: World, steps: int, latency=CHEAP, *, start: int = 0) -> list[Draft]:
    """Decode ``steps`` steps of the scripted target from reference position ``start``; returns the drafts."""
    tokens = PROMPT + REFERENCE[:start]
    drafts = []
    for _ in range(steps):
        draft = auto.propose(DraftContext(tokens=np.array(tokens), prompt_len=len(PROMPT), budget=64))
        drafts.append(draft)
        world.clock.now += latency(len(draft))
        done = len(tokens) - len(PROMPT)
        future = REFERENCE[done: done + 80]
        parents = draft.parents if draft.parents is not None else tuple(range(len(draft)))
        decided, _ = resolve(draft.tokens, parents, future)
        path = tuple(node for node, hit in decided if hit)
        emitted = tuple(future[: len(path) + 1])
        world.committed = len(tokens)
        auto.observe(StepOutcome(draft=draft, path=path, tokens=emitted, target_logits=torch.zeros(len(draft) + 1, 1)))
        tokens += emitted
    return drafts


def diff(after: dict, before: dict) -> dict:
    return {name: {k: v - before.get(name, {}).get(k, 0) for k, v in row.items()} for name, row in after.items()}


# ------------------------------------------------------------------ the selection rule


def test_a_source_that_is_never_accepted_stops_being_chosen():
    world = World()
    wrong = Scripted(world, cost=0.002, right=lambda w: False)  # drafting costs a tenth of a pass
    auto = make_auto(world, {"wrong": wrong})
    run(auto, world, 100)
    before, asked = auto.explain(), wrong.proposals
    run(auto, world, 200)
    late = diff(auto.explain(), before)
    assert late["wrong"]["chosen"] <= 2 and late["plain"]["chosen"] >= 198
    assert wrong.proposals - asked <= 200 * 0.3  # only re-checked now and then (3% of the time), not every step


def test_a_cheap_accurate_source_wins_over_a_wrong_one_and_a_costly_copy():
    world = World()
    good = Scripted(world, cost=0.0001)
    wrong = Scripted(world, cost=0.0001, right=lambda w: False)
    costly = Scripted(world, cost=0.05)  # as accurate, but drafting costs 2.5 plain steps
    auto = make_auto(world, {"costly": costly, "wrong": wrong, "good": good})
    run(auto, world, 60)
    asked_before = costly.proposals
    before = auto.explain()
    run(auto, world, 200)
    late = diff(auto.explain(), before)
    assert late["good"]["accepted"] >= 0.95 * sum(row["accepted"] for row in late.values())
    assert late["good"]["chosen"] >= 195 and late["plain"]["chosen"] == 0
    assert late["wrong"]["accepted"] == 0
    assert costly.proposals - asked_before <= 10  # re-checked rarely: it adds nothing for its cost


def test_plain_steps_when_nothing_pays():
    world = World()
    half = Scripted(world, right=lambda w: w.clock.now % 2 < 1)  # right about half the time
    auto = make_auto(world, {"half": half}, latency=STEEP)
    drafts = run(auto, world, 200, latency=STEEP)
    assert sum(len(d) for d in drafts[20:]) == 0
    assert auto.explain()["plain"]["chosen"] >= 190


def test_drafting_resumes_when_it_pays_again_and_adapts_within_a_request():
    world = World()
    first = Scripted(world, right=lambda w: not w.flipped)
    second = Scripted(world, right=lambda w: w.flipped)
    auto = make_auto(world, {"first": first, "second": second})
    run(auto, world, 100)
    before = auto.explain()
    run(auto, world, 50)
    phase1 = diff(auto.explain(), before)
    world.flipped = True  # mid-request: the other source becomes the right one
    run(auto, world, 30)
    before = auto.explain()
    run(auto, world, 60)
    phase2 = diff(auto.explain(), before)
    assert phase1["first"]["accepted"] > 0.95 * sum(r["accepted"] for r in phase1.values())
    assert phase2["second"]["accepted"] > 0.95 * sum(r["accepted"] for r in phase2.values())
    assert phase2["first"]["chosen"] <= 3


def test_learned_statistics_carry_across_requests():
    world = World()
    good = Scripted(world, k=8)
    auto = make_auto(world, {"good": good})
    cold = run(auto, world, 3)
    run(auto, world, 100)
    auto.reset()
    assert auto.explain()["good"] == {"chosen": 0, "nodes": 0, "accepted": 0}  # the report is per request
    warm = run(auto, world, 3, start=5000)
    assert sum(len(d) for d in warm) == 3 * 8  # a full draft from the first step of the new request
    assert sum(len(d) for d in warm) >= sum(len(d) for d in cold)


def test_sources_that_learn_see_every_step_and_others_only_their_own():
    world = World()
    learner = Scripted(world, cost=0.002, right=lambda w: False)
    other = Scripted(world)
    auto = make_auto(world, {"learner": learner, "other": other}, learns=("learner",))
    run(auto, world, 120)
    assert learner.observed == 120  # observed every step, chosen or not
    assert learner.proposals + learner.keep_ups == 120  # proposed every step, with nodes=0 when not asked
    assert learner.keep_ups > 0
    assert other.observed <= other.proposals  # observes only steps that verified its own draft


class Priming(Drafter):
    """Like heads: drafts from what it observed at the previous step; observing is its costly part."""

    def __init__(self, world: World, *, right=lambda world: True, cost: float = 0.004) -> None:
        self.world, self.right, self.cost = world, right, cost
        self.observed = self.stale = self.drafts = 0
        self.reset()

    def reset(self) -> None:
        self.ready_at: int | None = None  # committed length its guesses are for

    def propose(self, context: DraftContext) -> Draft:
        if self.ready_at is None:
            return Draft()
        self.stale += self.ready_at != len(context.tokens)
        self.drafts += 1
        done = len(context.tokens) - len(PROMPT)
        truth = REFERENCE[done: done + min(6, context.nodes or 6)]
        return Draft(tokens=tuple(truth) if self.right(self.world) else tuple((t + 1) % VOCAB for t in truth))

    def observe(self, outcome: StepOutcome) -> None:
        self.observed += 1
        self.world.clock.now += self.cost
        self.ready_at = self.world.committed + len(outcome.tokens)


def test_a_priming_source_observes_only_before_it_is_asked():
    world = World()
    good = Priming(world)
    auto = Auto([(SourceSpec("heads", primes=True, sees_all=True), good)], LatencyModel(CHEAP, max_nodes=32),
                clock=world.clock)
    run(auto, world, 100)
    assert good.stale == 0 and good.observed <= 101
    assert good.drafts >= 85  # found by an early probe (it starts neutral), then observed and asked every step
    assert auto.explain()["heads"]["accepted"] >= 5 * 90

    world = World()
    useless = Priming(world, right=lambda w: False)
    auto = Auto([(SourceSpec("heads", primes=True, sees_all=True), useless)], LatencyModel(CHEAP, max_nodes=32),
                clock=world.clock)
    run(auto, world, 50)
    observed = useless.observed
    run(auto, world, 200)
    assert useless.stale == 0
    assert useless.observed - observed <= 200 * 0.2  # its costly observing stops but for rare re-checks
    assert auto.explain()["plain"]["chosen"] >= 230


def test_report_accounts_for_every_step_and_accepted_token():
    world = World()
    sometimes = Scripted(world, k=6, right=lambda w: w.clock.now % 1 < .5)
    auto = make_auto(world, {"a": Scripted(world, k=4), "b": sometimes})
    drafts = run(auto, world, 80)
    report = auto.explain()
    assert report["plain"]["chosen"] == sum(1 for d in drafts if not len(d))
    assert sum(row["nodes"] for row in report.values()) == sum(len(d) for d in drafts)
    assert sum(row["chosen"] for name, row in report.items() if name != "plain") >= sum(1 for d in drafts if len(d))


# ------------------------------------------------------------------ what is proposed


def test_one_source_chosen_alone_keeps_its_draft_and_its_probabilities():
    world = World()
    sampled = Scripted(world, probs=True)
    auto = make_auto(world, {"sampled": sampled})
    drafts = run(auto, world, 30)
    assert any(d.draft_probs is not None and d.draft_probs.shape == (len(d), VOCAB) for d in drafts[5:])


def test_drafts_of_several_sources_are_merged_into_one_deterministic_tree():
    world = World()
    auto = make_auto(world, {"left": Scripted(world, k=6, probs=True),
                             "right": Scripted(world, k=3, right=lambda w: False)}, margin=0.0)
    drafts = run(auto, world, 3)
    merged = [d for d in drafts if d.parents is not None and not d.is_chain]
    assert merged, "with verification nearly free, both sources' first guesses are verified"
    assert all(d.draft_probs is None for d in merged)
    first = merged[0]
    assert len(set(zip(first.parents, first.tokens))) == len(first), "siblings are distinct"


def test_auto_respects_the_budget_and_a_node_limit():
    world = World()
    auto = make_auto(world, {"good": Scripted(world, k=20)})
    run(auto, world, 20)
    draft = auto.propose(DraftContext(tokens=np.array(PROMPT), prompt_len=3, budget=2))
    assert len(draft) <= 2
    auto.observe(StepOutcome(draft=draft, path=(), tokens=(0,), target_logits=torch.zeros(len(draft) + 1, 1)))
    draft = auto.propose(DraftContext(tokens=np.array(PROMPT + [0]), prompt_len=3, budget=10, nodes=3))
    assert len(draft) <= 3
    auto.observe(StepOutcome(draft=draft, path=(), tokens=(0,), target_logits=torch.zeros(len(draft) + 1, 1)))
    assert len(auto.propose(DraftContext(tokens=np.array(PROMPT + [0, 0]), prompt_len=3, budget=0))) == 0


def test_memory_is_bounded():
    world = World()
    auto = make_auto(world, {"a": Scripted(world, k=30), "b": Scripted(world, k=30)}, max_pending=16)
    tokens = list(PROMPT)
    for _ in range(40):  # proposals are never resolved: the target never emits anything new here
        auto.propose(DraftContext(tokens=np.array(tokens), prompt_len=3, budget=64))
    assert len(auto._pending) <= 16
    shape = auto.stats.accepted.shape
    run(auto, world, 100)
    assert auto.stats.accepted.shape == shape


# ------------------------------------------------------------------ building


def test_source_names_and_bad_options():
    assert source_names({})[0] == ["pld-tree", "recycle", "ngram", "eagle"]  # eagle: if an adapter is found
    assert source_names({"datastore": "/x"})[0] == ["pld-tree", "recycle", "ngram", "rest", "eagle"]
    # heads: only with an adapter given (which eagle then tries too: a heads adapter leaves it out quietly)
    assert source_names({"adapter": "/a"})[0] == ["pld-tree", "recycle", "ngram", "heads", "eagle"]
    assert source_names({"sources": "ngram,eagle"}) == (["ngram", "eagle"], True)  # eagle: when listed
    assert source_names({}, "cuda:0")[0] == ["pld-tree", "recycle", "ngram"]  # not by default on a GPU
    assert source_names({"sources": "ngram,eagle"}, "cuda") == (["ngram", "eagle"], True)
    assert source_names({"sources": "recycle, ngram"}) == (["recycle", "ngram"], True)
    with pytest.raises(QuickdraftError, match="unknown source 'bogus'"):
        source_names({"sources": "pld-tree,bogus"})
    with pytest.raises(QuickdraftError, match="listed twice"):
        source_names({"sources": "recycle,recycle"})


def test_build_on_the_tiny_model(tiny_engine):
    auto = get_method("auto").build(BuildContext(target=tiny_engine.target, options={"sources": "pld-tree,recycle"}))
    assert [src.name for src in auto.sources] == ["pld-tree", "recycle"]
    with pytest.raises(QuickdraftError, match="needs a datastore"):
        get_method("auto").build(BuildContext(target=tiny_engine.target, options={"sources": "rest"}))


# ------------------------------------------------------------------ sampling stays exact


class MarkovSource(Drafter):
    """Chains in the 4-token Markov world of test_tree_sampling: fixed guesses, the argmax path, or sampled."""

    def __init__(self, kind: str, k: int = 3, seed: int = 0) -> None:
        self.kind, self.k = kind, k
        self.g = torch.Generator().manual_seed(seed)

    def propose(self, context: DraftContext) -> Draft:
        k = min(self.k, context.budget, self.k if context.nodes is None else context.nodes)
        if k <= 0:
            return Draft()
        last, tokens, rows = int(context.tokens[-1]), [], []
        for _ in range(k):
            if self.kind == "fixed":
                last = (last + 1) % 4
            elif self.kind == "argmax":
                last = int(MARKOV[last].argmax())
            else:
                rows.append(DRAFT_MODEL[last])
                last = int(torch.multinomial(DRAFT_MODEL[last], 1, generator=self.g))
            tokens.append(last)
        return Draft(tokens=tuple(tokens), draft_probs=torch.stack(rows) if rows else None)


def markov_counts(verifier, *, trials: int, length: int, seed: int) -> tuple[dict, dict]:
    """Joint counts of the first ``length`` tokens decoded by auto over Markov sources (mixed, or one alone)."""
    world = World()
    mixed = make_auto(world, {"fixed": MarkovSource("fixed"), "argmax": MarkovSource("argmax"),
                              "sampled": MarkovSource("sampled", seed=seed)}, margin=0.0)
    alone = make_auto(world, {"sampled": MarkovSource("sampled", seed=seed + 1)})
    params = SamplingParams(temperature=1.0)
    counts: dict = {}
    kinds = {"one source, with probabilities": 0, "merged tree": 0}
    for trial in range(trials):
        auto = mixed if trial % 2 else alone
        auto.reset()
        draws = Draws(seed=seed * 1_000_003 + trial)  # a request's draws, keyed by position
        tokens = [ROOT]
        while len(tokens) <= length:
            draft = auto.propose(DraftContext(tokens=np.array(tokens), prompt_len=1, budget=3, params=params))
            world.clock.now += CHEAP(len(draft))
            kinds["one source, with probabilities"] += draft.draft_probs is not None
            kinds["merged tree"] += not draft.is_chain
            logits = MARKOV[[tokens[-1], *draft.tokens]].log()  # [n + 1, 4]: the target row at every node
            verdict = verifier(logits, draft, params, draws, position=len(tokens))
            auto.observe(StepOutcome(draft=draft, path=verdict.path, tokens=verdict.tokens, target_logits=logits))
            tokens += verdict.tokens
        key = tuple(tokens[1: length + 1])
        counts[key] = counts.get(key, 0) + 1
    return counts, kinds


def test_auto_under_sampling_keeps_the_target_distribution():
    """Mixes of deterministic and sampled drafts, verified by the engine, leave the output distribution exact."""
    counts, kinds = markov_counts(accept, trials=2000, length=3, seed=5)
    assert all(kinds.values()), f"both kinds of draft must be exercised: {kinds}"
    stat, dof = chi2_statistic(counts, markov_joint(3))
    assert stat < chi2_critical(dof), (stat, dof)


def test_the_sampling_check_can_fail():
    """Negative control: a verifier that always accepts the first branch is caught by the same check."""
    def gullible(logits, draft, params, draws, position):
        parents = draft.parents if draft.parents is not None else tuple(range(len(draft)))
        path, node = [], 0
        for i, p in enumerate(parents, start=1):
            if p == node:
                path.append(i)
                node = i
        bonus = int(torch.multinomial(logits[node].softmax(-1), 1, generator=draws.at(position + len(path))))
        return Verdict(path=tuple(path), tokens=(*(draft.tokens[i - 1] for i in path), bonus))

    counts, _ = markov_counts(gullible, trials=2000, length=3, seed=5)
    stat, dof = chi2_statistic(counts, markov_joint(3))
    assert stat > chi2_critical(dof)


def test_optional_sources_join_when_their_inputs_are_given_and_stay_lossless(tiny_engine, tiny_draft_dir,
                                                                            tiny_method_options):
    options = {"draft_model": str(tiny_draft_dir), "datastore": tiny_method_options["rest"]["datastore"],
               "adapter": tiny_method_options["heads"]["adapter"]}
    opt_in = {"sources": "pld-tree,lookahead,swift,early-exit"}
    eagle = {"sources": "ngram,eagle", "adapter": tiny_method_options["eagle"]["adapter"]}
    prompt = "the quick brown fox jumps over the lazy dog. the quick brown fox"
    expected = tiny_engine.generate(prompt, method="ar", max_new_tokens=40, chat=False).token_ids
    for opts, names in ((options, ["pld-tree", "recycle", "ngram", "rest", "draft", "heads"]),
                        (opt_in, ["pld-tree", "lookahead", "swift", "early-exit"]), (eagle, ["ngram", "eagle"])):
        assert [src.name for src in tiny_engine.drafter("auto", opts).sources] == names
        for _ in range(2):  # the second request starts from what the first learned
            got = tiny_engine.generate(prompt, method="auto", max_new_tokens=40, chat=False, options=opts)
            assert got.token_ids == expected
    sampled = tiny_engine.generate(prompt, method="auto", max_new_tokens=40, chat=False, options=options,
                                   temperature=0.8, seed=3)
    assert 1 <= len(sampled.token_ids) <= 40
    assert list(sampled.stats.sources) == ["plain", "pld-tree", "recycle", "ngram", "rest", "draft", "heads"]
