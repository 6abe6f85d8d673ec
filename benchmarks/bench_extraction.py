"""Benchmark of the shard jobs: decode/forward overlap of IRV2 extraction and peak memory vs length.

Two measurements, each printed as a Markdown table:

overlap
    Wall time of `extract_shard` with IRV2 (random weights) over a few real videos, divided by
    max(decode-only time, forward-only time) measured in the same run on the same frames.
    1.0 means decoding hides completely behind the forward pass (or the other way round);
    2.0 means the two run one after the other. The extractor is built before the clock starts.

memory
    Peak resident memory (RSS high-water mark from getrusage, of the Python process only, not
    of its ffmpeg children) of a job on a 10-minute video divided by the same job on a 1-minute
    video. Both videos are one real video looped with `ffmpeg -stream_loop` and copied without
    re-encoding. Every job runs in a fresh interpreter, so one run's peak never hides another's.

Usage:
    .venv/bin/python benchmarks/bench_extraction.py overlap
    .venv/bin/python benchmarks/bench_extraction.py memory
Both accept --help. Results are recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
if str(REPOSITORY_ROOT) not in sys.path:
    sys.path.insert(0, str(REPOSITORY_ROOT))

import torch  # noqa: E402

from extractors import registry  # noqa: E402
from extractors.artifacts import read_video_group  # noqa: E402
from extractors.decode import iter_frames  # noqa: E402
from extractors.probe import VideoProbe  # noqa: E402
from extractors.runner import decode_shard, extract_shard  # noqa: E402
from extractors.video_index import write_video_index  # noqa: E402
from models.runtime import configure_logging  # noqa: E402

logger = logging.getLogger("bench_extraction")

SHARED_VIDEOS = REPOSITORY_ROOT.parent / "shared" / "data" / "videos"
# Three codecs and sizes: H.264 320x240 and 640x360, VP8 1280x720 (the costliest to decode).
DEFAULT_OVERLAP_VIDEOS = ("video9149.mp4", "chaplin.mp4", "big_buck_bunny_0_30.webm")
DEFAULT_MEMORY_SOURCE = "video9149.mp4"
SAMPLE_RATE = 22050
# Frames decoded ahead of the network, as decode.frame_chunk in config.yaml.
FRAME_CHUNK = 32


def machine_description() -> str:
    """Return CPU model, core count, memory, Python and torch versions in one line."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory_gib:.0f} GiB RAM, Python {platform.python_version()}, "
        f"torch {torch.__version__}, 1-minute load average {os.getloadavg()[0]:.1f} at start"
    )


def decode_videos(videos: dict[str, Path], folder: Path) -> tuple[Path, Path]:
    """Index and decode `videos` (id -> path) as one shard; return the artifact and its failed.tsv."""
    index = folder / "videos.tsv"
    write_video_index(index, videos, [], shard_size=max(1, len(videos)))
    decoded, failed = folder / "decoded.h5", folder / "decoded.failed.tsv"
    decode_shard(
        index, 0, decoded, failed,
        sample_rate=SAMPLE_RATE, video_stream=0, audio_stream=0, on_bad_video="fail",
    )
    return decoded, failed


# ---------------------------------------------------------------------------------------------
# overlap


def time_decode_only(extractor: Any, decoded: Path, video_id: str) -> tuple[float, list]:
    """Decode the frames IRV2 would see, without the network; return seconds and the chunks."""
    start = time.perf_counter()
    attrs = read_video_group(decoded, video_id, datasets=[]).attrs
    chunks = list(
        iter_frames(
            Path(attrs["path"]),
            VideoProbe.from_json(attrs["probe"]),
            fps=extractor.settings.fps,
            geometry=extractor.settings.geometry(),
            chunk_size=extractor.settings.frame_chunk,
        )
    )
    return time.perf_counter() - start, chunks


def time_forward_only(extractor: Any, chunks: list, video_id: str) -> tuple[float, int]:
    """Run the network on frames decoded beforehand; return seconds and the frame count."""
    start = time.perf_counter()
    sequence = extractor.extract_chunks(chunks, video_id)
    return time.perf_counter() - start, len(sequence.features)


def time_extraction(extractor: Any, decoded: Path, decode_failed: Path, output: Path) -> float:
    """Time `extract_shard` with the already built `extractor`, writing a fresh artifact."""
    build = registry.build_extractor
    registry.build_extractor = lambda *args, **kwargs: extractor
    try:
        start = time.perf_counter()
        extract_shard(
            "irv2", {}, decoded, output, output.with_suffix(".failed.tsv"),
            decode_failed=decode_failed, device=torch.device("cpu"), frame_chunk=FRAME_CHUNK,
            on_bad_video="fail", feature_dtype="float16",
        )
        return time.perf_counter() - start
    finally:
        registry.build_extractor = build


def run_overlap(arguments: argparse.Namespace) -> dict[str, Any]:
    """Measure extraction, decode-only and forward-only times; return the sums per round and ratios.

    The three measurements of one video run back to back, and forward-only and extraction
    swap places from one video to the next, so a change in the load of a shared machine
    reaches all three about equally.
    """
    torch.set_num_threads(arguments.threads)
    videos = {Path(name).stem: arguments.videos_dir / name for name in arguments.videos}
    for path in videos.values():
        if not path.is_file():
            raise FileNotFoundError(f"benchmark video {path} not found; pass --videos-dir")

    extractor = registry.build_extractor(
        "irv2",
        {"pretrained": False, "fps": arguments.fps, "batch_size": arguments.batch_size},
        torch.device("cpu"),
        frame_chunk=FRAME_CHUNK,
    )
    rounds: list[dict[str, float]] = []
    frames = 0
    with tempfile.TemporaryDirectory(prefix="bench_overlap_") as work:
        folder = Path(work)
        decoded_videos = {}
        for video_id, path in videos.items():
            video_folder = folder / video_id
            video_folder.mkdir()
            decoded_videos[video_id] = decode_videos({video_id: path}, video_folder)

        # One untimed forward pass, so that one-time setup of the CPU kernels is not counted.
        first_id = sorted(videos)[0]
        _, warm_up_chunks = time_decode_only(extractor, decoded_videos[first_id][0], first_id)
        time_forward_only(extractor, warm_up_chunks[:1], first_id)

        for round_index in range(arguments.repeats):
            totals = {"extraction": 0.0, "decode_only": 0.0, "forward_only": 0.0}
            frames = 0
            for position, video_id in enumerate(sorted(videos)):
                decoded, decode_failed = decoded_videos[video_id]
                output = folder / video_id / f"irv2_round{round_index}.h5"
                decode_seconds, chunks = time_decode_only(extractor, decoded, video_id)
                if (round_index + position) % 2 == 0:
                    forward_seconds, count = time_forward_only(extractor, chunks, video_id)
                    extraction_seconds = time_extraction(extractor, decoded, decode_failed, output)
                else:
                    extraction_seconds = time_extraction(extractor, decoded, decode_failed, output)
                    forward_seconds, count = time_forward_only(extractor, chunks, video_id)
                totals["decode_only"] += decode_seconds
                totals["forward_only"] += forward_seconds
                totals["extraction"] += extraction_seconds
                frames += count
            totals["ratio"] = totals["extraction"] / max(totals["decode_only"], totals["forward_only"])
            rounds.append(totals)
            logger.info("round %d: %s", round_index, json.dumps(totals))

    medians = {name: statistics.median(totals[name] for totals in rounds) for name in rounds[0]}
    return {
        "videos": list(arguments.videos),
        "frames": frames,
        "fps": arguments.fps,
        "batch_size": arguments.batch_size,
        "threads": arguments.threads,
        "repeats": arguments.repeats,
        "rounds": rounds,
        "medians": medians,
        "ratio": medians["ratio"],
        "serial_ratio": medians["extraction"] / (medians["decode_only"] + medians["forward_only"]),
    }


def print_overlap(result: dict[str, Any]) -> None:
    medians = result["medians"]
    print(f"IRV2 random init, CPU, {result['threads']} torch thread(s), fps {result['fps']}, "
          f"batch {result['batch_size']}, {result['frames']} frames from {len(result['videos'])} videos "
          f"({', '.join(result['videos'])}), {result['repeats']} rounds")
    print()
    print("| round | extraction (s) | decode only (s) | forward only (s) | extraction / max(decode, forward) |")
    print("|---|---|---|---|---|")
    for index, totals in enumerate(result["rounds"]):
        print(f"| {index} | {totals['extraction']:.2f} | {totals['decode_only']:.2f} | "
              f"{totals['forward_only']:.2f} | {totals['ratio']:.3f} |")
    print(f"| median | {medians['extraction']:.2f} | {medians['decode_only']:.2f} | "
          f"{medians['forward_only']:.2f} | {medians['ratio']:.3f} |")
    print()
    print(f"median extraction / max(decode only, forward only) = {result['ratio']:.3f} (target <= 1.10)")
    print(f"median extraction / (decode only + forward only) = {result['serial_ratio']:.3f}")


# ---------------------------------------------------------------------------------------------
# memory


def loop_video(source: Path, seconds: float, output: Path) -> Path:
    """Write `source` looped to `seconds` without re-encoding (stream copy)."""
    command = [
        "ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", f"file:{source}",
        "-t", str(seconds), "-c", "copy", f"file:{output}",
    ]
    subprocess.run(command, check=True, capture_output=True)
    return output


def memory_jobs(arguments: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Return the extractor settings of each memory run, kept short with low frame rates.

    Batches and SoundNet chunks are small enough that the short video already fills several
    of them. Otherwise the short run would hold one partial batch or chunk and the long run
    full ones, and the ratio would measure the batch size instead of the video length.
    """
    jobs = {
        "mfcc": {},
        "soundnet": {"chunk_seconds": 20.0},
        "c3d": {"pretrained": False, "fps": arguments.c3d_fps, "stride": 16, "batch_size": 2},
        "irv2": {"pretrained": False, "fps": arguments.irv2_fps, "batch_size": 4},
    }
    return {name: jobs[name] for name in arguments.extractors}


def run_child(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one job in a fresh interpreter and return its JSON report (peak RSS, seconds)."""
    command = [sys.executable, str(Path(__file__).resolve()), "child", json.dumps(job)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark job {job} failed (exit code {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_memory(arguments: argparse.Namespace) -> dict[str, Any]:
    """Measure the peak RSS of decoding and of each extractor on a short and a long loop."""
    source = arguments.videos_dir / arguments.source
    if not source.is_file():
        raise FileNotFoundError(f"benchmark video {source} not found; pass --videos-dir")

    runs: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as work:
        folder = Path(work)
        for label, seconds in (("short", arguments.short_seconds), ("long", arguments.long_seconds)):
            run_folder = folder / label
            run_folder.mkdir()
            video = loop_video(source, seconds, run_folder / f"loop{label}.mp4")
            index = run_folder / "videos.tsv"
            write_video_index(index, {video.stem: video}, [], shard_size=1)
            decoded, decode_failed = run_folder / "decoded.h5", run_folder / "decoded.failed.tsv"

            job = {"kind": "decode", "index": str(index), "output": str(decoded), "failed": str(decode_failed),
                   "threads": arguments.threads}
            runs.setdefault("decode", {})[label] = run_child(job, arguments.timeout)
            logger.info("decode %s: %s", label, runs["decode"][label])

            for name, settings in memory_jobs(arguments).items():
                job = {"kind": "extract", "name": name, "settings": settings, "decoded": str(decoded),
                       "decode_failed": str(decode_failed), "output": str(run_folder / f"{name}.h5"),
                       "failed": str(run_folder / f"{name}.failed.tsv"), "threads": arguments.threads}
                runs.setdefault(name, {})[label] = run_child(job, arguments.timeout)
                logger.info("%s %s: %s", name, label, runs[name][label])

    ratios = {name: run["long"]["peak_rss_mib"] / run["short"]["peak_rss_mib"] for name, run in runs.items()}
    return {
        "source": arguments.source,
        "short_seconds": arguments.short_seconds,
        "long_seconds": arguments.long_seconds,
        "settings": memory_jobs(arguments),
        "threads": arguments.threads,
        "runs": runs,
        "ratios": ratios,
    }


def print_memory(result: dict[str, Any]) -> None:
    print(f"{result['source']} looped to {result['short_seconds']:g} s and {result['long_seconds']:g} s, "
          f"{result['threads']} torch thread(s); settings {json.dumps(result['settings'])}")
    print()
    print("| job | peak RSS short (MiB) | peak RSS long (MiB) | long / short | seconds short | seconds long |")
    print("|---|---|---|---|---|---|")
    for name, run in result["runs"].items():
        short, long = run["short"], run["long"]
        print(f"| {name} | {short['peak_rss_mib']:.0f} | {long['peak_rss_mib']:.0f} | "
              f"{result['ratios'][name]:.2f} | {short['seconds']:.1f} | {long['seconds']:.1f} |")


def run_child_job(job: dict[str, Any]) -> None:
    """Run one decode or extract job in this process and print its peak RSS and wall time as JSON."""
    torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    if job["kind"] == "decode":
        decode_shard(
            Path(job["index"]), 0, Path(job["output"]), Path(job["failed"]),
            sample_rate=SAMPLE_RATE, video_stream=0, audio_stream=0, on_bad_video="fail",
        )
    else:
        extract_shard(
            job["name"], job["settings"], Path(job["decoded"]), Path(job["output"]), Path(job["failed"]),
            decode_failed=Path(job["decode_failed"]), device=torch.device("cpu"), frame_chunk=FRAME_CHUNK,
            on_bad_video="fail", feature_dtype="float16",
        )
    seconds = time.perf_counter() - start
    # ru_maxrss is in KiB on Linux.
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": peak_mib, "seconds": seconds}))


# ---------------------------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos-dir", type=Path, default=SHARED_VIDEOS, help="folder of the real videos")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", type=Path, help="also write the full result to this JSON file")
    commands = parser.add_subparsers(dest="command", required=True)

    overlap = commands.add_parser("overlap", help="IRV2 extraction time vs decode-only and forward-only")
    overlap.add_argument("--videos", nargs="+", default=list(DEFAULT_OVERLAP_VIDEOS), help="file names in --videos-dir")
    overlap.add_argument("--fps", type=float, default=2.0, help="IRV2 frames per second (default 2)")
    overlap.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (default 16)")
    overlap.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported (default 3)")

    memory = commands.add_parser("memory", help="peak RSS on a 10-minute vs a 1-minute video")
    memory.add_argument("--source", default=DEFAULT_MEMORY_SOURCE, help="file name in --videos-dir to loop")
    memory.add_argument("--short-seconds", type=float, default=60.0, help="length of the short loop (s)")
    memory.add_argument("--long-seconds", type=float, default=600.0, help="length of the long loop (s)")
    memory.add_argument("--extractors", nargs="+", default=["mfcc", "soundnet", "c3d", "irv2"],
                        choices=["mfcc", "soundnet", "c3d", "irv2"], help="extractors to run")
    memory.add_argument("--irv2-fps", type=float, default=0.2, help="IRV2 frames per second (default 0.2)")
    memory.add_argument("--c3d-fps", type=float, default=2.0,
                        help="frame rate C3D resamples to, clips of 16 at stride 16 (default 2)")
    memory.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per job")

    child = commands.add_parser("child", help="internal: run one job and print its peak RSS")
    child.add_argument("job", help="JSON description of the job")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    configure_logging(None, "WARNING" if arguments.command == "child" else "INFO")
    if arguments.command == "child":
        run_child_job(json.loads(arguments.job))
        return

    print(f"Machine: {machine_description()}")
    print()
    if arguments.command == "overlap":
        result = run_overlap(arguments)
        print_overlap(result)
    else:
        result = run_memory(arguments)
        print_memory(result)
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
