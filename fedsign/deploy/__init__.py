"""Real deployments (SuperLink + SuperNodes): credentials for TLS and SuperNode authentication."""
