"""Energy and area per operation: Horowitz, ISSCC 2014, 45 nm (docs/profile.md, "Energy table").

M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, Fig. 1.1.9:

=====================  ===========  ===========
operation              energy (pJ)  area (µm²)
=====================  ===========  ===========
8-bit int add          0.03         36
32-bit int add         0.1          137
8-bit int mult         0.2          282
32-bit int mult        3.1          3495
16-bit float add       0.4          1360
16-bit float mult      1.1          1640
32-bit float add       0.9          4184
32-bit float mult      3.7          7700
=====================  ===========  ===========

Memory, per 64-bit access: SRAM 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ; DRAM 1.3–2.6 nJ.

Widths the table does not list are interpolated, and every such use is an assumption the report
states: integer adds linearly in the width (0 → 8 → 32 bits, proportional beyond 32); integer
multiplies linearly in the product of the operand widths (an array multiplier has ``a·b`` cells:
8×8 = 64 → 0.2 pJ, 32×32 = 1024 → 3.1 pJ, proportional outside); float adds proportionally to the
width from the nearest listed format; float multiplies with the square of the significand width
(fp16: 11 bits, fp32: 24, fp64: 53). bfloat16 is costed as fp16.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

__all__ = [
    "MEMORY_PJ_PER_64BIT",
    "SOURCE",
    "TABLE",
    "OpType",
    "memory_energy_pj",
    "op_area_um2",
    "op_energy_pj",
]

SOURCE = (
    "M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, "
    "45 nm, 0.9 V (Fig. 1.1.9: energy and area per operation; memory per 64-bit access)"
)

# (operation, format, bits) -> (energy pJ, area µm²): the published figures, nothing else.
TABLE: dict[tuple[str, str, int], tuple[float, float]] = {
    ("add", "int", 8): (0.03, 36.0),
    ("add", "int", 32): (0.1, 137.0),
    ("mul", "int", 8): (0.2, 282.0),
    ("mul", "int", 32): (3.1, 3495.0),
    ("add", "float", 16): (0.4, 1360.0),
    ("mul", "float", 16): (1.1, 1640.0),
    ("add", "float", 32): (0.9, 4184.0),
    ("mul", "float", 32): (3.7, 7700.0),
}

# pJ per 64-bit access (Horowitz 2014). "dram" is the low end of the published 1.3–2.6 nJ range.
MEMORY_PJ_PER_64BIT: dict[str, float] = {
    "dram": 1300.0,
    "dram-high": 2600.0,
    "sram-1mb": 100.0,
    "sram-32kb": 20.0,
    "sram-8kb": 10.0,
}

_SIGNIFICAND = {16: 11, 32: 24, 64: 53}


@dataclass(frozen=True, order=True)
class OpType:
    """One costed operation type.

    ``op`` is ``"mac"`` (one multiply plus one accumulate), ``"add"`` (adds, subtracts,
    comparisons, selections, rounding, reductions) or ``"mul"`` (multiplies, divides, square
    roots). ``fmt`` is ``"int"`` or ``"float"``; ``bits``/``bits2`` are the operand widths (equal
    for elementwise ops) and ``acc`` the accumulator width of a MAC. ``label`` is what the report
    prints (``"uint8×int8→int32"``, ``"8b×8b→int32"``, ``"fp32"``).
    """

    op: str
    fmt: str
    bits: int
    bits2: int
    acc: int
    label: str

    @classmethod
    def mac(cls, fmt: str, bits: int, bits2: int, acc: int, label: str) -> OpType:
        return cls("mac", fmt, bits, bits2, acc, label)

    @classmethod
    def elementwise(cls, op: str, fmt: str, bits: int, label: str) -> OpType:
        return cls(op, fmt, bits, bits, bits, label)

    @property
    def exact(self) -> bool:
        """Every add and multiply of this type has its width in the published table."""
        return all((op, fmt, b1) in TABLE and b1 == b2 for op, fmt, b1, b2 in self._parts())

    def _parts(self) -> list[tuple[str, str, int, int]]:
        if self.op == "mac":
            return [("mul", self.fmt, self.bits, self.bits2), ("add", self.fmt, self.acc, self.acc)]
        return [(self.op, self.fmt, self.bits, self.bits2)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _interp(x: float, points: list[tuple[float, float]]) -> float:
    """Piecewise linear through ``points`` (sorted by x), proportional to x outside them."""
    if x <= points[0][0]:
        return points[0][1] * x / points[0][0]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1] * x / points[-1][0]


def _unit(op: str, fmt: str, bits: int, bits2: int, which: int) -> float:
    """Energy (``which=0``, pJ) or area (``which=1``, µm²) of one add or multiply."""
    if fmt == "int":
        if op == "add":
            return _interp(bits, [(8, TABLE["add", "int", 8][which]),
                                  (32, TABLE["add", "int", 32][which])])  # fmt: skip
        return _interp(bits * bits2, [(64, TABLE["mul", "int", 8][which]),
                                      (1024, TABLE["mul", "int", 32][which])])  # fmt: skip
    width = max(bits, bits2)
    if op == "add":
        ref = 16 if width <= 16 else 32
        return TABLE["add", "float", ref][which] * width / ref
    ref = 16 if width <= 16 else 32
    sig = _SIGNIFICAND.get(width, 24 if width > 16 else 11)
    return TABLE["mul", "float", ref][which] * sig**2 / _SIGNIFICAND[ref] ** 2


def op_energy_pj(t: OpType) -> float:
    """Energy of one operation of type ``t`` in pJ (a MAC is its multiply plus its accumulate)."""
    return sum(_unit(op, fmt, b1, b2, 0) for op, fmt, b1, b2 in t._parts())


def op_area_um2(t: OpType) -> float:
    """Area of one functional unit for ``t`` in µm² (a MAC unit is a multiplier plus an adder)."""
    return sum(_unit(op, fmt, b1, b2, 1) for op, fmt, b1, b2 in t._parts())


def memory_energy_pj(nbytes: float, level: str = "dram") -> float:
    """Energy of moving ``nbytes`` once at ``level`` (pJ): ``nbytes · 8 / 64`` 64-bit accesses."""
    if level not in MEMORY_PJ_PER_64BIT:
        close = difflib.get_close_matches(str(level), list(MEMORY_PJ_PER_64BIT), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"memory level {level!r} is not one of {sorted(MEMORY_PJ_PER_64BIT)}{hint}"
        )
    return nbytes * 8 / 64 * MEMORY_PJ_PER_64BIT[level]
