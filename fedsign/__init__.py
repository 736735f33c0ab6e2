"""fedsign: what runs on every node: config, data, partitions, models, local training, Flower apps."""

__version__ = "0.1.0"
