"""Internal to rebootless.windows: pair the functions and data objects of the base and patched images by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import Image, Symbol

__all__ = ["Correlation", "correlate"]


@dataclass
class Correlation:
    """Functions and data objects of both images, paired by name.

    ``functions``: (base, patched) pairs; ``new_functions``: patched-only functions; ``data``: (base, patched)
    pairs of data objects; ``new_data``: patched-only data objects. All sorted by patched RVA.
    """

    functions: list[tuple[Symbol, Symbol]] = field(default_factory=list)
    new_functions: list[Symbol] = field(default_factory=list)
    data: list[tuple[Symbol, Symbol]] = field(default_factory=list)
    new_data: list[Symbol] = field(default_factory=list)


def correlate(base: Image, patched: Image) -> Correlation:
    """Pair every named symbol of ``patched`` (one name per address) with the base symbol of the same name."""
    result = Correlation()
    for symbol in patched.primary_symbols:
        old = base.symbols.get(symbol.name)
        if symbol.function:
            if old is not None and old.function:
                result.functions.append((old, symbol))
            else:
                result.new_functions.append(symbol)
        elif old is not None and not old.function:
            result.data.append((old, symbol))
        else:
            result.new_data.append(symbol)
    return result
