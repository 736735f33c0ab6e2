"""A client's method state between rounds (MOON's last local model, FedDyn's gradient): in
`Context.state` in simulation, or in a safetensors file under the node's `state-dir` in deployment,
so that a SuperNode restart loses nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context

from fedsign.checkpoint import load_checkpoint, save_checkpoint
from fedsign.errors import CheckpointError

RECORD_KEY = "fedsign-method-state"


class ClientStateStore:
    def __init__(self, context: Context, run_key: str) -> None:
        self.context = context
        state_dir = str(context.node_config.get("state-dir", "") or "")
        # One folder per run (keyed by its run directory) so runs never share state.
        self.folder = Path(state_dir) / hashlib.sha1(run_key.encode()).hexdigest()[:12] if state_dir else None

    def load(self, client_id: int) -> dict[str, torch.Tensor]:
        if self.folder is None:
            record = self.context.state.array_records.get(f"{RECORD_KEY}-{client_id}")
            return record.to_torch_state_dict() if record is not None else {}
        path = self.folder / f"client-{client_id}.safetensors"
        if not path.is_file():
            return {}
        try:
            return load_checkpoint(path)[0]
        except CheckpointError:
            return {}  # a damaged state file is treated as absent (the method restarts its state)

    def save(self, client_id: int, state: dict[str, torch.Tensor], server_round: int) -> None:
        if not state:
            return
        if self.folder is None:
            self.context.state[f"{RECORD_KEY}-{client_id}"] = ArrayRecord(torch_state_dict=state)
            return
        save_checkpoint(self.folder / f"client-{client_id}.safetensors", state,
                        {"role": "client-state", "client_id": str(client_id), "round": str(server_round)})
