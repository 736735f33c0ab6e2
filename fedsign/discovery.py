"""Map client (partition) ids to Flower node ids by asking every connected node who it is."""

from __future__ import annotations

import logging
import time

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsign.errors import FedsignError

log = logging.getLogger("fedsign")


def discover_clients(grid: Grid, num_clients: int, timeout: float, poll: float = 1.0) -> dict[int, int]:
    """{client id: node id} once nodes holding all ids 0..N-1 have answered; waits up to `timeout`."""
    mapping: dict[int, int] = {}
    answered: set[int] = set()
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        new_nodes = [n for n in grid.get_node_ids() if n not in answered]
        if new_nodes:
            queries = [Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=n) for n in new_nodes]
            for reply in grid.send_and_receive(queries, timeout=max(1.0, deadline - time.monotonic())):
                node = reply.metadata.src_node_id
                if reply.has_error():
                    log.warning("node %s could not say its partition-id: %s", node, reply.error.reason)
                    continue
                answered.add(node)
                client = int(next(iter(reply.content.metric_records.values()))["partition-id"])
                if client in mapping and mapping[client] != node:
                    raise FedsignError(f"two SuperNodes claim partition-id={client}; give each a unique one")
                if not 0 <= client < num_clients:
                    raise FedsignError(f"a SuperNode has partition-id={client}, outside 0..{num_clients - 1} "
                                       f"(federation.num_clients={num_clients})")
                mapping[client] = node
        if len(mapping) == num_clients:
            return mapping
        if time.monotonic() > deadline:
            missing = sorted(set(range(num_clients)) - set(mapping))
            raise FedsignError(f"only {len(mapping)} of {num_clients} clients connected within {timeout:.0f} s;"
                               f" missing partition ids {missing[:10]}{'...' if len(missing) > 10 else ''}")
        if time.monotonic() - last_report > 10:
            log.info("waiting for clients: %d of %d connected", len(mapping), num_clients)
            last_report = time.monotonic()
        time.sleep(poll)
