"""A client's method state between rounds (MOON's last local model, FedDyn's gradient): in
`Context.state` in simulation, or in a safetensors file under the node's `state-dir` in deployment,
so that a SuperNode restart loses nothing.

Every saved state carries a stamp: the run it belongs to (the server's run stamp, kept across
resumes) and the round that produced it. A state is used only in a later round of the same run; a
stale file (another run, or a round not before this one) or a damaged one is ignored with a warning,
and the method starts its state afresh (as in its first round).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context

from fedsign.checkpoint import load_checkpoint, save_checkpoint
from fedsign.errors import CheckpointError

RECORD_KEY = "fedsign-method-state"
log = logging.getLogger("fedsign")


class ClientStateStore:
    def __init__(self, context: Context, run_key: str, run_stamp: str = "") -> None:
        self.context = context
        self.run_stamp = run_stamp
        state_dir = str(context.node_config.get("state-dir", "") or "")
        # One folder per run (keyed by its run directory) so runs never share state.
        self.folder = Path(state_dir) / hashlib.sha1(run_key.encode()).hexdigest()[:12] if state_dir else None

    def path(self, client_id: int) -> Path | None:
        return self.folder / f"client-{client_id}.safetensors" if self.folder is not None else None

    def load(self, client_id: int, server_round: int) -> dict[str, torch.Tensor]:
        """The state saved by this run in an earlier round, or {} (none yet, stale or damaged)."""
        tensors, stamp = self._read(client_id)
        if not tensors:
            return {}
        saved_round = stamp.get("round", "")
        earlier = saved_round.isdigit() and 0 < int(saved_round) < server_round
        if stamp.get("run", "") != self.run_stamp or not earlier:
            log.warning("client %d: ignoring saved method state from run %r round %s (this is run %r round %d)",
                        client_id, stamp.get("run", ""), stamp.get("round", "?"), self.run_stamp, server_round)
            return {}
        return tensors

    def save(self, client_id: int, state: dict[str, torch.Tensor], server_round: int) -> None:
        if not state:
            return
        stamp = {"run": self.run_stamp, "round": str(server_round)}
        path = self.path(client_id)
        if path is None:
            self.context.state[f"{RECORD_KEY}-{client_id}"] = ArrayRecord(torch_state_dict=state)
            self.context.state[f"{RECORD_KEY}-{client_id}-stamp"] = ConfigRecord(stamp)
            return
        save_checkpoint(path, state, {"role": "client-state", "client_id": str(client_id), **stamp})

    def _read(self, client_id: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        path = self.path(client_id)
        if path is None:
            record = self.context.state.array_records.get(f"{RECORD_KEY}-{client_id}")
            stamp = self.context.state.config_records.get(f"{RECORD_KEY}-{client_id}-stamp")
            if record is None or stamp is None:
                return {}, {}
            return record.to_torch_state_dict(), {k: str(v) for k, v in stamp.items()}
        if not path.is_file():
            return {}, {}
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("client %d: damaged method state file, starting the state afresh: %s", client_id, exc)
            return {}, {}
