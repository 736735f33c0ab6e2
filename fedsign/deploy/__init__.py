"""Real deployments (SuperLink + SuperNodes): credentials for TLS and SuperNode
authentication (`credentials`), a supervised SuperNode that rejoins after a crash (`supernode`)."""
