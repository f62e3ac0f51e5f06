"""Memory attributes of the table base registers (GITS_CBASER, GITS_BASER<n>,
GICR_PROPBASER, GICR_PENDBASER; IHI 0069 12.19.1, 12.11.28-29), and how vgic sanitises them.

The registers read back what vgic will honour (choices documented in docs/choices.md):
vgic accesses tables coherently, so Device and Non-cacheable inner attributes read back
as write-back, and Outer Shareable as Inner Shareable.
"""

from __future__ import annotations

from vgic.regs import field

# Shareability and cacheability encodings (12.19.1)
SH_NON, SH_INNER, SH_OUTER = 0, 1, 2
CACHE_NCNB, CACHE_NC, CACHE_RAWB, CACHE_RAWAWB = 0, 1, 3, 7


def sanitise_shareability(sh: int) -> int:
    """Outer Shareable and the reserved encoding read back as Inner Shareable."""
    return SH_INNER if sh in (SH_OUTER, 3) else sh


def sanitise_inner_cache(c: int) -> int:
    """vgic accesses tables coherently: non-cacheable inner attributes read back RaWb."""
    return CACHE_RAWB if c in (CACHE_NCNB, CACHE_NC) else c


def sanitise_outer_cache(c: int) -> int:
    """Only SameAsInner (0) and Non-cacheable (1) are kept for the outer attribute."""
    return c if c in (0, 1) else 0


def sanitise_attributes(v: int, inner_lo: int, sh_lo: int, outer_lo: int) -> int:
    """``v`` with InnerCache, Shareability and OuterCache fields sanitised."""
    inner = sanitise_inner_cache(field(v, inner_lo + 2, inner_lo))
    sh = sanitise_shareability(field(v, sh_lo + 1, sh_lo))
    outer = sanitise_outer_cache(field(v, outer_lo + 2, outer_lo))
    v &= ~(7 << inner_lo | 3 << sh_lo | 7 << outer_lo)
    return v | inner << inner_lo | sh << sh_lo | outer << outer_lo
