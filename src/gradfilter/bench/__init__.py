"""Benchmarks: how well a selection does (noise, finetune, judge) and how fast scoring is."""
