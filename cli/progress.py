"""Progress bars of the long commands (tqdm on stderr), each closed when its block ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.runner import RunProgress


@contextmanager
def run_progress(quiet: bool) -> Iterator[Callable[[RunProgress], None] | None]:
    """A bar over a run's neurons with images, LLM calls and tokens (``None`` when quiet); while
    an endpoint is down its description says ``waiting for <endpoint> (down since HH:MM:SS)``."""
    if quiet:
        yield None
        return
    from tqdm import tqdm  # here, not at the top: a command without a bar never loads it

    bar: tqdm | None = None

    def update(progress: RunProgress) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=progress.total, unit="neuron", dynamic_ncols=True)
        bar.n = progress.done + progress.failed
        bar.set_description_str("; ".join(progress.waiting), refresh=False)
        bar.set_postfix(
            images=progress.images,
            llm_calls=progress.llm_calls,
            tokens=progress.tokens,
            failed=progress.failed,
        )

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


@contextmanager
def repeats_progress(quiet: bool, repeats: int) -> Iterator[Callable[[RunProgress], None] | None]:
    """One bar per repeat of a benchmark's runs (``None`` when quiet)."""
    if quiet:
        yield None
        return
    from tqdm import tqdm

    bar: tqdm | None = None
    repeat = 0

    def update(progress: RunProgress) -> None:
        nonlocal bar, repeat
        if bar is None or progress.total != bar.total or progress.done + progress.failed < bar.n:
            if bar is not None:
                bar.close()
            repeat += 1
            bar = tqdm(
                total=progress.total,
                unit="neuron",
                desc=f"repeat {repeat}/{repeats}",
                dynamic_ncols=True,
            )
        bar.n = progress.done + progress.failed
        bar.set_postfix(images=progress.images, failed=progress.failed)
        if bar.n >= progress.total:
            bar.close()
            bar = None

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


@contextmanager
def count_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A bar fed ``(done, total)`` counts of neurons."""
    from tqdm import tqdm

    bar: tqdm | None = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="neuron", desc=description, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()
