"""Comparisons of one checkpoint against another: drift, baselines, merges."""
