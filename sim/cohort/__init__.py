"""The cohort engine: all clients of a round trained at once in one process (torch.func.vmap),
behind a Flower Grid so the server loop, strategies and client objectives run unchanged."""
