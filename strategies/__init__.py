"""One module per FL method: its server Strategy and its client objective, side by side."""
