"""Workspace creation: per-workspace wall time and disk of five ways, side by side in one run.

On a small repository (300 files) and a large one (3,200 files, ≥ 50 MB of history,
generated deterministically), on each disk given (the slow default disk and tmpfs), for
N = 1 and N sequential and N concurrent workspaces:

  (a) `git clone --depth=1 file://origin`: the first generation's way
  (b) a plain checkout of the same tree from the mirror into an empty directory: the floor
  (c) zloth: a fresh workspace (init + alternates to the mirror + checkout)
  (d) zloth: a sparse workspace of one directory
  (e) zloth: a warm workspace taken from the pool (entries recycled from finished runs),
      at the pool's commit, and again after upstream moved (20 files to rewrite)

Disk counts files and directories, each inode once (hard links once). The one-time mirror
clone and the background pool refill (recycling) are reported apart. Prints JSON.

    .venv/bin/python scripts/bench/workspaces.py --n 10 --disks /tmp,/dev/shm
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.core.git import run_git  # noqa: E402
from services.core.telemetry import configure_logging  # noqa: E402
from services.workspace_manager.gc import Janitor  # noqa: E402
from services.workspace_manager.mirrors import MirrorCache, resolve  # noqa: E402
from services.workspace_manager.pool import WarmPool  # noqa: E402
from services.workspace_manager.workspaces import WorkspaceFactory  # noqa: E402
from tests.support.gitrepo import add_commit, git, make_large_origin, make_origin  # noqa: E402

REPO = "bench/repo"
Make = Callable[[int], Awaitable[Path]]


def du(path: Path) -> int:
    """Bytes allocated under `path` (files and directories), every inode counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames, "."]:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def timed(make: Make, i: int) -> tuple[float, Path]:
    started = time.perf_counter()
    path = await make(i)
    return time.perf_counter() - started, path


def summary(results: list[tuple[float, Path]], wall: float | None = None) -> dict[str, Any]:
    sizes = [du(path) for _, path in results]
    row: dict[str, Any] = {**stats([t for t, _ in results]),
                           "disk_bytes": int(statistics.fmean(sizes))}
    if wall is not None:
        row["wall_ms"] = round(wall * 1000, 1)
    return row


async def run_all(makers: dict[str, Make], n: int,
                  between: Callable[[], Awaitable[None]]) -> dict[str, dict[str, Any]]:
    """N = 1, then N sequential, then N concurrent for every way. Sequential ones go round
    robin (one of each way in turn) so that the disk's moods hit every way alike; the
    concurrent batches run one way after the other. Workspaces are removed per phase."""
    out: dict[str, dict[str, Any]] = {name: {} for name in makers}
    index = 0
    for label, count in (("n1", 1), ("seq", n)):
        await between()
        done: dict[str, list[tuple[float, Path]]] = {name: [] for name in makers}
        for i in range(count):
            for name, make in makers.items():
                done[name].append(await timed(make, index + i))
        index += count
        for name, results in done.items():
            out[name][label] = summary(results)
        await cleanup(done)
    await between()
    for name, make in makers.items():
        wall = time.perf_counter()
        results = list(await asyncio.gather(*(timed(make, index + i) for i in range(n))))
        wall = time.perf_counter() - wall
        out[name]["conc"] = summary(results, wall)
        await cleanup({name: results})
    return out


async def cleanup(done: dict[str, list[tuple[float, Path]]]) -> None:
    for name, results in done.items():
        if name not in ("c_zloth_full", "e_zloth_warm"):  # runs the pool recycles for (e)
            for _, path in results:
                await asyncio.to_thread(shutil.rmtree, path, True)


async def bench_repo(base: Path, origin_src: Path, n: int, sparse_dir: str) -> dict[str, Any]:
    origin = base / "origin.git"
    await asyncio.to_thread(shutil.copytree, origin_src, origin, symlinks=True)
    url = f"file://{origin}"
    mirrors = MirrorCache(base / "mirrors", refresh_seconds=3600)
    started = time.perf_counter()
    mirror = await mirrors.ensure(REPO, url, None)
    mirror_s = time.perf_counter() - started
    sha = await resolve(mirror, "main")
    listed = await run_git(["ls-tree", "-r", "--name-only", sha], cwd=mirror)
    result: dict[str, Any] = {
        "files": listed.stdout.count("\n"),
        "mirror": {"clone_ms": round(mirror_s * 1000, 1), "disk_bytes": du(mirror)},
    }

    async def depth1(i: int) -> Path:
        dest = base / "a" / str(i)
        await run_git(["clone", "--quiet", "--depth=1", "--", url, str(dest)], timeout=900)
        return dest

    async def floor(i: int) -> Path:
        dest = base / "b" / str(i)
        dest.mkdir(parents=True)
        index = base / "b" / f"index-{i}"
        await run_git([f"--git-dir={mirror}", f"--work-tree={dest}", "checkout", "--quiet",
                       "-f", sha, "--", "."], env={"GIT_INDEX_FILE": str(index)}, timeout=900)
        index.unlink()
        return dest

    plain = WorkspaceFactory(mirrors, base / "c")
    sparse = WorkspaceFactory(mirrors, base / "d")
    pool = WarmPool(base / "c", mirrors, size=n)
    warm = WorkspaceFactory(mirrors, base / "c", pool=pool)
    janitor = Janitor(warm, keep_seconds=0)
    refills: list[float] = []

    async def zloth(i: int) -> Path:
        return Path((await plain.create(f"c{i}", REPO, url, None, f"zloth/c{i}")).path)

    async def zloth_sparse(i: int) -> Path:
        ws = await sparse.create(f"d{i}", REPO, url, None, f"zloth/d{i}", [sparse_dir])
        return Path(ws.path)

    async def take(i: int) -> Path:
        return Path((await warm.create(f"e{i}", REPO, url, None, f"zloth/e{i}")).path)

    async def refill() -> None:
        """The (c) runs end; the pool (in the background, in production) recycles them."""
        for run_id in list(warm.records.run_ids()):
            await warm.finish(run_id)
        pool.note_use(REPO, url)
        began = time.perf_counter()
        added = await pool.fill(janitor.detach_finished)
        if added:
            refills.append((time.perf_counter() - began) / added)

    makers: dict[str, Make] = {"a_depth1_clone": depth1, "b_floor_checkout": floor,
                               "c_zloth_full": zloth, "d_zloth_sparse": zloth_sparse,
                               "e_zloth_warm": take}
    result.update(await run_all(makers, n, refill))
    result["e_zloth_warm_base_moved"] = await moved(origin, mirrors, refill, take, n)
    result["pool_refill"] = {
        "per_entry_ms": [round(r * 1000, 1) for r in refills], "made": dict(pool.made),
        "note": "in the background; a round includes one 1.05 s racy-git settle",
    }
    return result


async def moved(origin: Path, mirrors: MirrorCache, refill: Callable[[], Awaitable[None]],
                take: Make, n: int) -> dict[str, Any]:
    """(e) when upstream moved after the warm entries were made (20 files changed, the
    mirror fetched since, as its scheduled refresh does): a take checks out only what
    differs. Sequential, then concurrent."""
    out: dict[str, Any] = {}
    for k, label in enumerate(("seq", "conc")):
        await refill()
        files = git("ls-tree", "-r", "--name-only", "main", cwd=origin).split()
        add_commit(origin, {name: f"moved {k}\n" for name in files[:: max(1, len(files) // 20)]},
                   f"upstream moves {k}")
        mirrors.refresh_seconds = 0
        await mirrors.ensure(REPO, f"file://{origin}", None)
        mirrors.refresh_seconds = 3600
        start = 1000 + 100 * k
        if label == "seq":
            results = [await timed(take, start + i) for i in range(n)]
        else:
            results = list(await asyncio.gather(*(timed(take, start + i) for i in range(n))))
        out[label] = summary(results)
    return out


def ratios(repo: dict[str, Any]) -> dict[str, Any]:
    seq = {k: repo[k]["seq"] for k in ("a_depth1_clone", "b_floor_checkout", "c_zloth_full",
                                        "d_zloth_sparse", "e_zloth_warm")}
    a, b = seq["a_depth1_clone"], seq["b_floor_checkout"]
    out: dict[str, Any] = {}
    for key, row in seq.items():
        out[key] = {
            "time_vs_a": round(row["mean_ms"] / a["mean_ms"], 3),
            "time_vs_b": round(row["mean_ms"] / b["mean_ms"], 3),
            "disk_vs_a": round(row["disk_bytes"] / a["disk_bytes"], 3),
            "disk_vs_b": round(row["disk_bytes"] / b["disk_bytes"], 3),
        }
    return out


def goals(repo: dict[str, Any], large: bool) -> dict[str, Any]:
    """The issue's goals; (d)'s and (e)'s 20× are set for the large repository (on the small
    one a directory is a quarter of the files, and a clone is already quick)."""
    r = ratios(repo)
    e = repo["e_zloth_warm"]
    out = {
        "c_time_within_1.3x_of_b": r["c_zloth_full"]["time_vs_b"] <= 1.3,
        "c_disk_within_1.1x_of_b": r["c_zloth_full"]["disk_vs_b"] <= 1.1,
        "e_p95_le_100ms_sequential": max(e[k]["p95_ms"] for k in ("n1", "seq")) <= 100,
        "e_p95_le_100ms_10_concurrent": e["conc"]["p95_ms"] <= 100,
        "e_base_moved_p95_le_100ms_sequential": repo["e_zloth_warm_base_moved"]["seq"]["p95_ms"]
        <= 100,
        "e_base_moved_p95_le_100ms_10_concurrent":
            repo["e_zloth_warm_base_moved"]["conc"]["p95_ms"] <= 100,
    }
    if large:
        out["d_10x_faster_than_a"] = r["d_zloth_sparse"]["time_vs_a"] <= 0.1
        out["d_90pct_less_disk_than_a"] = r["d_zloth_sparse"]["disk_vs_a"] <= 0.1
        out["e_20x_faster_than_a"] = r["e_zloth_warm"]["time_vs_a"] <= 0.05
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--disks", default=f"{tempfile.gettempdir()},/dev/shm")
    parser.add_argument("--repos", default="small,large")
    args = parser.parse_args()
    configure_logging("warning", "json")
    started = time.perf_counter()
    report: dict[str, Any] = {"n": args.n, "cpus": os.cpu_count(),
                              "git": (await run_git(["--version"])).stdout.strip()}
    shm = Path("/dev/shm")  # noqa: S108 -- tmpfs on purpose: generating is file-creation bound
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None,
                                     prefix="zloth-bench-src-") as src_dir:
        src = Path(src_dir)
        sources = {}
        if "small" in args.repos:
            sources["small"] = (make_origin(src / "small", files=300, commits=30), "docs")
        if "large" in args.repos:
            sources["large"] = (make_large_origin(src / "large.git"), "pkg00")
        report["setup_s"] = round(time.perf_counter() - started, 1)
        for disk in args.disks.split(","):
            for name, (origin, sparse_dir) in sources.items():
                with tempfile.TemporaryDirectory(dir=disk, prefix="zloth-bench-") as base:
                    repo = await bench_repo(Path(base), origin, args.n, sparse_dir)
                repo["ratios_seq_mean"] = ratios(repo)
                repo["goals"] = goals(repo, large=name == "large")
                report.setdefault(disk, {})[name] = repo
    report["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
