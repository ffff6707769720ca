"""Staged training: which parameters train in which stage, chosen by name patterns.

A stage names ``trainable`` patterns matched against ``named_parameters()`` of the trained module
(``unet.*`` and ``motion_head.*``): fnmatch globs (``*temporal*``) or regular expressions prefixed with
``re:`` (``re:.*time_mixer.*``). Matching parameters get ``requires_grad=True`` and go into the optimizer;
every other parameter is frozen (``requires_grad=False``) and left out of it, so its value is untouched.

SVD-style recipe (Blattmann et al. 2023, Sec. 3: temporal layers first on top of an image model):
stage ``temporal`` trains :data:`TEMPORAL_PATTERNS` only; stage ``motion`` adds ``motion_head.*``;
later stages unfreeze whatever they name (``*`` for everything).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

# diffusers' names for the temporal half of UNetSpatioTemporalConditionModel.
TEMPORAL_PATTERNS: tuple[str, ...] = (
    "*temporal_res_block*", "*temporal_transformer_blocks*", "*time_pos_embed*", "*time_mixer*",
)


def matches(name: str, patterns: Iterable[str]) -> bool:
    """True when ``name`` matches any fnmatch pattern or ``re:`` regular expression (full match)."""
    for p in patterns:
        if p.startswith("re:"):
            if re.fullmatch(p[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, p):
            return True
    return False


def select_parameters(module: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the parameters of ``module`` matched by ``patterns`` (in ``named_parameters`` order)."""
    return [n for n, _ in module.named_parameters() if matches(n, patterns)]


def unmatched_patterns(module: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Patterns that select no parameter (usually a typo, or a head not built in this run)."""
    names = [n for n, _ in module.named_parameters()]
    return [p for p in patterns if not any(matches(n, [p]) for n in names)]


def apply_trainable(module: nn.Module, patterns: Sequence[str]) -> list[nn.Parameter]:
    """Set ``requires_grad`` from ``patterns``; return the trainable parameters (for the optimizer).

    Raises ``ValueError`` when nothing matches: a stage that trains nothing is a config error.
    """
    trainable: list[nn.Parameter] = []
    for name, p in module.named_parameters():
        on = matches(name, patterns)
        p.requires_grad_(on)
        if on:
            trainable.append(p)
    if not trainable:
        raise ValueError(f"stage patterns {list(patterns)} match no parameter of the model")
    return trainable


@dataclass(frozen=True)
class StageSpan:
    """A stage with the optimizer-step range ``[start, end)`` it covers."""

    index: int
    name: str
    trainable: tuple[str, ...]
    start: int
    end: int


def stage_spans(stages: Sequence[object], max_steps: int) -> list[StageSpan]:
    """Lay stages (objects with ``name``, ``trainable``, ``steps``) end to end over ``max_steps``.

    With no stages, one stage ``all`` trains every parameter. The last stage's ``steps`` may be None
    (until ``max_steps``). Stages starting at or after ``max_steps`` are dropped.
    """
    if not stages:
        return [StageSpan(0, "all", ("*",), 0, max_steps)]
    spans: list[StageSpan] = []
    start = 0
    for i, s in enumerate(stages):
        steps = getattr(s, "steps", None)
        end = max_steps if steps is None else min(max_steps, start + int(steps))
        if start >= max_steps:
            break
        spans.append(StageSpan(i, str(s.name), tuple(s.trainable), start, end))
        start = end
    if spans and spans[-1].end < max_steps:
        last = spans[-1]
        spans[-1] = StageSpan(last.index, last.name, last.trainable, last.start, max_steps)
    return spans


def stage_at(spans: Sequence[StageSpan], step: int) -> StageSpan:
    """The stage that trains optimizer step ``step`` (0-based)."""
    for s in spans:
        if s.start <= step < s.end:
            return s
    return spans[-1]
