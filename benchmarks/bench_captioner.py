"""Benchmark of PMI-CAP: training throughput and decoding speed.

The model has the sizes of the `captioner:` section of config.yaml, which are the settings
of the PMI paper (Chen et al., ECCV 2020): d_model 512, 8 heads, BiLSTM 256 per direction,
2-layer LSTM decoder 512, embeddings 512. It reads N = 32 steps of the MSR-VTT modalities
(IRV2 1536-d, C3D 4096-d, MFCC 40-d, so 9 pairs).
Inputs are random: a vocabulary of `--vocabulary` words and captions of `--words` words,
close to MSVD and MSR-VTT (vocabularies of a few thousand words after min count 2, 7-9 words
per caption).

Measured:
- training: captions per second of a full step (forward, backward, clip, Adam) at the
  configured batch size, the median of `--repeats` timed steps after one warm-up step;
- the share of the video PMI: seconds of its forward and backward pass on the same batch;
- decoding: videos per second of greedy decoding and of beam search (configured beam size)
  with max_length 20, the encoder included, and the seconds of the encoder alone. The
  `<eos>` logit is lowered so that every caption runs to max_length words, the slowest
  case of decoding.

Usage:
    .venv/bin/python benchmarks/bench_captioner.py [--device cpu] [--threads 1]
        [--repeats 5] [--interaction none] [--results benchmarks/RESULTS.md]
With --results the Markdown section is appended to that file; it is always printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
if str(REPOSITORY_ROOT) not in sys.path:
    sys.path.insert(0, str(REPOSITORY_ROOT))

from models.caption_config import CaptionerConfig  # noqa: E402
from models.caption_data import BOS_INDEX, EOS_INDEX  # noqa: E402
from models.captioner import PMICaptioner  # noqa: E402

logger = logging.getLogger("bench_captioner")
MODALITY_DIMS = {"irv2": 1536, "c3d": 4096, "mfcc": 40}
STEPS = 32


def cpu_name() -> str:
    """Return the CPU model from /proc/cpuinfo, or the platform's processor string."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_description(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{cpu_name()}, {os.cpu_count()} logical cores visible, torch threads {threads}"


def timed(function: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Return the median seconds of `repeats` calls after one warm-up call."""
    function()
    durations = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def random_batch(batch: int, vocabulary: int, words: int, device: torch.device, generator: torch.Generator):
    video = [torch.randn(batch, STEPS, dim, generator=generator).to(device) for dim in MODALITY_DIMS.values()]
    caption = torch.randint(EOS_INDEX + 1, vocabulary, (batch, words), generator=generator)
    inputs = torch.cat([torch.full((batch, 1), BOS_INDEX), caption], dim=1).to(device)
    targets = torch.cat([caption, torch.full((batch, 1), EOS_INDEX)], dim=1).to(device)
    return video, inputs, targets


def run(arguments: argparse.Namespace) -> dict:
    torch.set_num_threads(arguments.threads)
    torch.manual_seed(0)
    device = torch.device(arguments.device)
    section = yaml.safe_load((REPOSITORY_ROOT / "config.yaml").read_text())["captioner"]
    if arguments.interaction is not None:
        section["interaction"] = arguments.interaction
    config = CaptionerConfig.from_dict(section)
    model = PMICaptioner(config, list(MODALITY_DIMS.values()), arguments.vocabulary).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(1)
    video, inputs, targets = random_batch(config.batch_size, arguments.vocabulary, arguments.words, device, generator)

    def train_step() -> None:
        model.train()
        loss = model.caption_loss(model(video, None, inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()

    train_seconds = timed(train_step, arguments.repeats, device)

    def interaction_step() -> None:
        model.video_interaction(video, None).features.sum().backward()

    interaction_seconds = timed(interaction_step, arguments.repeats, device)
    optimizer.zero_grad()

    model.eval()
    with torch.no_grad():
        # Random weights would otherwise end some captions at once and flatter the speed.
        model.output.bias[EOS_INDEX] = -1e4
    if not 1 <= arguments.decode_batch <= config.batch_size:
        raise SystemExit(f"--decode-batch must be in [1, {config.batch_size}], got {arguments.decode_batch}")
    decode_video = [modality[: arguments.decode_batch] for modality in video]
    videos = decode_video[0].shape[0]
    encode_seconds = timed(lambda: model.encode(decode_video, None), arguments.repeats, device)
    greedy_seconds = timed(lambda: model.greedy_decode(decode_video, None, config.max_length), arguments.repeats, device)
    beam_seconds = timed(
        lambda: model.beam_search(decode_video, None, config.beam_size, config.max_length), arguments.repeats, device
    )
    lengths = model.greedy_decode(decode_video, None, config.max_length).tokens
    return {
        "machine": machine_description(device, arguments.threads),
        "device": str(device),
        "interaction": config.interaction.interaction,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "batch_size": config.batch_size,
        "train_seconds": train_seconds,
        "captions_per_second": config.batch_size / train_seconds,
        "interaction_seconds": interaction_seconds,
        "encode_seconds": encode_seconds,
        "decode_videos": videos,
        "greedy_videos_per_second": videos / greedy_seconds,
        "beam_size": config.beam_size,
        "beam_videos_per_second": videos / beam_seconds,
        "max_length": config.max_length,
        "mean_caption_words": statistics.mean(len(tokens) for tokens in lengths),
    }


def markdown(result: dict, arguments: argparse.Namespace) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    pairs = "9 pairs" if result["interaction"] == "pairwise" else "concatenated"
    return "\n".join(
        [
            f"## PMI-CAP training and decoding ({stamp})",
            "",
            f"Script: `benchmarks/bench_captioner.py --device {arguments.device} --threads {arguments.threads} "
            f"--repeats {arguments.repeats}"
            + (f" --interaction {arguments.interaction}" if arguments.interaction else "")
            + f"`. Machine: {result['machine']}; torch {torch.__version__}.",
            f"Model: config.yaml `captioner:` sizes, interaction `{result['interaction']}`, "
            f"modalities IRV2 1536 + C3D 4096 + MFCC 40 ({pairs}), "
            f"N = {STEPS}, vocabulary {arguments.vocabulary}, {result['parameters']:,} parameters. "
            f"Random inputs and weights; medians of {arguments.repeats} runs after one warm-up.",
            "",
            "| measurement | value |",
            "|---|---|",
            f"| training step, batch {result['batch_size']} captions of {arguments.words} words | "
            f"{result['train_seconds']:.3f} s = {result['captions_per_second']:.1f} captions/s |",
            f"| video interaction alone, forward and backward, same batch | {result['interaction_seconds']:.3f} s |",
            f"| encoder alone (interaction and BiLSTM, no gradient), {result['decode_videos']} videos | "
            f"{result['encode_seconds']:.3f} s |",
            f"| greedy decoding, {result['decode_videos']} videos, max_length {result['max_length']} | "
            f"{result['greedy_videos_per_second']:.1f} videos/s |",
            f"| beam search, beam {result['beam_size']}, {result['decode_videos']} videos, max_length {result['max_length']} | "
            f"{result['beam_videos_per_second']:.1f} videos/s |",
            "",
            f"Decoded captions had {result['mean_caption_words']:.1f} words on average (`<eos>` suppressed, the "
            "slowest case). Decoding times include the encoder. Other jobs may have shared the machine during the run.",
            "",
        ]
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device to measure")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--vocabulary", type=int, default=5000, help="vocabulary size (words)")
    parser.add_argument("--words", type=int, default=10, help="words per training caption")
    parser.add_argument("--decode-batch", type=int, default=16, help="videos per decoding batch (at most batch_size)")
    parser.add_argument(
        "--interaction",
        choices=("pairwise", "concat_intra", "none"),
        help="replace the config's video interaction (none measures the encoder-decoder without PMI)",
    )
    parser.add_argument("--results", type=Path, help="append the Markdown section to this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    arguments = parse_args(argv)
    result = run(arguments)
    section = markdown(result, arguments)
    sys.stdout.write(section + "\n")
    if arguments.results is not None:
        with arguments.results.open("a", encoding="utf-8") as handle:
            handle.write("\n" + section)
        logger.info("appended the results to %s", arguments.results)


if __name__ == "__main__":
    main()
