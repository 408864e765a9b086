"""Convert an MCsquare / OpenTPS beam-data library (BDL) into a bioplan proton beam-data table.

Run:  python tools/bdl_to_beamdata.py BDL.txt OUT.csv --source "where the BDL comes from"

Reads the BDL with :meth:`optimizer.beams.proton_beamdata.ProtonBeamData.from_bdl` (energy spread
per nominal energy; in-air spot sigma of the main Gaussian propagated from the nozzle exit to the
isocentre) and writes ``energy_MeV,energy_spread_pct,spot_sigma_air_mm`` with a comment header that
names the source, as ``optimizer/beams/data/proton_generic.csv`` was made:

    python tools/bdl_to_beamdata.py BDL_default_DN_RangeShifter.txt optimizer/beams/data/proton_generic.csv \\
        --source "OpenTPS ... (see that file's header)"
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from optimizer.beams.proton_beamdata import COLUMNS, ProtonBeamData  # noqa: E402


def write_table(table: ProtonBeamData, path: str, header_lines: list[str]) -> None:
    """Write ``table`` as CSV with ``# ``-prefixed header lines."""
    with open(path, "w", encoding="utf-8") as f:
        for line in header_lines:
            f.write(f"# {line}".rstrip() + "\n")
        f.write(",".join(COLUMNS) + "\n")
        for e, s, sig in zip(table.energy_MeV, table.energy_spread_pct, table.spot_sigma_air_mm):
            f.write(f"{e:g},{s:.4f},{sig:.3f}\n")


def main(argv=None) -> ProtonBeamData:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bdl", help="BDL lookup-table file (MCsquare / OpenTPS format)")
    ap.add_argument("out", help="CSV file to write")
    ap.add_argument("--source", action="append", default=[],
                    help="header line naming the source (repeat for several lines)")
    args = ap.parse_args(argv)
    table = ProtonBeamData.from_bdl(args.bdl)
    write_table(table, args.out, args.source or [f"converted from {os.path.basename(args.bdl)}"])
    lo, hi = table.energy_MeV[0], table.energy_MeV[-1]
    print(f"wrote {args.out}: {len(table.energy_MeV)} energies, {lo:g}-{hi:g} MeV")
    return table


if __name__ == "__main__":
    main()
