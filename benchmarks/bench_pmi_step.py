"""Benchmark one training step of the video PMI: grouped pairs against explicit loops.

Variants, each run in its own process so that its peak memory is its own:
  grouped    `VideoModalityInteraction`: one projection per modality for all its pairs,
             attention and channel maps of all P pairs as one batched tensor.
  pair_loop  one single-pair `ChannelGatedInteraction` per modality pair in a Python loop
             (each pair still batched over steps), then the same weighted fusion.
  step_loop  a straightforward loop over pairs and over query steps: step i of pair (p, q)
             attends over all key steps, is gated and goes through FFN_out on its own, and
             the fusion loops over steps too.
  localizer  the whole `PMILocalizer` (text INT, PMI, VTLI, head, loss) with grouped pairs.

A training step is forward, loss, backward and an Adam update (fused, as in training). PMI variants use the loss
mean(X_hat^2); the localizer uses `localization_loss`. Model sizes come from the
`localizer:` section of config.yaml. Before timing, the script checks on a small input that
step_loop and pair_loop compute the same function (they share weights there).

After the variants the script measures two numbers that bound what batching can gain here:
the matrix-product FLOPs of one grouped step (counted with torch's FlopCounterMode on the meta
device, so nothing is computed) and this machine's rate on one large float32 matrix product
with the same threads. FLOPs over that rate is the time of a step whose every product ran at
the large-product rate and whose other operations took no time. The step_loop time over it
is the largest speed-up that any implementation doing the same products could show.

step_loop is timed from its first step by default (--loop-warmup 0) because one step takes
many minutes at full size. Its first step also allocates Adam's state, which took about 2 s
of the step in a profile, small against the step itself.

Run from the repository root, for example:
  .venv/bin/python benchmarks/bench_pmi_step.py --threads 2
  .venv/bin/python benchmarks/bench_pmi_step.py --batch 4 --steps 16 --repeats 1   # smoke run
It prints a Markdown table: median seconds per step, samples per second, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.attention import PairLayout, masked_mean, masked_softmax  # noqa: E402
from models.config import InteractionConfig, LocalizerConfig  # noqa: E402
from models.fusion import VideoModalityInteraction, select_pairs  # noqa: E402
from models.interaction import ChannelGatedInteraction, FeedForward  # noqa: E402
from models.localizer import PMILocalizer, localization_loss, relevance_targets  # noqa: E402

logger = logging.getLogger("bench_pmi_step")

VARIANTS = ("grouped", "pair_loop", "step_loop", "localizer")


class PairLoopPMI(nn.Module):
    """PMI with one single-pair INT module per modality pair, run in a loop over pairs."""

    def __init__(self, modality_dims: Sequence[int], config: InteractionConfig) -> None:
        super().__init__()
        self.pairs = select_pairs(len(modality_dims), config.pairs)
        self.interactions = nn.ModuleList(
            ChannelGatedInteraction.from_config(
                PairLayout((modality_dims[p],), (modality_dims[q],), ((0, 0),)), config
            )
            for p, q in self.pairs
        )
        self.fusion = nn.Linear(len(self.pairs) * config.d_model, len(self.pairs))

    def pair_values(self, video: Sequence[Tensor], mask: Tensor) -> Tensor:
        """Return the INT output of every pair: (P, B, N, d_model)."""
        outputs = [
            interaction([video[p]], [video[q]], mask, mask).values[0]
            for (p, q), interaction in zip(self.pairs, self.interactions)
        ]
        return torch.stack(outputs, dim=0)

    def fuse(self, pair_values: Tensor, mask: Tensor) -> Tensor:
        """Weighted fusion of pair outputs (P, B, N, d) into (B, N, d), all steps at once."""
        stacked = pair_values.permute(1, 2, 0, 3)  # (B, N, P, d)
        alpha = torch.softmax(self.fusion(stacked.flatten(start_dim=2)), dim=-1)
        return torch.einsum("bnp,bnpd->bnd", alpha, stacked) * mask[..., None]

    def forward(self, video: Sequence[Tensor], mask: Tensor) -> Tensor:
        return self.fuse(self.pair_values(video, mask), mask)


def feed_forward_row(network: FeedForward, inputs: Tensor) -> Tensor:
    """Apply a one-group FeedForward to one step: (B, d_in) -> (B, d_out)."""
    return network(inputs[None, :, None, :])[0, :, 0, :]


def step_loop_pair(interaction: ChannelGatedInteraction, xp: Tensor, xq: Tensor, mask: Tensor) -> Tensor:
    """INT of one pair computed step by step: xp (B, N, d_p), xq (B, N, d_q) -> (B, N, d_model).

    Reads the weights of a single-pair `ChannelGatedInteraction`. Key-side projections are
    computed once; everything that belongs to query step i is computed inside the loop.
    """
    attention, gate = interaction.attention, interaction.gate
    batch, steps, size = xp.shape
    heads, head_low, d_low = attention.heads, attention.head_low, attention.d_low
    head_size = math.ceil(size / heads)
    padding = heads * head_size - size
    limit = attention.max_relative_position

    up = attention.query_projections[0].weight
    key_weight = attention.key_projections[0].weight
    # Key-side tensors are laid out once for the per-step matrix products, so that no step
    # keeps its own permuted copy for the backward pass.
    key_low = torch.relu(xq @ key_weight[:d_low].T).view(batch, steps, heads, head_low)
    key_low = key_low.permute(0, 2, 3, 1).contiguous()  # (B, H, d_low / H, N)
    values = nn.functional.pad(xq @ key_weight[d_low:].T, (0, padding)).view(batch, steps, heads, head_size)
    values = values.transpose(1, 2).contiguous()  # (B, H, N, d_head)
    embeddings = nn.functional.pad(attention.relative_embeddings[0][0], (0, padding))
    embeddings = embeddings.view(2 * limit + 1, heads, head_size).transpose(0, 1).contiguous()
    scorer = attention.scorers[0]

    query_channels = xp @ gate.query_projections[0].weight.T  # (B, N, c)
    key_mean = masked_mean(xq @ gate.key_projections[0].weight.T, mask, dim=1)
    query_mean = masked_mean(query_channels, mask, dim=1)
    channel_map = torch.softmax(-(query_mean[:, :, None] - key_mean[:, None, :]).square(), dim=1)

    key_positions = torch.arange(steps)
    outputs = []
    for i in range(steps):
        query_low = torch.relu(xp[:, i] @ up.T).view(batch, heads, 1, head_low) * scorer[:, None, :]
        scores = (query_low @ key_low).squeeze(2)  # (B, H, N)
        weights = masked_softmax(scores, mask[:, None, :], dim=-1)
        buckets = (key_positions - i).clamp(-limit, limit) + limit
        binned = torch.zeros(batch, heads, 2 * limit + 1).index_add(2, buckets, weights)
        attended = (weights.unsqueeze(2) @ values).squeeze(2)  # (B, H, d_head)
        attended = attended + (binned.transpose(0, 1) @ embeddings).transpose(0, 1)
        attended = attended.reshape(batch, heads * head_size)[:, :size]
        gates = torch.sigmoid(
            feed_forward_row(gate.gate_networks[0], torch.einsum("bc,bcd->bd", query_channels[:, i], channel_map))
        )
        outputs.append(feed_forward_row(interaction.output_networks[0], attended * gates + xp[:, i]))
    return torch.stack(outputs, dim=1) * mask[..., None]


class StepLoopPMI(PairLoopPMI):
    """PMI computed by a loop over pairs and, inside, over query steps; fusion per step."""

    def pair_values(self, video: Sequence[Tensor], mask: Tensor) -> Tensor:
        outputs = [
            step_loop_pair(interaction, video[p], video[q], mask)
            for (p, q), interaction in zip(self.pairs, self.interactions)
        ]
        return torch.stack(outputs, dim=0)

    def fuse(self, pair_values: Tensor, mask: Tensor) -> Tensor:
        """Weighted fusion of pair outputs (P, B, N, d) into (B, N, d), one step at a time."""
        fused = []
        for n in range(pair_values.shape[2]):
            step = pair_values[:, :, n].transpose(0, 1)  # (B, P, d)
            alpha = torch.softmax(self.fusion(step.flatten(start_dim=1)), dim=-1)
            fused.append(torch.einsum("bp,bpd->bd", alpha, step))
        return torch.stack(fused, dim=1) * mask[..., None]


def load_config(path: Path) -> LocalizerConfig:
    return LocalizerConfig.from_dict(yaml.safe_load(path.read_text())["localizer"], f"{path} localizer")


def check_step_loop(config: InteractionConfig) -> float:
    """Return the largest difference between step_loop and pair_loop on a small input."""
    torch.manual_seed(0)
    dims = (12, 20, 8)
    model = StepLoopPMI(dims, config).eval()
    video = [torch.randn(2, 9, dim) for dim in dims]
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 7:] = False
    with torch.no_grad():
        looped = model(video, mask)
        batched = PairLoopPMI.fuse(model, PairLoopPMI.pair_values(model, video, mask), mask)
    return (looped - batched).abs().max().item()


def grouped_step_flops(args: argparse.Namespace) -> int:
    """Count the matrix-product FLOPs of one grouped training step (forward and backward).

    Model and inputs live on the meta device: shapes propagate, nothing is computed.
    """
    interaction = load_config(args.config).interaction
    with torch.device("meta"):
        model = VideoModalityInteraction(tuple(args.dims), interaction).train()
        video = [torch.empty(args.batch, args.steps, dim) for dim in args.dims]
        mask = torch.ones(args.batch, args.steps, dtype=torch.bool)
        with FlopCounterMode(display=False) as counter:
            model(video, mask).features.square().mean().backward()
    return counter.get_total_flops()


def matmul_rate(threads: int, size: tuple[int, int, int] = (4096, 8192, 4096), repeats: int = 3) -> float:
    """Return the best rate in FLOP/s of a float32 (m, k) @ (k, n) product over `repeats` runs.

    The default shape is FFN_gate's second layer on C3D at batch 32 and N 128: 4096 rows,
    2 x 4096 hidden units in, 4096 out.
    """
    torch.set_num_threads(threads)
    rows, inner, columns = size
    left, right = torch.randn(rows, inner), torch.randn(inner, columns)
    torch.mm(left, right)
    best = math.inf
    for _ in range(repeats):
        began = time.perf_counter()
        torch.mm(left, right)
        best = min(best, time.perf_counter() - began)
    return 2 * rows * inner * columns / best


def run_variant(args: argparse.Namespace) -> dict:
    """Time training steps of one variant in this process and return the measurements."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(args.config)
    dims = tuple(args.dims)
    video = [torch.randn(args.batch, args.steps, dim) for dim in dims]
    mask = torch.ones(args.batch, args.steps, dtype=torch.bool)

    if args.variant == "localizer":
        localizer_config = LocalizerConfig.from_dict({**config.to_dict(), "embedding": "learned"})
        vocabulary, words_per_query = 1000, 12
        model: nn.Module = PMILocalizer(
            localizer_config, dims, vocabulary, localizer_config.embedding_dim, args.steps
        )
        words = torch.randint(0, vocabulary, (args.batch, words_per_query))
        word_mask = torch.ones(args.batch, words_per_query, dtype=torch.bool)
        starts = torch.rand(args.batch) * 0.5
        spans = torch.stack([starts, starts + 0.3], dim=1) * 30.0
        durations = torch.full((args.batch,), 30.0)
        targets = relevance_targets(spans, durations, args.steps)

        def loss() -> Tensor:
            output = model(video, mask, words, word_mask)
            return localization_loss(output, spans / 30.0, targets, localizer_config)["total"]

    else:
        interaction = config.interaction
        if args.variant == "grouped":
            grouped = VideoModalityInteraction(dims, interaction)
            model = grouped

            def loss() -> Tensor:
                return grouped(video, mask).features.square().mean()

        else:
            looped = (PairLoopPMI if args.variant == "pair_loop" else StepLoopPMI)(dims, interaction)
            model = looped

            def loss() -> Tensor:
                return looped(video, mask).square().mean()

    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    parameters = sum(p.numel() for p in model.parameters())
    times = []
    for index in range(args.warmup + args.repeats):
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()
        elapsed = time.perf_counter() - began
        logger.info("%s step %d: %.2f s", args.variant, index, elapsed)
        if index >= args.warmup:
            times.append(elapsed)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "variant": args.variant,
        "parameters": parameters,
        "times": times,
        "median_s": statistics.median(times),
        "samples_per_s": args.batch / statistics.median(times),
        "peak_rss_gib": peak_kib / 2**20,
        "load_after": os.getloadavg(),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml", help="config.yaml to read the localizer: sizes from")
    parser.add_argument("--dims", type=int, nargs="+", default=[1536, 4096, 1024], help="feature size of each modality (default IRV2, C3D fc6, SoundNet conv7)")
    parser.add_argument("--batch", type=int, default=32, help="videos per step")
    parser.add_argument("--steps", type=int, default=128, help="steps N per video")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--loop-repeats", type=int, default=1, help="timed steps of step_loop (slow)")
    parser.add_argument("--loop-warmup", type=int, default=0, help="untimed steps of step_loop before timing")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="variants to run")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    if args.variant is not None:
        print(json.dumps(run_variant(args)))
        return

    difference = check_step_loop(load_config(args.config).interaction)
    if difference > 1e-4:
        raise SystemExit(f"step_loop differs from pair_loop by {difference:.2e}: the reference loop is wrong")
    logger.info("step_loop matches pair_loop (max difference %.1e)", difference)

    results = []
    for variant in args.variants:
        repeats = args.loop_repeats if variant == "step_loop" else args.repeats
        warmup = args.loop_warmup if variant == "step_loop" else args.warmup
        command = [
            sys.executable, __file__, "--variant", variant, "--config", str(args.config),
            "--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads),
            "--warmup", str(warmup), "--repeats", str(repeats), "--dims", *map(str, args.dims),
        ]  # fmt: skip
        load_before = os.getloadavg()
        logger.info("running %s (load average %.2f)", variant, load_before[0])
        completed = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        result["load_before"] = load_before
        results.append(result)

    flops = grouped_step_flops(args)
    rate = matmul_rate(args.threads)
    grouped = next((r for r in results if r["variant"] == "grouped"), None)
    print(f"batch {args.batch}, N {args.steps}, dims {args.dims}, threads {args.threads}, torch {torch.__version__}")
    print("| variant | parameters | median s/step (timed steps) | samples/s | speed-up of grouped | peak RSS GiB | load avg before / after |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        speedup = "" if grouped is None or r["variant"] == "localizer" else f"{r['median_s'] / grouped['median_s']:.2f}x"
        times = ", ".join(f"{t:.1f}" for t in r["times"])
        print(
            f"| {r['variant']} | {r['parameters'] / 1e6:.1f} M | {r['median_s']:.2f} ({times}) | "
            f"{r['samples_per_s']:.2f} | {speedup} | {r['peak_rss_gib']:.2f} | "
            f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f} |"
        )

    floor_s = flops / rate
    print()
    print(f"Matrix-product FLOPs of one grouped step: {flops / 1e12:.2f} T")
    print(f"Rate of one large float32 matrix product here: {rate / 1e9:.1f} GFLOP/s ({args.threads} threads)")
    print(f"Step with every product at that rate and everything else free: {floor_s:.1f} s")
    if grouped is not None:
        print(f"grouped reaches {flops / grouped['median_s'] / 1e9:.1f} GFLOP/s, {floor_s / grouped['median_s']:.0%} of that rate")
    loop = next((r for r in results if r["variant"] == "step_loop"), None)
    if loop is not None:
        print(f"Largest speed-up over step_loop of any implementation with the same products: {loop['median_s'] / floor_s:.2f}x")


if __name__ == "__main__":
    main()
