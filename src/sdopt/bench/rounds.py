"""Rounds of a bench (``sdopt bench --rounds K``): every artifact benched K times, the order rotating,
each time a fresh worker, and the rounds' results joined into one per artifact."""

from __future__ import annotations

import statistics
from typing import Sequence, TypeVar

T = TypeVar("T")


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """The order of round ``round_index``: the given order shifted by one per round, so each artifact
    runs at another point of the bench in each round (first in one of them when there are as many rounds as artifacts)."""
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


# What each round's worker measured, one sample per generate (or UNet step): the rounds' lists are joined.
SAMPLE_KEYS = ("latency_samples_s", "text_encoder_samples_s", "unet_step_samples_s", "vae_decoder_samples_s", "unet_total_samples_s",
               "vae_encoder_samples_s")


def merge_rounds(results: list[dict]) -> dict:
    """One artifact's worker results over the rounds, as one: the samples joined, the counts summed, the
    peaks the largest; load and first generate are the first round's (a cold start, as without rounds);
    images, latents and run settings the last round's (the same prompts and seeds give the same images).
    A failed round makes the artifact failed, saying which."""
    if len(results) == 1:
        return results[0]
    for i, result in enumerate(results):
        if result.get("status") != "ok":
            return {**result, "error": f"round {i + 1} of {len(results)}: {result.get('error')}"}
    merged = {**results[-1], "load_s": results[0]["load_s"], "first_generate_s": results[0]["first_generate_s"],
              "first_generate_counted": results[0].get("first_generate_counted"), "rounds": len(results),
              "load_s_by_round": [r["load_s"] for r in results]}
    for key in SAMPLE_KEYS:
        if all(key in r for r in results):
            merged[key] = [x for r in results for x in r[key]]
    for key in ("runs", "warmups"):
        merged[key] = sum(r[key] for r in results)
    for key in ("peak_memory_bytes", "process_peak_rss_bytes"):
        if all(r.get(key) is not None for r in results):
            merged[key] = max(r[key] for r in results)
    # A round whose CPUs other work took is what makes the joined samples untrustworthy: the busiest round's share.
    shares = [r["others_cpu_share"] for r in results if r.get("others_cpu_share") is not None]
    merged["others_cpu_share"] = max(shares) if shares else None
    if "unet_total_samples_s" in merged:
        merged["unet_total_median_s"] = statistics.median(merged["unet_total_samples_s"])
    return merged
