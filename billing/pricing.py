"""Capacity entries and rates (billing-v1.md §3-§4): entry of a PAYG hour, its price, fixed-term over-use."""

from bisect import bisect_right
from collections.abc import Mapping, Sequence

from billing.activity import HOUR, CapacityKey
from billing.catalog import CapacityEntry, Catalog, License, Rate
from billing.errors import PricingError
from protocol.timefmt import format_time


def capacity_json(entry: CapacityEntry) -> dict[str, object]:
    return {"from": format_time(entry.start), "bundle": entry.bundle, "bandwidth_mbps": entry.bandwidth_mbps,
            "vservices": entry.vservices}


class Pricer:
    """Prices PAYG hours of `hour` licenses; caches per license segment since hours repeat."""

    def __init__(self, catalog: Catalog) -> None:
        self._hourly = catalog.hourly
        self._rates: dict[tuple[str | None, int], Rate | None] = {}
        self._froms: dict[str, list[int]] = {}
        self._segment: dict[tuple[str, int], tuple[CapacityEntry, Rate]] = {}

    def rate(self, bundle: str | None, bandwidth: int | None) -> Rate | None:
        """The `rates.hourly` entry of the bundle with the smallest max_bandwidth_mbps >= bandwidth."""
        key = (bundle, bandwidth or 0)  # a missing bandwidth counts as 0
        if key not in self._rates:
            fits = [r for r in self._hourly
                    if r.key == bundle and r.max_bandwidth_mbps is not None
                    and r.max_bandwidth_mbps >= key[1]]
            self._rates[key] = min(fits, key=lambda r: r.max_bandwidth_mbps or 0) if fits else None
        return self._rates[key]

    def froms(self, lic: License) -> list[int]:
        f = self._froms.get(lic.id)
        if f is None:
            f = self._froms[lic.id] = [e.start for e in lic.capacity]
        return f

    def _priced(self, lic: License, k: int) -> tuple[CapacityEntry, Rate]:
        entry = lic.capacity[k]
        rate = self.rate(entry.bundle, entry.bandwidth_mbps)
        if rate is None:
            raise PricingError(lic.id, capacity_json(entry), "no rates.hourly entry for this capacity")
        return entry, rate

    def hour(self, lic: License, h: int) -> tuple[CapacityEntry, Rate]:
        """The entry in force at some instant of hour h inside the license period with the highest
        price; on a tie the later entry."""
        froms = self.froms(lic)
        a = max(h, lic.start)
        b = h + HOUR if lic.end is None else min(h + HOUR, lic.end)
        k = bisect_right(froms, a) - 1
        j = k + 1
        while j < len(froms) and froms[j] < b:
            j += 1
        if k < 0:
            k = 0
            if j == 0:
                raise PricingError(lic.id, None, f"no capacity entry in force in the hour {format_time(h)}")
        if j - k == 1:  # the whole hour lies in one entry's span: the common case, cached
            seg = self._segment.get((lic.id, k))
            if seg is None:
                seg = self._segment[(lic.id, k)] = self._priced(lic, k)
            return seg
        best: tuple[CapacityEntry, Rate] | None = None
        for i in range(k, j):
            cand = self._priced(lic, i)
            if best is None or cand[1].price >= best[1].price:  # >=: the later entry wins a tie
                best = cand
        assert best is not None
        return best

    def priced_hours(self, lic: License, pay: int, m0: int, n: int) -> list[tuple[CapacityEntry, Rate, int]]:
        """PAYG hours of bitset ``pay`` (bit i = hour m0 + i*HOUR) counted by the entry pricing them.

        Walks the entries' spans, not the hours: an hour wholly inside one entry's span is priced at
        that entry; only hours where the entry changes mid-hour (or before the first entry: an
        error) go through `hour` one by one."""
        froms = self.froms(lic)
        m1 = m0 + n * HOUR
        out: list[tuple[CapacityEntry, Rate, int]] = []
        left = pay
        for k in range(max(0, bisect_right(froms, m0) - 1), len(froms)):
            if not left or froms[k] >= m1:
                break
            end = froms[k + 1] if k + 1 < len(froms) else m1
            lo, hi = max(0, -(-(froms[k] - m0) // HOUR)), min(n, (min(end, m1) - m0) // HOUR)
            mine = left & (((1 << (hi - lo)) - 1) << lo) if hi > lo else 0
            if mine:
                left ^= mine
                seg = self._segment.get((lic.id, k))
                if seg is None:
                    seg = self._segment[(lic.id, k)] = self._priced(lic, k)
                out.append((*seg, mine.bit_count()))
        while left:
            low = left & -left
            left ^= low
            out.append((*self.hour(lic, m0 + (low.bit_length() - 1) * HOUR), 1))
        return out


class OverUse:
    """Fixed-term over-use: a declared capacity above the entry in force at the observation's time."""

    def __init__(self, catalog: Catalog, pricer: Pricer) -> None:
        self._rank = {b: i for i, b in enumerate(catalog.bundles)}
        self._unknown = len(catalog.bundles)  # an unknown bundle ranks above all
        self._pricer = pricer

    def above(self, declared: CapacityKey, entry: CapacityEntry) -> bool:
        bundle, bandwidth, vservices = declared
        # Members absent on either side are not compared.
        if bundle is not None and entry.bundle is not None and \
                self._rank.get(bundle, self._unknown) > self._rank.get(entry.bundle, self._unknown):
            return True
        if bandwidth is not None and entry.bandwidth_mbps is not None and bandwidth > entry.bandwidth_mbps:
            return True
        return vservices is not None and entry.vservices is not None and vservices > entry.vservices

    def flagged(self, fixed_hours: dict[int, License],
                declared: Mapping[CapacityKey, Sequence[int]]) -> set[str]:
        """Ids of the fixed licenses over-used by the declarations of one instance."""
        out: set[str] = set()
        items = declared.items() if hasattr(declared, "items") else ()
        for key, times in items:
            self._scan(key, times, fixed_hours, out)
        return out

    def flagged_bits(self, fixed: list[tuple[License, int]], declared: Mapping[CapacityKey, Sequence[int]],
                     m0: int, n: int) -> set[str]:
        """`flagged` with the fixed hours as disjoint bitsets per license (bit i = hour m0 + i*HOUR)."""
        out: set[str] = set()
        items = declared.items() if hasattr(declared, "items") else ()
        for key, times in items:
            # Only licenses with an entry below this declaration can be over-used by it.
            cand = [(lic, mask) for lic, mask in fixed
                    if lic.id not in out and any(self.above(key, e) for e in lic.capacity)]
            for t in times if cand else ():
                i = (t - m0) // HOUR
                if not 0 <= i < n:
                    continue
                for lic, mask in cand:
                    if mask >> i & 1:
                        if lic.id not in out:
                            k = bisect_right(self._pricer.froms(lic), t) - 1
                            if k >= 0 and self.above(key, lic.capacity[k]):
                                out.add(lic.id)
                        break
        return out

    def _scan(self, key: CapacityKey, times: Sequence[int], fixed_hours: dict[int, License],
              out: set[str]) -> None:
        for t in times:
            lic = fixed_hours.get(t - t % HOUR)
            if lic is None or lic.id in out:
                continue
            k = bisect_right(self._pricer.froms(lic), t) - 1
            if k >= 0 and self.above(key, lic.capacity[k]):
                out.add(lic.id)
