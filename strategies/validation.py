"""Client updates are checked before they are aggregated; a bad one is rejected with a reason.

A reply is matched to the client it was sent to (by the message it replies to), so a node can neither
claim another client's partition nor be misnamed in a warning. Error replies that Flower itself
makes for a node it cannot reach carry no update at all: they count as missing, not as rejected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from flwr.app import Message
from flwr.common.constant import ErrorCode

# Flower's own error replies for a message that never reached its node, or whose reply was lost
UNREACHABLE = (ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)


@dataclass
class Update:
    """One client's validated reply; its tensors are on the device of the model it was checked against."""

    client_id: int
    tensors: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Rejection:
    reason: str


def unreachable(message: Message) -> bool:
    """Whether this is Flower's error reply for a node it could not reach (no update was sent)."""
    return message.has_error() and message.error.code in UNREACHABLE


def check_reply(message: Message, client_id: int, reference: Mapping[str, torch.Tensor]) -> Update | Rejection:
    """An Update if the reply of client `client_id` carries exactly the reference's arrays (names,
    shapes, dtypes), all finite, and a MetricRecord with a positive integer 'num-examples' and this
    client's 'partition-id'; else a Rejection."""
    if message.has_error():
        return Rejection(f"client error: {last_line(message.error.reason)}")
    content = message.content
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return Rejection(f"expected one ArrayRecord and one MetricRecord, got "
                                    f"{len(content.array_records)} and {len(content.metric_records)}")
    metrics = dict(next(iter(content.metric_records.values())))
    num = metrics.get("num-examples")
    if not _whole(num) or num <= 0:
        return Rejection(f"missing or invalid 'num-examples' ({num!r})")
    claimed = metrics.get("partition-id")
    if not _whole(claimed) or int(claimed) != client_id:
        return Rejection(f"'partition-id' is {claimed!r}, but the model was sent to client {client_id}")
    try:
        tensors = next(iter(content.array_records.values())).to_torch_state_dict()
    except Exception as exc:  # noqa: BLE001 (undecodable payloads come in many forms)
        return Rejection(f"undecodable arrays: {exc}")
    missing, extra = set(reference) - set(tensors), set(tensors) - set(reference)
    if missing or extra:
        return Rejection(f"wrong keys: missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}")
    for key, ref in reference.items():
        got = tensors[key]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            return Rejection(f"'{key}' is {got.dtype}{tuple(got.shape)}, expected {ref.dtype}{tuple(ref.shape)}")
        if not bool(torch.isfinite(got).all()):
            return Rejection(f"'{key}' holds NaN or Inf values")
    scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return Update(client_id, {k: v.to(reference[k].device) for k, v in tensors.items()}, int(num), scalars)


def _whole(value: object) -> bool:
    """A finite whole number (a MetricRecord value may be a float, NaN, Inf or a list)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value == int(value))


def last_line(text: str | None, limit: int = 300) -> str:
    """The last non-empty line of an error report (a client's traceback ends with its message)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return (lines[-1] if lines else "no reason given")[:limit]
