"""Client updates are checked before they are aggregated; a bad one is rejected with a reason."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from flwr.app import Message


@dataclass
class Update:
    """One client's validated reply."""

    client_id: int
    tensors: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Rejection:
    node_id: int  # the node the message went to
    reason: str
    client_id: int = -1  # its partition id (-1: not known)


def check_reply(message: Message, reference: Mapping[str, torch.Tensor]) -> Update | Rejection:
    """An Update if the reply carries exactly the reference's arrays (names, shapes, dtypes), all
    finite, and a MetricRecord with a positive integer 'num-examples'; else a Rejection."""
    node = message.metadata.src_node_id
    if message.has_error():
        return Rejection(node, f"client error: {last_line(message.error.reason)}")
    content = message.content
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return Rejection(node, f"expected one ArrayRecord and one MetricRecord, got "
                               f"{len(content.array_records)} and {len(content.metric_records)}")
    metrics = dict(next(iter(content.metric_records.values())))
    num = metrics.get("num-examples")
    if not _whole(num) or num <= 0:
        return Rejection(node, f"missing or invalid 'num-examples' ({num!r})")
    client_id = metrics.get("partition-id", -1)
    if not _whole(client_id):
        return Rejection(node, f"invalid 'partition-id' ({client_id!r})")
    try:
        tensors = next(iter(content.array_records.values())).to_torch_state_dict()
    except Exception as exc:  # noqa: BLE001 (undecodable payloads come in many forms)
        return Rejection(node, f"undecodable arrays: {exc}")
    missing, extra = set(reference) - set(tensors), set(tensors) - set(reference)
    if missing or extra:
        return Rejection(node, f"wrong keys: missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}")
    for key, ref in reference.items():
        got = tensors[key]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            return Rejection(node, f"'{key}' is {got.dtype}{tuple(got.shape)}, expected {ref.dtype}{tuple(ref.shape)}")
        if not bool(torch.isfinite(got).all()):
            return Rejection(node, f"'{key}' holds NaN or Inf values")
    scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return Update(int(client_id), tensors, int(num), scalars)


def _whole(value: object) -> bool:
    """A finite whole number (a MetricRecord value may be a float, NaN, Inf or a list)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value == int(value))


def last_line(text: str | None, limit: int = 300) -> str:
    """The last non-empty line of an error report (a client's traceback ends with its message)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return (lines[-1] if lines else "no reason given")[:limit]


def validate_replies(replies: Iterable[Message], reference: Mapping[str, torch.Tensor]
                     ) -> tuple[list[Update], list[Rejection]]:
    updates: list[Update] = []
    rejections: list[Rejection] = []
    for message in replies:
        result = check_reply(message, reference)
        (updates if isinstance(result, Update) else rejections).append(result)  # type: ignore[arg-type]
    return updates, rejections
