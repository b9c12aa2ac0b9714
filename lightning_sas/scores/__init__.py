"""Pure functions that score maps: ROI scores and rank statistics, faithfulness (deletion / insertion curves)."""
