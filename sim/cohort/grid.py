"""The cohort engine's Grid: a round's TRAIN messages are trained together in this process
(sim/cohort/cohort_training.py); QUERY messages (fedsign/discovery.py) go through the ClientApp.
Each node keeps its Flower Context, so method state lives in Context.state as in Flower's simulation."""

from __future__ import annotations

import torch
from flwr.app import Message

from fedsign.client_app import TrainTask, run_config_for, train_reply, train_task
from fedsign.config import RunConfig
from fedsign.data.specs import dataset_spec
from fedsign.devices import resolve_device
from fedsign.errors import FedsignError
from fedsign.workspace import model_for

from sim.cohort.cohort_training import CohortClient, train_cohort
from sim.cohort.inprocess_grid import InProcessGrid, error_reply


class CohortGrid(InProcessGrid):
    def execute_train(self, messages: list[Message]) -> list[Message]:
        configs = [self._config(m) for m in messages]
        valid = [c for c in configs if c is not None]
        if not valid or any(c != valid[0] for c in valid):
            return super().execute_train(messages)  # invalid or differently configured: one by one
        cfg = valid[0]
        device = resolve_device(cfg.device)
        replies: dict[int, Message] = {}
        tasks: list[tuple[Message, TrainTask]] = []
        clients: list[CohortClient] = []
        decoded: dict[int, dict[str, torch.Tensor]] = {}
        for message, own_cfg in zip(messages, configs):
            if own_cfg is None:
                replies[id(message)] = self.handle(message)  # the ClientApp reports the config error
                continue
            try:  # decoded exactly as the ClientApp's train() does (fedsign/client_app.py)
                task = train_task(message, self.contexts[message.metadata.dst_node_id], cfg)
            except FedsignError as exc:
                replies[id(message)] = error_reply(message, exc)
                continue
            arrays = message.content["arrays"]
            if id(arrays) not in decoded:  # one copy of a global model sent to many clients
                decoded[id(arrays)] = {k: v.to(device) for k, v in arrays.to_torch_state_dict().items()}
            clients.append(CohortClient(task.data, decoded[id(arrays)], task.method_state, task.seed))
            tasks.append((message, task))
        if clients:
            try:
                results = train_cohort(model_for(cfg, device), tasks[0][1].objective, clients,
                                       dataset_spec(cfg.dataset.name), cfg.train, cfg.dataset.augment)
            except Exception as exc:  # noqa: BLE001 (as a failing ClientApp: every client of the cohort says so)
                results = [exc] * len(clients)
            for (message, task), result in zip(tasks, results):
                replies[id(message)] = (error_reply(message, result) if isinstance(result, Exception)
                                        else train_reply(message, task, result))
        return [replies[id(m)] for m in messages]

    def _config(self, message: Message) -> RunConfig | None:
        try:
            return run_config_for(message, self.contexts[message.metadata.dst_node_id])
        except FedsignError:
            return None
