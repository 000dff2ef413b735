"""Generated sets built one sample at a time: the ids up front, each sample only when it is asked for.

    samples = lazy_samples(passkey_images, n=200, seed=0)     # None for a generator it does not know
    samples.ids[7]          # "passkey-0-7", without building anything
    samples[7]              # builds sample 7 alone: equal to passkey_images(200, seed=0)[7]

A batch run holds one page set at a time this way, and a resumed run builds only the samples still to
score. It works for the generators whose sample i depends on (seed, i) alone and whose ids are known
from (seed, i): the built-in needle sets below (they take ``indices=``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, overload

from . import niah, passkey
from .compose import sample_id
from .samples import ImageSample, TextSample

# generator -> (id prefix, sample class); each takes `indices=` and names sample i f"{prefix}-{seed}-{i}"
INDEXED: dict[Callable[..., list[Any]], tuple[str, type]] = {
    passkey.passkey_images: (passkey.IMAGES_ID, ImageSample), passkey.passkey_text: (passkey.TEXT_ID, TextSample),
    niah.niah_images: (niah.IMAGES_ID, ImageSample), niah.niah_text: (niah.TEXT_ID, TextSample),
}


class LazySamples(Sequence):
    """The n samples of `build(n, seed=seed, **kwargs)`, each built on access (never kept, except one
    held by `hold` until it is next asked for). `kind` is the sample class, `ids` the sample ids."""

    def __init__(self, build: Callable[..., list[Any]], n: int, seed: int, kwargs: dict[str, Any]) -> None:
        if build not in INDEXED:
            raise ValueError(f"{getattr(build, '__name__', build)!r} cannot build single samples; "
                             f"lazy sets exist for {[f.__name__ for f in INDEXED]}")
        prefix, self.kind = INDEXED[build]
        self.build, self.n, self.seed, self.kwargs = build, int(n), int(seed), dict(kwargs)
        self.ids: tuple[str, ...] = tuple(sample_id(prefix, seed, i) for i in range(self.n))
        self.built = 0                       # samples built so far (what a resumed run saves is visible here)
        self._held: tuple[int, Any] | None = None

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(self.n)[index]]
        if not -self.n <= index < self.n:
            raise IndexError(f"sample index {index} is outside the set of {self.n} samples")
        index %= self.n
        if self._held is not None and self._held[0] == index:
            sample, self._held = self._held[1], None
            return sample
        (sample,) = self.build(self.n, seed=self.seed, indices=[index], **self.kwargs)
        self.built += 1
        if sample.id != self.ids[index]:     # a generator whose ids drifted from INDEXED would mix samples
            raise RuntimeError(f"sample {index} was built with id {sample.id!r}, expected {self.ids[index]!r}")
        return sample

    def hold(self, index: int) -> Any:
        """Build sample `index` now (e.g. to check the arguments before a long model load) and keep it for
        its next access, so it is not built twice."""
        sample = self[index]
        self._held = (index % self.n, sample)
        return sample


def lazy_samples(build: Callable[..., Any], n: int, seed: int = 0, **kwargs: Any) -> LazySamples | None:
    """A LazySamples for a generator that can build single samples (see INDEXED), else None."""
    return LazySamples(build, n, seed, kwargs) if build in INDEXED else None
