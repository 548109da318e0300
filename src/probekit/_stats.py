"""Numbers over repeated seeds: intervals, findings that compare them, and trivial baselines.

`Interval.of(values)` summarises the values of one number over seeds (mean, sample standard
deviation, half-width of the 95 % Student-t confidence interval of the mean, n). `compare` turns two
intervals into a sentence that states the effect size and whether the 95 % intervals separate;
`baseline_warning` says when a result is not clearly better than a trivial baseline. Every
"finding" a probe writes into a report goes through `compare`, so that no difference within the
noise of one seed is reported as a result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided Student-t quantile of `level` with `df` degrees of freedom (scipy)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class Interval:
    """A number measured over `n` seeds: mean, standard deviation and 95 % confidence interval.

    Attributes:
        mean: the mean of the values.
        std: the sample standard deviation (ddof 1); 0.0 with one value.
        ci95: half-width of the 95 % Student-t confidence interval of the mean,
            `t(0.975, n - 1) * std / sqrt(n)`; NaN with one value (nothing is known of the spread).
        n: how many values (seeds).
    """

    mean: float
    std: float
    ci95: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Interval:
        """The interval of `values` (None and NaN values are left out; no values gives an all-NaN interval)."""
        xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        n = len(xs)
        if n == 0:
            return cls(math.nan, math.nan, math.nan, 0)
        mean = math.fsum(xs) / n
        if n == 1:
            return cls(mean, 0.0, math.nan, 1)
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
        return cls(mean, std, t_quantile(n - 1) * std / math.sqrt(n), n)

    @property
    def low(self) -> float:
        """Lower end of the 95 % interval (the mean itself with one value)."""
        return self.mean - (self.ci95 if self.n > 1 else 0.0)

    @property
    def high(self) -> float:
        """Upper end of the 95 % interval (the mean itself with one value)."""
        return self.mean + (self.ci95 if self.n > 1 else 0.0)

    def as_dict(self) -> dict[str, Any]:
        """`{mean, std, ci95, n}` for metrics.json (NaN becomes None, so the JSON stays strict)."""
        return {"mean": _finite(self.mean), "std": _finite(self.std), "ci95": _finite(self.ci95), "n": self.n}

    def format(self, digits: int = 4) -> str:
        """`0.9712 ± 0.0031 (n=3)`, or `0.9712 (n=1)` with one value."""
        if self.n > 1:
            return f"{self.mean:.{digits}f} ± {self.ci95:.{digits}f} (n={self.n})"
        return f"{self.mean:.{digits}f} (n={self.n})"

    def __str__(self) -> str:
        return self.format()


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def as_interval(value: Interval | float | Sequence[float]) -> Interval:
    """An `Interval` from an interval, one number (n = 1) or the values over seeds."""
    if isinstance(value, Interval):
        return value
    if isinstance(value, (int, float)):
        return Interval.of([float(value)])
    return Interval.of(value)


@dataclass(frozen=True)
class Finding:
    """The comparison of two measured numbers (see `compare`).

    Attributes:
        text: the sentence for a report, e.g. "`block.5` > `block.2` by 0.031 (95 % intervals separate; ...)".
        difference: mean of A minus mean of B.
        effect_size: Cohen's d (difference over the pooled standard deviation); None with one seed or
            no spread.
        separated: whether the 95 % intervals do not overlap (False with one seed: not tested).
        tested: whether both sides have more than one seed.
    """

    text: str
    difference: float
    effect_size: float | None
    separated: bool
    tested: bool

    def __str__(self) -> str:
        return self.text


def compare(a: Interval | float | Sequence[float], b: Interval | float | Sequence[float], *,
            a_name: str = "A", b_name: str = "B", digits: int = 3, unit: str = "") -> Finding:
    """Compare two numbers measured over seeds; return a `Finding` whose text states the effect size.

    The text is one of:

    - "A > B by 0.031 (95 % intervals separate; Cohen's d 4.2, n=3 vs 3)": the intervals do not overlap;
    - "A > B by 0.004: not separated (95 % intervals overlap; Cohen's d 0.3, n=3 vs 3)";
    - "A > B by 0.004 (one seed: not tested)": either side has a single value.

    Args:
        a: the first number: an `Interval`, a single value, or its values over seeds.
        b: the second number, likewise.
        a_name: how the text names `a` (Markdown allowed).
        b_name: how the text names `b`.
        digits: decimals of the difference in the text.
        unit: appended to the difference (e.g. " dB").
    """
    ia, ib = as_interval(a), as_interval(b)
    diff = ia.mean - ib.mean
    rel = ">" if diff > 0 else "<" if diff < 0 else "="
    head = f"{a_name} {rel} {b_name} by {abs(diff):.{digits}f}{unit}"
    tested = ia.n > 1 and ib.n > 1
    if not tested:
        return Finding(f"{head} (one seed: not tested)", diff, None, False, False)
    pooled = math.sqrt(((ia.n - 1) * ia.std ** 2 + (ib.n - 1) * ib.std ** 2) / (ia.n + ib.n - 2))
    d = diff / pooled if pooled > 0 else None
    separated = ia.low > ib.high or ib.low > ia.high
    if d is None:
        size = "no spread" if diff == 0 else "no spread over seeds"
    else:
        size = f"Cohen's d {abs(d):.1f}"
    counts = f"n={ia.n} vs {ib.n}"
    if separated:
        return Finding(f"{head} (95 % intervals separate; {size}, {counts})", diff, d, True, True)
    return Finding(f"{head}: not separated (95 % intervals overlap; {size}, {counts})", diff, d, False, True)


def baseline_warning(name: str, result: Interval | float | Sequence[float],
                     baseline: Interval | float | Sequence[float], *, higher_is_better: bool = True,
                     baseline_name: str = "the trivial baseline", margin: float = 0.05,
                     digits: int = 4) -> str | None:
    """A warning when `result` is not clearly better than a trivial `baseline`, else None.

    "Clearly better" means: with several seeds, the result's 95 % interval lies wholly on the better
    side of the baseline's interval; in any case, the mean is better than the baseline by more than
    `margin` times the baseline's magnitude (5 % by default; e.g. accuracy above 0.105 against a
    chance level of 0.1, or an error below 0.095 against a baseline error of 0.1).

    Args:
        name: what the result is, for the message (e.g. "linear probe accuracy at `block.3`").
        result: the result: an `Interval`, one value, or its values over seeds.
        baseline: the baseline (chance accuracy, the error of predicting the mean training image, ...).
        higher_is_better: whether larger results are better (accuracy) or smaller (an error).
        baseline_name: how the message names the baseline.
        margin: the relative margin the mean must beat the baseline by.
        digits: decimals in the message.
    """
    r, b = as_interval(result), as_interval(baseline)
    if r.n == 0 or not math.isfinite(r.mean):
        return f"{name}: no value to compare with {baseline_name} ({b.mean:.{digits}f})"
    sign = 1.0 if higher_is_better else -1.0
    need = abs(b.mean) * margin
    clear_mean = sign * (r.mean - b.mean) > need
    clear_interval = True
    if r.n > 1:
        clear_interval = (r.low > b.high) if higher_is_better else (r.high < b.low)
    if clear_mean and clear_interval:
        return None
    how = "not clearly above" if higher_is_better else "not clearly below"
    shown = b.format(digits) if b.n > 1 else f"{b.mean:.{digits}f}"
    return (f"{name} is {how} {baseline_name}: {r.format(digits)} vs {shown}"
            f" (needs to beat it by more than {margin:.0%}"
            + (" with separate 95 % intervals" if r.n > 1 else "") + ")")


__all__ = ["Finding", "Interval", "as_interval", "baseline_warning", "compare", "t_quantile"]
