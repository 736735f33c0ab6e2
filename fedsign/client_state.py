"""A client's method state between rounds (MOON's last local model, FedDyn's gradient): in
`Context.state` in simulation, or in safetensors files under the node's `state-dir` in deployment,
so that a SuperNode restart loses nothing.

Every saved state carries where it came from: the run (the server's run stamp, kept across
resumes), the round that produced it, and the server's segment (a new id each time the server
starts or resumes). A resumed server redoes the rounds after its last checkpoint round R, so a
state is used in round t only if it is from an earlier round and either from round <= R or from
the server's current segment: what a killed server's later rounds left behind is never used, and
the resumed run sees exactly the states the uninterrupted one would have. To make that possible a
client keeps, besides its newest state, its newest state from a round <= each of the last two
checkpoint rounds (checkpoint.every; two, since the server may be killed after a client's round
but before that round's checkpoint is written); older ones are deleted. Stale (another run) or damaged states are ignored with
a warning, and the method starts its state afresh (as in its first round).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context

from fedsign.checkpoint import load_checkpoint, load_metadata, save_checkpoint
from fedsign.errors import CheckpointError

RECORD_KEY = "fedsign-method-state"
log = logging.getLogger("fedsign")
Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Stamp:
    """Which server run and segment a train message comes from (the server sends these)."""

    run: str  # the run stamp, the same across resumes
    segment: str = ""  # this server process's id
    resumed_from: int = 0  # the round this segment started after (0: a fresh run)
    checkpoint_every: int = 0  # checkpoint.every: the rounds a later resume may start after


@dataclass(frozen=True)
class Saved:
    round: int
    segment: str


class ClientStateStore:
    def __init__(self, context: Context, run_key: str, stamp: Stamp) -> None:
        self.context = context
        self.stamp = stamp
        state_dir = str(context.node_config.get("state-dir", "") or "")
        # One folder per run (keyed by its run directory) so runs never share state.
        self.folder = Path(state_dir) / hashlib.sha1(run_key.encode()).hexdigest()[:12] if state_dir else None

    def load(self, client_id: int, server_round: int) -> Tensors:
        """The newest state this run may use in `server_round`, or {} (none yet, stale or damaged)."""
        saved = self._index(client_id)
        usable = [s for s in saved if self._usable(s, server_round)]
        ignored = [s for s in saved if s not in usable and s.round >= max((u.round for u in usable), default=0)]
        if ignored:
            log.warning("client %d: ignoring saved method state from round(s) %s (not usable in round %d of "
                        "this run)", client_id, ", ".join(str(s.round) for s in ignored), server_round)
        for entry in sorted(usable, key=lambda s: s.round, reverse=True):
            tensors = self._read(client_id, entry)
            if tensors:
                return tensors
        return {}

    def save(self, client_id: int, state: Tensors, server_round: int) -> None:
        """Keep this round's state; delete what neither a later round nor a resume can use."""
        if not state:
            return
        new = Saved(server_round, self.stamp.segment)
        self._write(client_id, new, state)
        every = self.stamp.checkpoint_every
        last = server_round - server_round % every if every else 0  # the last checkpoint round
        live = [s for s in self._index(client_id) if self._usable(s, server_round + 1)]
        keep = {new}
        for resume_point in {last, max(last - every, 0)} if every else set():
            anchors = [s for s in live if s.round <= resume_point]
            keep |= {max(anchors, key=lambda s: s.round)} if anchors else set()
        for entry in self._index(client_id):
            if entry not in keep:
                self._delete(client_id, entry)

    def _usable(self, entry: Saved, server_round: int) -> bool:
        return entry.round < server_round and (entry.round <= self.stamp.resumed_from
                                               or entry.segment == self.stamp.segment)

    # ---- storage: Context.state records, or one safetensors file per saved round ----
    def _key(self, client_id: int, entry: Saved) -> str:
        return f"{RECORD_KEY}-{client_id}-{entry.round}"

    def _path(self, client_id: int, entry: Saved) -> Path:
        assert self.folder is not None
        return self.folder / f"client-{client_id}-round{entry.round:05d}.safetensors"

    def _index(self, client_id: int) -> list[Saved]:
        """This run's saved states of the client (another run's are not listed)."""
        found = []
        if self.folder is None:
            for key, stamp in self.context.state.config_records.items():
                if key.startswith(f"{RECORD_KEY}-{client_id}-") and stamp.get("run") == self.stamp.run:
                    found.append(Saved(int(stamp["round"]), str(stamp.get("segment", ""))))
            return found
        for path in sorted(self.folder.glob(f"client-{client_id}-round*.safetensors")) if self.folder.is_dir() else []:
            try:
                meta = load_metadata(path)
            except CheckpointError as exc:
                log.warning("client %d: damaged method state file, ignored: %s", client_id, exc)
                continue
            if meta.get("run") != self.stamp.run:
                log.warning("client %d: ignoring saved method state of another run (%r) in %s", client_id,
                            meta.get("run"), path)
            elif meta.get("round", "").isdigit():
                found.append(Saved(int(meta["round"]), meta.get("segment", "")))
        return found

    def _read(self, client_id: int, entry: Saved) -> Tensors:
        if self.folder is None:
            return self.context.state.array_records[self._key(client_id, entry)].to_torch_state_dict()
        try:
            return load_checkpoint(self._path(client_id, entry))[0]
        except CheckpointError as exc:
            log.warning("client %d: damaged method state file, starting the state afresh: %s", client_id, exc)
            return {}

    def _write(self, client_id: int, entry: Saved, state: Tensors) -> None:
        stamp = {"run": self.stamp.run, "round": str(entry.round), "segment": entry.segment}
        if self.folder is None:
            self.context.state[self._key(client_id, entry)] = ArrayRecord(torch_state_dict=state)
            self.context.state[self._key(client_id, entry) + "-stamp"] = ConfigRecord(stamp)
            return
        save_checkpoint(self._path(client_id, entry), state, {"role": "client-state", "client_id": str(client_id),
                                                               **stamp})

    def _delete(self, client_id: int, entry: Saved) -> None:
        if self.folder is None:
            del self.context.state[self._key(client_id, entry)]
            del self.context.state[self._key(client_id, entry) + "-stamp"]
        else:
            self._path(client_id, entry).unlink(missing_ok=True)
