"""The nightly audit's outputs: summary.json, the HTML report and the pictures (render)."""
