"""Multi-turn dialogues for the sequence-level trainers: sampling, loss masks, preference pairs.

A dialogue env (``prefenv/TextDialogue-v0``) lets the policy write one token per step, ends a
turn at EOS and appends the user's reply itself. This module drives such an env with a causal
LM through the Gymnasium API only (agents never import ``envs``): :class:`DialogueSampler`
samples each turn for a batch of dialogues in one batched KV-cache loop
(:func:`~agents.text.sampling.sample_tokens`, pure sampling), feeds its tokens to the
envs, and returns every finished dialogue as one token sequence ``[opening | turn 1, EOS,
reply 1, turn 2, ...]`` with a **loss mask**, the observation's ``role`` array: 1 on the tokens
the policy sampled, 0 on the user's. So:

- **GRPO** (:func:`agents.text.grpo.train_grpo` with ``sampler=DialogueSampler(...)``): ``G``
  dialogues per opening; ``reward_fn`` scores the ``(opening, dialogue)`` texts (the env's true
  dialogue score, or a learned text reward model); the clipped loss and its KL terms read only
  the loss mask's tokens.
- **DPO** (:func:`agents.text.dpo.train_dpo` on :func:`dialogue_pairs`): two dialogues of one
  opening, chosen and rejected; their ``completion_mask`` is the loss mask, so the summed
  log-probs, and thus every DPO-family loss, see only the policy's turns.
- **PPO-KL** needs nothing from here: it steps the env token by token and its actions are the
  policy's tokens only; the user's tokens arrive inside the next observation.

Env contract read (documented on the env): observation keys ``input_ids``, ``attention_mask``
(left-padded window), ``prompt_length`` (the opening), ``role``; ``reset(options={"opening":
text})``; a turn-ending step's info has ``"turn_score"``; the last step's info has
``"dialogue"`` (the text after the opening), ``"dialogue_score"``, ``"turns"`` and ``"end"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from agents.text.dpo_steps import EncodedData, eval_mode
from agents.text.pairs import PairBatch, stack_rows
from agents.text.sampling import PolicySamples, SampledCompletions, sample_tokens
from agents.text.sft import check_context

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from prefenv.records import Comparison

__all__ = [
    "DialogueSampler",
    "EncodedDialoguePair",
    "SampledDialogues",
    "collate_dialogue_pairs",
    "dialogue_eval",
    "dialogue_pairs",
]


@dataclass(frozen=True)
class SampledDialogues:
    """``N`` finished dialogues, each one token sequence.

    Attributes:
        samples: ``prompts`` are the openings, ``texts`` the dialogues after them in text form;
            ``prompt_ids``/``prompt_mask`` ``[N, P]`` the left-padded openings (BOS first);
            ``completion_ids`` ``[N, C]`` the rest, right-padded; ``completion_mask`` 1 on its
            real tokens (policy and user); ``eos`` whether the dialogue ended by termination.
        loss_mask: ``[N, C]`` int64, 1 on the tokens the policy sampled, 0 on the user's.
        scores: ``[N]`` the env's dialogue scores (episode true returns).
        turns: ``[N]`` policy turns per dialogue.
        ends: ``[N]`` how each ended: ``"goal"`` (met), ``"left"`` (the user left) or ``"cap"``
            (``max_turns``).
    """

    samples: SampledCompletions
    loss_mask: Tensor
    scores: np.ndarray
    turns: np.ndarray
    ends: np.ndarray

    @property
    def policy_samples(self) -> PolicySamples:
        """What GRPO trains on."""
        return PolicySamples(self.samples, self.loss_mask)


class _Finished(NamedTuple):
    ids: np.ndarray  # real tokens of the whole dialogue
    role: np.ndarray  # 1 on policy tokens
    n_prompt: int
    text: str
    score: float
    turns: int
    terminated: bool
    end: str


class DialogueSampler:
    """Samples whole dialogues with a causal LM through dialogue envs (a GRPO :class:`Sampler`).

    Args:
        envs: dialogue envs sharing the policy's tokenizer; ``len(envs)`` dialogues run at once.
        tokenizer: the policy's tokenizer.
        max_turn_tokens: the envs' turn cap (tokens per turn, EOS included).

    Raises:
        ValueError: no envs, or envs without the dialogue observation (a ``role`` entry).
    """

    def __init__(
        self, envs: Sequence[gym.Env], tokenizer: PreTrainedTokenizerBase, max_turn_tokens: int
    ) -> None:
        if not envs:
            raise ValueError("DialogueSampler needs at least one dialogue env")
        space = envs[0].observation_space
        if not isinstance(space, gym.spaces.Dict) or "role" not in space.spaces:
            raise ValueError(
                f"DialogueSampler drives dialogue envs (a Dict observation with a 'role' entry, "
                f"as prefenv/TextDialogue-v0), got {space}"
            )
        self.envs = list(envs)
        self.window = int(space["input_ids"].shape[0])
        self.tokenizer = tokenizer
        self.max_turn_tokens = max_turn_tokens
        self.eos = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad = self.eos if pad is None else int(pad)

    def __call__(self, model: nn.Module, prompts: list[str], seed: int) -> PolicySamples:
        """GRPO's :class:`~agents.text.grpo.Sampler`: one dialogue per opening in ``prompts``."""
        return self.sample(model, prompts, seed).policy_samples

    @torch.no_grad()
    def sample(self, model: nn.Module, openings: Sequence[str], seed: int) -> SampledDialogues:
        """One dialogue per opening (temperature 1, full distribution), seeded.

        Env ``i`` of a chunk is reset with a seed drawn from ``seed`` and the opening, so the
        user's replies are reproducible too.

        Raises:
            ValueError: the envs' window is longer than the model's context (lower the envs'
                ``max_turn_tokens`` or ``rules.max_turns``), or the envs' turn cap differs from
                ``max_turn_tokens``.
        """
        try:
            check_context(model, self.window)
        except ValueError as error:
            raise ValueError(
                f"{error}: a dialogue env's window ({self.window} tokens) must fit the model; "
                "make the env with a smaller max_turn_tokens or rules=UserRules(max_turns=...)"
            ) from None
        env_seeds = np.random.SeedSequence(seed).generate_state(len(openings))
        finished: list[_Finished] = []
        with torch.random.fork_rng(devices=[]), eval_mode(model):
            torch.manual_seed(seed)
            for start in range(0, len(openings), len(self.envs)):
                chunk = list(openings[start : start + len(self.envs)])
                finished += self._run(model, chunk, env_seeds[start : start + len(chunk)])
        return self._collate(list(openings), finished)

    def _run(self, model: nn.Module, openings: list[str], seeds: np.ndarray) -> list[_Finished]:
        """Run one chunk of dialogues to their ends, one batched sampling loop per turn."""
        envs = self.envs[: len(openings)]
        obs = [env.reset(seed=int(s), options={"opening": o})[0]
               for env, s, o in zip(envs, seeds, openings, strict=True)]  # fmt: skip
        done: dict[int, _Finished] = {}
        while len(done) < len(envs):
            active = [i for i in range(len(envs)) if i not in done]
            turns = self._sample_turns(model, [obs[i] for i in active])
            for i, turn in zip(active, turns, strict=True):
                obs[i], end = self._play_turn(envs[i], turn)
                if end is not None:
                    done[i] = end
        return [done[i] for i in range(len(envs))]

    def _sample_turns(
        self, model: nn.Module, observations: list[dict[str, np.ndarray]]
    ) -> list[list[int]]:
        """One turn per observation: tokens up to and including the first EOS (or the cap)."""
        ids = torch.as_tensor(np.stack([o["input_ids"] for o in observations]))
        mask = torch.as_tensor(np.stack([o["attention_mask"] for o in observations])).long()
        first = int(mask.any(0).long().argmax())  # drop columns that are padding in every row
        device = next(model.parameters()).device
        with torch.inference_mode():
            out = sample_tokens(model, ids[:, first:].to(device), mask[:, first:].to(device),
                                self.max_turn_tokens, self.eos, self.pad).cpu()  # fmt: skip
        turns = []
        for row in out.tolist():
            end = row.index(self.eos) + 1 if self.eos in row else len(row)
            turns.append(row[:end])
        return turns

    def _play_turn(
        self, env: gym.Env, turn: list[int]
    ) -> tuple[dict[str, np.ndarray], _Finished | None]:
        """Step ``env`` through one turn's tokens; the finished dialogue if it ended."""
        for k, token in enumerate(turn):
            obs, _, terminated, truncated, info = env.step(token)
            if ("turn_score" in info) != (k == len(turn) - 1):
                raise ValueError(
                    f"the env ended the policy's turn after {k + 1} tokens but the sampler "
                    f"generated {len(turn)}: give DialogueSampler the envs' max_turn_tokens "
                    f"(got {self.max_turn_tokens})"
                )
        if not (terminated or truncated):
            return obs, None
        keep = obs["attention_mask"] > 0
        return obs, _Finished(
            obs["input_ids"][keep], obs["role"][keep], int(obs["prompt_length"][0]),
            info["dialogue"], float(info["dialogue_score"]), int(info["turns"]), bool(terminated),
            str(info["end"]),
        )  # fmt: skip

    def _collate(self, openings: list[str], dialogues: list[_Finished]) -> SampledDialogues:
        """Left-padded openings, right-padded rests, their attention and loss masks."""
        n = len(dialogues)
        width_p = max(d.n_prompt for d in dialogues)
        width_c = max(len(d.ids) - d.n_prompt for d in dialogues)
        prompt_ids = torch.full((n, width_p), self.pad, dtype=torch.long)
        prompt_mask = torch.zeros((n, width_p), dtype=torch.long)
        rest_ids = torch.full((n, width_c), self.pad, dtype=torch.long)
        rest_mask = torch.zeros((n, width_c), dtype=torch.long)
        loss_mask = torch.zeros((n, width_c), dtype=torch.long)
        for row, d in enumerate(dialogues):
            p, c = d.n_prompt, len(d.ids) - d.n_prompt
            prompt_ids[row, width_p - p :] = torch.as_tensor(d.ids[:p])
            prompt_mask[row, width_p - p :] = 1
            rest_ids[row, :c] = torch.as_tensor(d.ids[p:])
            rest_mask[row, :c] = 1
            loss_mask[row, :c] = torch.as_tensor(d.role[p:].astype(np.int64))
        samples = SampledCompletions(
            openings, [d.text for d in dialogues], prompt_ids, prompt_mask, rest_ids, rest_mask,
            np.array([d.terminated for d in dialogues]),
        )  # fmt: skip
        return SampledDialogues(
            samples, loss_mask, np.array([d.score for d in dialogues], dtype=np.float64),
            np.array([d.turns for d in dialogues]), np.array([d.end for d in dialogues]),
        )  # fmt: skip


# ----------------------------------------------------------------------------- DPO pairs


class EncodedDialoguePair(NamedTuple):
    """Two dialogues of one opening as token ids, with the policy's tokens marked.

    Attributes:
        prompt: the opening's ids (BOS first).
        chosen: the preferred dialogue's ids after the opening (policy and user tokens).
        rejected: the other dialogue's.
        chosen_policy: per ``chosen`` token, whether the policy sampled it.
        rejected_policy: the same for ``rejected``.
        tie: the two were judged equally good.
        weight: the pair's weight in the batch-mean loss.
    """

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    chosen_policy: list[bool]
    rejected_policy: list[bool]
    tie: bool = False
    weight: float = 1.0

    @property
    def longest(self) -> int:
        """Tokens in the longer of the two rows."""
        return len(self.prompt) + max(len(self.chosen), len(self.rejected))


def collate_dialogue_pairs(
    pairs: Sequence[EncodedDialoguePair],
    pad_token_id: int,
    label_smoothing: float = 0.0,
    index: Sequence[int] | None = None,
) -> PairBatch:
    """A :class:`~agents.text.pairs.PairBatch` of dialogue pairs (chosen rows, then rejected).

    ``completion_mask`` is True only on the policy's tokens: the user's replies are attended to
    but never summed into a log-prob, so no DPO-family loss reads them.
    """
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    input_ids, attention, completion = stack_rows(rows, pad_token_id)
    policy = [p.chosen_policy for p in pairs] + [p.rejected_policy for p in pairs]
    for row, ((prompt, _), marks) in enumerate(zip(rows, policy, strict=True)):
        start = len(prompt)
        completion[row, start : start + len(marks)] = torch.as_tensor(marks, dtype=torch.bool)
    smoothing = torch.tensor([0.5 if p.tie else label_smoothing for p in pairs])
    return PairBatch(
        input_ids, attention, completion, smoothing,
        torch.as_tensor(np.asarray(index if index is not None else range(len(pairs)))),
        torch.tensor([p.weight for p in pairs], dtype=torch.float32),
    )  # fmt: skip


def _row(dialogues: SampledDialogues, i: int) -> tuple[list[int], list[int], list[bool]]:
    """``(opening ids, rest ids, policy marks)`` of dialogue ``i``."""
    s = dialogues.samples
    prompt = s.prompt_ids[i][s.prompt_mask[i] > 0].tolist()
    real = s.completion_mask[i] > 0
    return prompt, s.completion_ids[i][real].tolist(), (dialogues.loss_mask[i][real] > 0).tolist()


def dialogue_pairs(
    first: SampledDialogues,
    second: SampledDialogues,
    comparisons: Sequence[Comparison],
    ties: str = "skip",
) -> EncodedData:
    """DPO data from labelled dialogue pairs: row ``i`` of ``first`` vs row ``i`` of ``second``.

    Args:
        first: dialogues shown first (``segment0`` of each comparison).
        second: the other dialogue of the same opening (``segment1``).
        comparisons: one labelled comparison per row (label 0: first preferred, 1: second,
            0.5: tie, None: skipped), e.g. a text teacher's ``label_texts(openings, first
            texts, second texts)``.
        ties: ``"skip"`` drops ties, ``"keep"`` trains them with the soft label 0.5.

    Returns:
        :class:`~agents.text.dpo_steps.EncodedData` for :func:`agents.text.dpo.train_dpo`.

    Raises:
        ValueError: mismatched lengths, rows of different openings, or an unknown ``ties``.
    """
    if ties not in ("skip", "keep"):
        raise ValueError(f"ties must be 'skip' or 'keep', got {ties!r}")
    n = len(comparisons)
    if not len(first.samples.prompts) == len(second.samples.prompts) == n:
        raise ValueError(
            f"need one comparison per dialogue pair, got {len(first.samples.prompts)} first, "
            f"{len(second.samples.prompts)} second dialogues and {n} comparisons"
        )
    items = []
    for i, comparison in enumerate(comparisons):
        label = comparison.label
        if label is None or (label == 0.5 and ties == "skip"):
            continue
        a, b = _row(first, i), _row(second, i)
        if a[0] != b[0]:
            raise ValueError(
                f"pair {i} compares dialogues of different openings "
                f"({first.samples.prompts[i]!r} vs {second.samples.prompts[i]!r}): sample both "
                "sides from the same openings"
            )
        chosen, rejected = (b, a) if label == 1.0 else (a, b)
        items.append(EncodedDialoguePair(a[0], chosen[1], rejected[1], chosen[2], rejected[2],
                                         label == 0.5))  # fmt: skip
    return EncodedData(items, collate_dialogue_pairs)


def dialogue_eval(sampler: DialogueSampler, model: nn.Module, openings: Sequence[str],
                  seed: int) -> float:  # fmt: skip
    """Mean true dialogue score of ``model`` on ``openings`` (one seeded dialogue each)."""
    return float(sampler.sample(model, openings, seed).scores.mean())
